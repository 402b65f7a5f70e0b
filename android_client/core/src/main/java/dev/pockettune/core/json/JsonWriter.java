package dev.pockettune.core.json;

import java.math.BigDecimal;
import java.util.Iterator;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Serializes org.json values the way the coordinator (Python's {@code json}) writes them.
 *
 * <p>Android's own {@code JSONObject.toString()} writes the double {@code 30.0} as {@code 30},
 * turning a float into an integer; the coordinator's strict validators tell the two apart, and the
 * protocol examples do too. This writer keeps the kind: integers as integers, every
 * {@link Double} with a fraction or exponent, formatted like Python's {@code repr(float)}
 * ({@code 30.0}, {@code 0.0159}, {@code 1e-05}, {@code 3.1e+16}).
 */
public final class JsonWriter {
    private final int indent;
    private final StringBuilder out = new StringBuilder();

    private JsonWriter(int indent) {
        this.indent = indent;
    }

    /** Compact form (no whitespace), for request bodies and safetensors headers. */
    public static String compact(Object value) {
        JsonWriter writer = new JsonWriter(0);
        writer.write(value, 0);
        return writer.out.toString();
    }

    /** Pretty form with {@code indent} spaces per level, like {@code json.dumps(indent=2)}. */
    public static String pretty(Object value, int indent) {
        JsonWriter writer = new JsonWriter(indent);
        writer.write(value, 0);
        return writer.out.toString();
    }

    private void write(Object value, int depth) {
        if (value == null || value == JSONObject.NULL) {
            out.append("null");
        } else if (value instanceof JSONObject) {
            writeObject((JSONObject) value, depth);
        } else if (value instanceof JSONArray) {
            writeArray((JSONArray) value, depth);
        } else if (value instanceof String) {
            writeString((String) value);
        } else if (value instanceof Boolean) {
            out.append(((Boolean) value) ? "true" : "false");
        } else if (Json.isIntegral(value)) {
            out.append(value.toString());
        } else if (value instanceof Number) {
            out.append(formatDouble(((Number) value).doubleValue()));
        } else {
            throw new IllegalArgumentException("cannot write " + value.getClass().getName() + " as JSON");
        }
    }

    private void writeObject(JSONObject object, int depth) {
        if (object.length() == 0) {
            out.append("{}");
            return;
        }
        out.append('{');
        Iterator<String> keys = object.keys();
        boolean first = true;
        while (keys.hasNext()) {
            String key = keys.next();
            if (!first) {
                out.append(',');
            }
            first = false;
            newline(depth + 1);
            writeString(key);
            out.append(indent > 0 ? ": " : ":");
            write(object.opt(key), depth + 1);
        }
        newline(depth);
        out.append('}');
    }

    private void writeArray(JSONArray array, int depth) {
        if (array.length() == 0) {
            out.append("[]");
            return;
        }
        out.append('[');
        for (int i = 0; i < array.length(); i++) {
            if (i > 0) {
                out.append(',');
            }
            newline(depth + 1);
            write(array.opt(i), depth + 1);
        }
        newline(depth);
        out.append(']');
    }

    private void newline(int depth) {
        if (indent > 0) {
            out.append('\n');
            for (int i = 0; i < depth * indent; i++) {
                out.append(' ');
            }
        }
    }

    private void writeString(String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"':
                    out.append("\\\"");
                    break;
                case '\\':
                    out.append("\\\\");
                    break;
                case '\n':
                    out.append("\\n");
                    break;
                case '\r':
                    out.append("\\r");
                    break;
                case '\t':
                    out.append("\\t");
                    break;
                case '\b':
                    out.append("\\b");
                    break;
                case '\f':
                    out.append("\\f");
                    break;
                default:
                    if (c < 0x20 || c == 0x2028 || c == 0x2029) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }

    /**
     * A double as Python's {@code repr} writes it: shortest round-tripping digits, positional
     * notation with at least one fractional digit for exponents -4..15, scientific otherwise.
     */
    public static String formatDouble(double d) {
        if (Double.isNaN(d) || Double.isInfinite(d)) {
            throw new IllegalArgumentException("JSON has no representation for " + d);
        }
        if (d == 0.0) {
            return (1.0 / d < 0) ? "-0.0" : "0.0";
        }
        // Double.toString gives digits that round-trip; BigDecimal exposes them exactly.
        BigDecimal exact = new BigDecimal(Double.toString(d)).stripTrailingZeros();
        String digits = exact.unscaledValue().abs().toString();
        int exponent = digits.length() - 1 - exact.scale();   // decimal exponent of the first digit
        String sign = d < 0 ? "-" : "";
        if (exponent >= -4 && exponent < 16) {
            String plain = exact.abs().toPlainString();
            if (plain.indexOf('.') < 0) {
                plain = plain + ".0";
            }
            return sign + plain;
        }
        String mantissa = digits.length() == 1 ? digits : digits.charAt(0) + "." + digits.substring(1);
        String exp = (exponent < 0 ? "-" : "+") + (Math.abs(exponent) < 10 ? "0" : "") + Math.abs(exponent);
        return sign + mantissa + "e" + exp;
    }
}
