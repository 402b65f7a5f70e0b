package dev.pockettune.core.testing;

import dev.pockettune.core.json.Json;
import dev.pockettune.core.training.NamedTensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONObject;

/** Test helper: reads float32 safetensors back (what the writer produced, or a PEFT adapter file). */
public final class SafetensorsReader {
    private SafetensorsReader() {
    }

    public static Map<String, NamedTensor> read(byte[] data) {
        ByteBuffer buf = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        long headerLength = buf.getLong(0);
        JSONObject header = Json.parseObject(new String(data, 8, (int) headerLength, StandardCharsets.UTF_8), "header");
        int base = 8 + (int) headerLength;
        Map<String, NamedTensor> out = new LinkedHashMap<>();
        Iterator<String> names = header.keys();
        while (names.hasNext()) {
            String name = names.next();
            if (name.equals("__metadata__")) {
                continue;
            }
            JSONObject entry = header.optJSONObject(name);
            if (!"F32".equals(entry.optString("dtype"))) {
                throw new AssertionError(name + " is not F32");
            }
            JSONArray shapeJson = entry.optJSONArray("shape");
            long[] shape = new long[shapeJson.length()];
            for (int i = 0; i < shape.length; i++) {
                shape[i] = shapeJson.optLong(i);
            }
            JSONArray offsets = entry.optJSONArray("data_offsets");
            int start = base + offsets.optInt(0);
            int end = base + offsets.optInt(1);
            float[] values = new float[(end - start) / 4];
            for (int i = 0; i < values.length; i++) {
                values[i] = buf.getFloat(start + 4 * i);
            }
            out.put(name, new NamedTensor(name, shape, values));
        }
        return out;
    }
}
