package dev.pockettune.core.training;

import dev.pockettune.core.json.JsonWriter;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Writes an update as a safetensors file, the format {@code POST /tasks/<id>/result} takes and
 * {@code coordinator/services/validation.py} checks byte for byte: an 8-byte little-endian header
 * length, a JSON header ({@code __metadata__} plus {@code {dtype: "F32", shape, data_offsets}}
 * per tensor), then the float32 data, little-endian, the tensors back to back in header order so
 * the offsets tile the buffer exactly. The header is space-padded to a multiple of 8 bytes, as the
 * reference implementation does (keeps the data aligned for zero-copy readers).
 */
public final class SafetensorsWriter {
    private SafetensorsWriter() {
    }

    public static byte[] write(List<NamedTensor> tensors, Map<String, String> metadata) {
        List<NamedTensor> sorted = new ArrayList<>(tensors);
        sorted.sort(Comparator.comparing(t -> t.name));
        JSONObject header = new JSONObject();
        try {
            if (metadata != null && !metadata.isEmpty()) {
                JSONObject meta = new JSONObject();
                for (Map.Entry<String, String> entry : metadata.entrySet()) {
                    meta.put(entry.getKey(), entry.getValue());
                }
                header.put("__metadata__", meta);
            }
            long offset = 0;
            String previous = null;
            for (NamedTensor tensor : sorted) {
                if (tensor.name.equals(previous)) {
                    throw new IllegalArgumentException("tensor " + tensor.name + " appears twice");
                }
                previous = tensor.name;
                JSONArray shape = new JSONArray();
                for (long d : tensor.shape) {
                    shape.put(d);
                }
                long end = offset + 4L * tensor.data.length;
                JSONObject entry = new JSONObject();
                entry.put("dtype", "F32");
                entry.put("shape", shape);
                entry.put("data_offsets", new JSONArray().put(offset).put(end));
                header.put(tensor.name, entry);
                offset = end;
            }
            byte[] headerBytes = JsonWriter.compact(header).getBytes(StandardCharsets.UTF_8);
            int padded = (headerBytes.length + 7) / 8 * 8;
            ByteBuffer out = ByteBuffer.allocate(Math.toIntExact(8 + padded + offset)).order(ByteOrder.LITTLE_ENDIAN);
            out.putLong(padded);
            out.put(headerBytes);
            for (int i = headerBytes.length; i < padded; i++) {
                out.put((byte) ' ');
            }
            for (NamedTensor tensor : sorted) {
                for (float v : tensor.data) {
                    out.putFloat(v);
                }
            }
            return out.array();
        } catch (org.json.JSONException e) {
            throw new IllegalArgumentException("cannot build the safetensors header: " + e.getMessage(), e);
        }
    }
}
