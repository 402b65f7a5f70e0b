package dev.pockettune.core.json;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Set;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Typed, path-aware reads of one JSON object, remembering which keys were read.
 *
 * <p>Every model parses through this class so that (1) a wrong type or missing field fails with
 * the JSON path in the message ({@code task.artifact.files[2].sha256 must be a string}), and
 * (2) the keys no model field claims are collected by {@link #unknown()} and written back
 * unchanged: a newer coordinator can add fields without this client dropping them.
 *
 * <p>Numbers are returned as parsed ({@link Integer}/{@link Long}/{@link Double}) where the
 * protocol says "any number", so writing a model back reproduces {@code 600} as {@code 600} and
 * {@code 600.0} as {@code 600.0}.
 */
public final class JsonFields {
    /** Parses one element of a JSON array or object field. */
    public interface Parser<T> {
        T parse(JSONObject object, String path);
    }

    private final JSONObject object;
    private final String path;
    private final Set<String> read = new HashSet<>();

    private JsonFields(JSONObject object, String path) {
        this.object = object;
        this.path = path;
    }

    public static JsonFields of(JSONObject object, String path) {
        if (object == null) {
            throw new ProtocolFormatException(path + " must be a JSON object, got null");
        }
        return new JsonFields(object, path);
    }

    public String path() {
        return path;
    }

    /** True if the key is present, even with a null value. */
    public boolean has(String key) {
        return object.has(key);
    }

    private Object raw(String key, boolean required) {
        read.add(key);
        if (!object.has(key)) {
            if (required) {
                throw new ProtocolFormatException(path + " is missing the field '" + key + "'");
            }
            return null;
        }
        Object value = object.opt(key);
        if (value == JSONObject.NULL) {
            if (required) {
                throw new ProtocolFormatException(path + "." + key + " must not be null");
            }
            return null;
        }
        return value;
    }

    private ProtocolFormatException wrongType(String key, String expected, Object got) {
        return new ProtocolFormatException(path + "." + key + " must be " + expected + ", got "
                + Json.kind(got) + " " + abbreviate(got));
    }

    private static String abbreviate(Object value) {
        String text = String.valueOf(value);
        return text.length() > 60 ? text.substring(0, 57) + "..." : text;
    }

    // --- strings -----------------------------------------------------------------------------

    public String requireString(String key) {
        return string(key, raw(key, true));
    }

    /** Absent or null: null. */
    public String optString(String key) {
        return string(key, raw(key, false));
    }

    private String string(String key, Object value) {
        if (value == null) {
            return null;
        }
        if (!(value instanceof String)) {
            throw wrongType(key, "a string", value);
        }
        return (String) value;
    }

    // --- integers ----------------------------------------------------------------------------

    public long requireLong(String key) {
        return integer(key, raw(key, true));
    }

    public int requireInt(String key) {
        return Math.toIntExact(requireLong(key));
    }

    /** Absent or null: null. */
    public Long optLong(String key) {
        Object value = raw(key, false);
        return value == null ? null : integer(key, value);
    }

    private long integer(String key, Object value) {
        if (!Json.isIntegral(value)) {
            throw wrongType(key, "an integer", value);
        }
        return ((Number) value).longValue();
    }

    // --- numbers (integer or fraction, kind preserved) -----------------------------------------

    public Number requireNumber(String key) {
        return number(key, raw(key, true));
    }

    /** Absent or null: null. */
    public Number optNumber(String key) {
        return number(key, raw(key, false));
    }

    private Number number(String key, Object value) {
        if (value == null) {
            return null;
        }
        if (!(value instanceof Number)) {
            throw wrongType(key, "a number", value);
        }
        return (Number) value;
    }

    // --- booleans ----------------------------------------------------------------------------

    public boolean requireBoolean(String key) {
        return bool(key, raw(key, true));
    }

    /** Absent or null: null. */
    public Boolean optBoolean(String key) {
        Object value = raw(key, false);
        return value == null ? null : bool(key, value);
    }

    private boolean bool(String key, Object value) {
        if (!(value instanceof Boolean)) {
            throw wrongType(key, "true or false", value);
        }
        return (Boolean) value;
    }

    // --- objects and arrays ------------------------------------------------------------------

    public JSONObject requireObject(String key) {
        return obj(key, raw(key, true));
    }

    /** Absent or null: null. */
    public JSONObject optObject(String key) {
        return obj(key, raw(key, false));
    }

    private JSONObject obj(String key, Object value) {
        if (value == null) {
            return null;
        }
        if (!(value instanceof JSONObject)) {
            throw wrongType(key, "an object", value);
        }
        return (JSONObject) value;
    }

    public <T> T require(String key, Parser<T> parser) {
        return parser.parse(requireObject(key), path + "." + key);
    }

    /** Absent or null: null. */
    public <T> T opt(String key, Parser<T> parser) {
        JSONObject value = optObject(key);
        return value == null ? null : parser.parse(value, path + "." + key);
    }

    public JSONArray requireArray(String key) {
        Object value = raw(key, true);
        if (!(value instanceof JSONArray)) {
            throw wrongType(key, "an array", value);
        }
        return (JSONArray) value;
    }

    public <T> List<T> requireList(String key, Parser<T> parser) {
        JSONArray array = requireArray(key);
        List<T> items = new ArrayList<>(array.length());
        for (int i = 0; i < array.length(); i++) {
            Object element = array.opt(i);
            String elementPath = path + "." + key + "[" + i + "]";
            if (!(element instanceof JSONObject)) {
                throw new ProtocolFormatException(elementPath + " must be an object, got " + Json.kind(element));
            }
            items.add(parser.parse((JSONObject) element, elementPath));
        }
        return Collections.unmodifiableList(items);
    }

    public List<String> requireStringList(String key) {
        return strings(key, requireArray(key));
    }

    /** Absent or null: null. */
    public List<String> optStringList(String key) {
        Object value = raw(key, false);
        if (value == null) {
            return null;
        }
        if (!(value instanceof JSONArray)) {
            throw wrongType(key, "an array", value);
        }
        return strings(key, (JSONArray) value);
    }

    private List<String> strings(String key, JSONArray array) {
        List<String> items = new ArrayList<>(array.length());
        for (int i = 0; i < array.length(); i++) {
            Object element = array.opt(i);
            if (!(element instanceof String)) {
                throw new ProtocolFormatException(path + "." + key + "[" + i + "] must be a string, got "
                        + Json.kind(element));
            }
            items.add((String) element);
        }
        return Collections.unmodifiableList(items);
    }

    /** The value as parsed, of any JSON type ({@link JSONObject#NULL} for null; null if absent). */
    public Object optAny(String key) {
        read.add(key);
        return object.has(key) ? object.opt(key) : null;
    }

    /**
     * The fields no read claimed, in their original order: what a newer coordinator added.
     * Models keep them and write them back after their own fields.
     */
    public JSONObject unknown() {
        JSONObject rest = new JSONObject();
        Iterator<String> keys = object.keys();
        while (keys.hasNext()) {
            String key = keys.next();
            if (!read.contains(key)) {
                JsonOut.putRaw(rest, key, object.opt(key));
            }
        }
        return rest;
    }
}
