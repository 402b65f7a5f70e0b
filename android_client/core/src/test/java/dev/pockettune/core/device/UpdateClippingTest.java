package dev.pockettune.core.device;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.json.Json;
import dev.pockettune.core.json.ProtocolFormatException;
import dev.pockettune.core.protocol.Task;
import dev.pockettune.core.testing.Paths2;
import dev.pockettune.core.training.NamedTensor;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

/**
 * The phone clips exactly as the Python device does: {@code tests/protocol/update_clipping.json}
 * holds cases computed by {@code models/update_privacy.clip_update}; under local DP the noise has
 * the promised spread; a task's {@code train.privacy} is read strictly.
 */
public class UpdateClippingTest {
    private static List<NamedTensor> tensors(JSONArray entries, String field) throws Exception {
        List<NamedTensor> out = new ArrayList<>();
        for (int i = 0; i < entries.length(); i++) {
            JSONObject entry = entries.getJSONObject(i);
            JSONArray shape = entry.getJSONArray("shape");
            long[] dims = new long[shape.length()];
            for (int d = 0; d < dims.length; d++) {
                dims[d] = shape.getLong(d);
            }
            JSONArray values = entry.getJSONArray(field);
            float[] data = new float[values.length()];
            for (int v = 0; v < data.length; v++) {
                data[v] = (float) values.getDouble(v);
            }
            out.add(new NamedTensor(entry.getString("name"), dims, data));
        }
        return out;
    }

    @Test
    public void clipsLikeThePythonDevice() throws Exception {
        Path file = Paths2.protocolDir().resolve("update_clipping.json");
        JSONObject vectors = Json.parseObject(new String(Files.readAllBytes(file), StandardCharsets.UTF_8), file.toString());
        JSONArray cases = vectors.getJSONArray("cases");
        assertTrue(cases.length() >= 3);
        for (int c = 0; c < cases.length(); c++) {
            JSONObject testCase = cases.getJSONObject(c);
            JSONArray entries = testCase.getJSONArray("tensors");
            List<NamedTensor> start = tensors(entries, "start");
            List<NamedTensor> trained = tensors(entries, "trained");
            List<NamedTensor> expected = tensors(entries, "clipped");
            double clipNorm = testCase.getDouble("clip_norm");
            assertEquals(testCase.getString("name") + ": norm before", testCase.getDouble("norm_before"),
                    UpdateCheck.deltaNorm(trained, start), 1e-9);
            List<NamedTensor> clipped = UpdateClipping.clip(trained, start, clipNorm, 0.0, new Random(0));
            for (int t = 0; t < expected.size(); t++) {
                float[] want = expected.get(t).data;
                float[] got = clipped.get(t).data;
                for (int i = 0; i < want.length; i++) {
                    assertEquals(testCase.getString("name") + " " + expected.get(t).name + "[" + i + "]", want[i], got[i], Math.ulp(want[i]));
                }
            }
            assertTrue(UpdateCheck.deltaNorm(clipped, start) <= clipNorm);
        }
    }

    @Test
    public void localNoiseHasThePromisedSpread() {
        int n = 40_000;
        float[] zeros = new float[n];
        float[] small = new float[n];
        java.util.Arrays.fill(small, 1e-4f);
        List<NamedTensor> start = List.of(new NamedTensor("w", new long[] {n}, zeros));
        List<NamedTensor> trained = List.of(new NamedTensor("w", new long[] {n}, small));
        List<NamedTensor> noised = UpdateClipping.clip(trained, start, 0.5, 2.0, new Random(7));
        double sum = 0;
        double squares = 0;
        for (float v : noised.get(0).data) {
            sum += v;
            squares += (double) v * v;
        }
        double mean = sum / n;
        double std = Math.sqrt(squares / n - mean * mean);
        assertEquals(2.0 * 0.5, std, 0.02);
    }

    @Test
    public void aTasksPrivacySectionIsReadStrictly() throws Exception {
        JSONObject train = new JSONObject().put("steps", 3).put("lr", 0.1).put("batch", 2).put("seq", 8)
                .put("optimizer", "sgd");
        assertNull(trainOf(train).privacy);
        Task.Privacy privacy = trainOf(new JSONObject(train.toString())
                .put("privacy", new JSONObject().put("clip_norm", 0.25).put("noise_multiplier", 1.5))).privacy;
        assertNotNull(privacy);
        assertEquals(0.25, privacy.clipNorm.doubleValue(), 0);
        assertEquals(1.5, privacy.noiseMultiplierOrZero(), 0);
        for (JSONObject bad : List.of(new JSONObject().put("clip_norm", 0), new JSONObject().put("clip_norm", -1),
                new JSONObject().put("noise_multiplier", 1), new JSONObject().put("clip_norm", 1).put("noise_multiplier", -2))) {
            try {
                trainOf(new JSONObject(train.toString()).put("privacy", bad));
                fail("accepted train.privacy " + bad);
            } catch (ProtocolFormatException expected) {
                assertTrue(expected.getMessage(), expected.getMessage().contains("privacy"));
            }
        }
    }

    private static Task.TrainSettings trainOf(JSONObject train) throws Exception {
        Path file = Paths2.protocolDir().resolve("task_response.json");
        JSONObject task = Json.parseObject(new String(Files.readAllBytes(file), StandardCharsets.UTF_8), file.toString());
        task.put("train", train);
        return Task.fromJson(task).train;
    }
}
