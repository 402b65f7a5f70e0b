package dev.pockettune.core.testing;

import dev.pockettune.core.json.Json;
import java.util.Iterator;
import java.util.Set;
import java.util.TreeSet;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Strict comparison of parsed JSON values: same keys, same array lengths, same strings and
 * booleans, and numbers equal in value AND kind (an integer stays an integer, {@code 30.0} stays a
 * float). Key order is not compared (JSON objects are unordered).
 */
public final class JsonAssert {
    private JsonAssert() {
    }

    /** The path of the first difference, or null when the values are the same. */
    public static String difference(Object expected, Object actual, String path) {
        if (expected == JSONObject.NULL || actual == JSONObject.NULL || expected == null || actual == null) {
            boolean bothNull = (expected == null || expected == JSONObject.NULL) && (actual == null || actual == JSONObject.NULL);
            return bothNull ? null : path + ": " + Json.kind(expected) + " vs " + Json.kind(actual);
        }
        if (expected instanceof JSONObject) {
            if (!(actual instanceof JSONObject)) {
                return path + ": object vs " + Json.kind(actual);
            }
            Set<String> a = keys((JSONObject) expected);
            Set<String> b = keys((JSONObject) actual);
            if (!a.equals(b)) {
                return path + ": keys " + a + " vs " + b;
            }
            for (String key : a) {
                String d = difference(((JSONObject) expected).opt(key), ((JSONObject) actual).opt(key), path + "." + key);
                if (d != null) {
                    return d;
                }
            }
            return null;
        }
        if (expected instanceof JSONArray) {
            if (!(actual instanceof JSONArray)) {
                return path + ": array vs " + Json.kind(actual);
            }
            JSONArray x = (JSONArray) expected;
            JSONArray y = (JSONArray) actual;
            if (x.length() != y.length()) {
                return path + ": length " + x.length() + " vs " + y.length();
            }
            for (int i = 0; i < x.length(); i++) {
                String d = difference(x.opt(i), y.opt(i), path + "[" + i + "]");
                if (d != null) {
                    return d;
                }
            }
            return null;
        }
        if (expected instanceof Number) {
            if (!(actual instanceof Number)) {
                return path + ": number vs " + Json.kind(actual);
            }
            boolean integral = Json.isIntegral(expected);
            if (integral != Json.isIntegral(actual)) {
                return path + ": " + Json.kind(expected) + " " + expected + " vs " + Json.kind(actual) + " " + actual;
            }
            boolean same = integral ? ((Number) expected).longValue() == ((Number) actual).longValue()
                    : Double.compare(((Number) expected).doubleValue(), ((Number) actual).doubleValue()) == 0;
            return same ? null : path + ": " + expected + " vs " + actual;
        }
        return expected.equals(actual) ? null : path + ": " + expected + " vs " + actual;
    }

    private static Set<String> keys(JSONObject object) {
        Set<String> keys = new TreeSet<>();
        Iterator<String> it = object.keys();
        while (it.hasNext()) {
            keys.add(it.next());
        }
        return keys;
    }

    public static void assertSameJson(String message, Object expected, Object actual) {
        String d = difference(expected, actual, "$");
        if (d != null) {
            throw new AssertionError(message + ": first difference at " + d);
        }
    }
}
