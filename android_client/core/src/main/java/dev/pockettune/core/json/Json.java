package dev.pockettune.core.json;

import java.nio.charset.StandardCharsets;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.json.JSONTokener;

/**
 * Parsing entry points over {@code org.json}, the JSON API Android ships (and Debian packages as
 * {@code libandroid-json-java}), so the same code runs on the phone and in the JVM tests.
 *
 * <p>org.json keeps the kind of every number it reads ({@link Integer}/{@link Long} for integers,
 * {@link Double} for anything with a fraction or exponent) and the order of object keys; the
 * models rely on both to write back exactly what they read (see {@link JsonWriter}).
 */
public final class Json {
    private Json() {
    }

    /** Any JSON value: JSONObject, JSONArray, String, Number, Boolean or {@link JSONObject#NULL}. */
    public static Object parse(String text) {
        try {
            JSONTokener tokener = new JSONTokener(text);
            Object value = tokener.nextValue();
            if (tokener.more()) {
                // nextClean() skips whitespace; anything else after the value is garbage.
                char next = tokener.nextClean();
                if (next != 0) {
                    throw new ProtocolFormatException("trailing data after the JSON value: '" + next + "'");
                }
            }
            return value;
        } catch (JSONException e) {
            throw new ProtocolFormatException("not valid JSON: " + e.getMessage(), e);
        }
    }

    public static JSONObject parseObject(String text, String what) {
        Object value = parse(text);
        if (!(value instanceof JSONObject)) {
            throw new ProtocolFormatException(what + " must be a JSON object, got " + kind(value));
        }
        return (JSONObject) value;
    }

    public static JSONObject parseObject(byte[] utf8, String what) {
        return parseObject(new String(utf8, StandardCharsets.UTF_8), what);
    }

    /** The JSON type name of a parsed value, for error messages. */
    public static String kind(Object value) {
        if (value == null || value == JSONObject.NULL) {
            return "null";
        }
        if (value instanceof JSONObject) {
            return "object";
        }
        if (value instanceof JSONArray) {
            return "array";
        }
        if (value instanceof String) {
            return "string";
        }
        if (value instanceof Boolean) {
            return "boolean";
        }
        if (isIntegral(value)) {
            return "integer";
        }
        if (value instanceof Number) {
            return "number";
        }
        return value.getClass().getSimpleName();
    }

    /** True for numbers written without fraction or exponent (org.json reads those as Integer/Long). */
    public static boolean isIntegral(Object value) {
        return value instanceof Integer || value instanceof Long || value instanceof Short
                || value instanceof Byte || value instanceof java.math.BigInteger;
    }

    /** Java null becomes JSON null: org.json's {@code put(name, null)} would remove the key instead. */
    public static Object orNull(Object value) {
        return value == null ? JSONObject.NULL : value;
    }
}
