package dev.pockettune.core.json;

import org.json.JSONObject;

/**
 * A protocol message: parsed from JSON by a static {@code fromJson}, written back by
 * {@link #toJson()} with the same fields, kinds of number and unknown fields it was read with.
 */
public interface JsonModel {
    JSONObject toJson();

    /** The message as the client sends it (compact JSON). */
    default String toJsonString() {
        return JsonWriter.compact(toJson());
    }
}
