package dev.pockettune.core.json;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.testing.JsonAssert;
import org.json.JSONObject;
import org.junit.Test;

public class JsonWriterTest {
    @Test
    public void doublesAreWrittenLikePythonRepr() {
        assertEquals("30.0", JsonWriter.formatDouble(30.0));
        assertEquals("0.0159", JsonWriter.formatDouble(0.0159));
        assertEquals("31457280.0", JsonWriter.formatDouble(31457280.0));
        assertEquals("0.4288682900031058", JsonWriter.formatDouble(0.4288682900031058));
        assertEquals("1e-05", JsonWriter.formatDouble(1e-5));
        assertEquals("0.0001", JsonWriter.formatDouble(1e-4));
        assertEquals("3.1e+16", JsonWriter.formatDouble(3.1e16));
        assertEquals("1e+16", JsonWriter.formatDouble(1e16));
        assertEquals("-2.5", JsonWriter.formatDouble(-2.5));
        assertEquals("-0.0", JsonWriter.formatDouble(-0.0));
        assertEquals("0.0", JsonWriter.formatDouble(0.0));
    }

    @Test
    public void numberKindsSurviveARoundTrip() {
        String text = "{\"a\": 30.0, \"b\": 30, \"c\": 1e-05, \"d\": 12345678901234, \"e\": null, \"f\": [true, \"x\\n\\u00e9\"]}";
        Object parsed = Json.parse(text);
        String written = JsonWriter.compact(parsed);
        assertEquals("{\"a\":30.0,\"b\":30,\"c\":1e-05,\"d\":12345678901234,\"e\":null,\"f\":[true,\"x\\n\u00e9\"]}",
                written);
        JsonAssert.assertSameJson("round trip", parsed, Json.parse(written));
    }

    @Test
    public void prettyOutputMatchesPythonIndentTwo() {
        JSONObject object = (JSONObject) Json.parse("{\"a\": {\"b\": [1, 2.5]}, \"c\": {}, \"d\": []}");
        assertEquals("{\n  \"a\": {\n    \"b\": [\n      1,\n      2.5\n    ]\n  },\n  \"c\": {},\n  \"d\": []\n}",
                JsonWriter.pretty(object, 2));
    }

    @Test
    public void nonFiniteNumbersAreRefused() {
        try {
            JsonWriter.formatDouble(Double.NaN);
            fail("NaN has no JSON form");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage().contains("NaN"));
        }
    }

    @Test
    public void trailingGarbageIsRefused() {
        try {
            Json.parse("{\"a\": 1} x");
            fail("trailing data must be refused");
        } catch (ProtocolFormatException expected) {
            assertTrue(expected.getMessage().contains("trailing"));
        }
    }
}
