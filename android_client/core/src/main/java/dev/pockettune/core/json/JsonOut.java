package dev.pockettune.core.json;

import java.util.Collection;
import java.util.Iterator;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Builds the JSONObject a model writes, in the protocol's field order.
 *
 * <p>Two kinds of field, matching the protocol: {@link #put} always writes the key (a Java null
 * becomes JSON {@code null}: response fields that "may be null"), {@link #putIfPresent} omits it
 * (optional request fields the coordinator treats as absent).
 */
public final class JsonOut {
    private final JSONObject object = new JSONObject();

    public JsonOut put(String key, Object value) {
        putRaw(object, key, convert(value));
        return this;
    }

    public JsonOut putIfPresent(String key, Object value) {
        if (value != null) {
            put(key, value);
        }
        return this;
    }

    /** Appends the fields a model did not know (see {@link JsonFields#unknown()}). */
    public JSONObject with(JSONObject extra) {
        if (extra != null) {
            Iterator<String> keys = extra.keys();
            while (keys.hasNext()) {
                String key = keys.next();
                if (!object.has(key)) {
                    putRaw(object, key, extra.opt(key));
                }
            }
        }
        return object;
    }

    public JSONObject build() {
        return object;
    }

    private static Object convert(Object value) {
        if (value == null) {
            return JSONObject.NULL;
        }
        if (value instanceof Collection) {
            JSONArray array = new JSONArray();
            for (Object element : (Collection<?>) value) {
                array.put(convert(element));
            }
            return array;
        }
        if (value instanceof JsonModel) {
            return ((JsonModel) value).toJson();
        }
        return value;
    }

    /** {@code object.put} that keeps JSON null as a value and reports bad numbers clearly. */
    static void putRaw(JSONObject object, String key, Object value) {
        try {
            object.put(key, value == null ? JSONObject.NULL : value);
        } catch (JSONException e) {
            throw new IllegalArgumentException("cannot write " + key + " = " + value + ": " + e.getMessage(), e);
        }
    }

    /** A list of models as a JSONArray. */
    public static JSONArray array(List<? extends JsonModel> models) {
        JSONArray array = new JSONArray();
        for (JsonModel model : models) {
            array.put(model.toJson());
        }
        return array;
    }
}
