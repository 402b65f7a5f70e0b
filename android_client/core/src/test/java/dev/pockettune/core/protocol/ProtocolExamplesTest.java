package dev.pockettune.core.protocol;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.json.Json;
import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonWriter;
import dev.pockettune.core.json.ProtocolFormatException;
import dev.pockettune.core.testing.JsonAssert;
import dev.pockettune.core.testing.Paths2;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.function.Function;
import java.util.stream.Stream;
import org.json.JSONObject;
import org.junit.Test;

/**
 * Every example in {@code tests/protocol/} (the files the Python protocol test checks against a
 * served coordinator) parses into the JVM models and serializes back to the same JSON value,
 * numbers keeping their kind. A new example file fails here until it has a model.
 */
public class ProtocolExamplesTest {
    /** File name -> parse, then serialize. */
    static final Map<String, Function<JSONObject, JSONObject>> MODELS = new LinkedHashMap<>();

    static {
        MODELS.put("health_response.json", o -> HealthResponse.fromJson(o).toJson());
        MODELS.put("register_request.json", o -> RegisterRequest.fromJson(o).toJson());
        MODELS.put("register_response.json", o -> RegisterResponse.fromJson(o).toJson());
        MODELS.put("heartbeat_request.json", o -> HeartbeatRequest.fromJson(o).toJson());
        MODELS.put("heartbeat_response.json", o -> HeartbeatResponse.fromJson(o).toJson());
        MODELS.put("device_list_response.json", o -> DeviceInfo.listToJson(DeviceInfo.listFromJson(o)));
        MODELS.put("job_create_request.json", o -> JobCreateRequest.fromJson(o).toJson());
        MODELS.put("job_created_response.json", o -> Job.fromJson(o).toJson());
        MODELS.put("job_response.json", o -> Job.fromJson(o).toJson());
        MODELS.put("job_list_response.json", o -> Job.listToJson(Job.listFromJson(o)));
        MODELS.put("round_response.json", o -> RoundDetail.fromJson(o).toJson());
        MODELS.put("task_response.json", o -> Task.fromJson(o).toJson());
        MODELS.put("task_response_onnxruntime.json", o -> Task.fromJson(o).toJson());
        MODELS.put("result_meta.json", o -> ResultMeta.fromJson(o).toJson());
        MODELS.put("result_meta_with_metrics.json", o -> ResultMeta.fromJson(o).toJson());
        MODELS.put("result_response.json", o -> ResultResponse.fromJson(o).toJson());
        MODELS.put("error_response.json", o -> ErrorResponse.fromJson(o).toJson());
    }

    /** Files that are not message examples, each checked by its own test. */
    static final String[] OTHER_FILES = {"error_codes.json", "tokenizer_vectors.json", "update_clipping.json"};

    /** Admin messages the phone never sends or reads (proxy-tuned generation from the dashboard or API). */
    static final String[] NOT_FOR_PHONES = {"generate_request.json", "generate_response.json"};

    private static JSONObject load(String name) throws IOException {
        Path file = Paths2.protocolDir().resolve(name);
        return Json.parseObject(new String(Files.readAllBytes(file), StandardCharsets.UTF_8), name);
    }

    @Test
    public void everyExampleFileHasAModel() throws Exception {
        TreeSet<String> files = new TreeSet<>();
        try (Stream<Path> listing = Files.list(Paths2.protocolDir())) {
            listing.map(p -> p.getFileName().toString()).filter(n -> n.endsWith(".json")).forEach(files::add);
        }
        for (String other : OTHER_FILES) {
            files.remove(other);
        }
        for (String adminOnly : NOT_FOR_PHONES) {
            files.remove(adminOnly);
        }
        assertEquals("examples without a JVM model (add one to MODELS)", new TreeSet<>(MODELS.keySet()), files);
    }

    @Test
    public void everyExampleRoundTripsToTheSameJson() throws Exception {
        for (Map.Entry<String, Function<JSONObject, JSONObject>> entry : MODELS.entrySet()) {
            JSONObject original = load(entry.getKey());
            JSONObject written = entry.getValue().apply(original);
            String text = JsonWriter.pretty(written, 2);
            JsonAssert.assertSameJson(entry.getKey(), original, Json.parse(text));
        }
    }

    @Test
    public void errorCodesMatchTheClientsList() throws Exception {
        JSONObject codes = load("error_codes.json");
        Map<String, Integer> listed = new LinkedHashMap<>();
        Iterator<String> it = codes.keys();
        while (it.hasNext()) {
            String code = it.next();
            listed.put(code, codes.optInt(code));
        }
        Map<String, Integer> known = new LinkedHashMap<>();
        for (ErrorCode code : ErrorCode.values()) {
            known.put(code.code, code.status);
        }
        assertEquals(new TreeSet<>(listed.entrySet().stream().map(Object::toString).toList()),
                new TreeSet<>(known.entrySet().stream().map(Object::toString).toList()));
    }

    @Test
    public void taskFieldsAreTyped() throws Exception {
        Task task = Task.fromJson(load("task_response.json"));
        assertEquals(41, task.taskId);
        assertEquals("executorch", task.artifact.format);
        assertEquals(4, task.artifact.files.size());
        assertEquals("tokenizer/tokenizer.json", task.artifact.files.get(2).path);
        assertEquals("ptd", task.adapter.format);
        assertEquals(2, task.train.batch);
        assertEquals(0.05, task.train.lr.doubleValue(), 0);
        assertEquals(13312, task.upload.maxBytes);
        assertNull(task.arm);
    }

    @Test
    public void unknownFieldsAreKeptAtEveryLevel() throws Exception {
        JSONObject original = load("task_response.json");
        original.put("added_by_a_newer_coordinator", new JSONObject().put("x", 1.5));
        original.getJSONObject("train").put("proximal_mu", 0.01);
        original.getJSONObject("artifact").getJSONArray("files").getJSONObject(0).put("mode", "0644");
        JsonAssert.assertSameJson("task with extra fields", original,
                Json.parse(JsonWriter.compact(Task.fromJson(original).toJson())));
    }

    @Test
    public void capabilitiesCarryTheOptimizersTheDeviceDeclares() throws Exception {
        JSONObject registration = load("register_request.json");
        RegisterRequest request = RegisterRequest.fromJson(registration);
        assertEquals(List.of("executorch"), request.capabilities.runtimes);
        assertEquals("the app's ExecuTorch trainer: SGD only", List.of("sgd"), request.capabilities.optimizers);

        // Optional: a device without the field (the coordinator takes it as sgd only) round-trips without it.
        JSONObject older = registration.getJSONObject("capabilities");
        older.remove("optimizers");
        Capabilities parsed = Capabilities.fromJson(older, "capabilities");
        assertNull(parsed.optimizers);
        JsonAssert.assertSameJson("capabilities without optimizers", older,
                Json.parse(JsonWriter.compact(parsed.toJson())));

        // A mistyped list names its path; fields a newer coordinator adds are kept beside it.
        JSONObject both = new JSONObject().put("optimizers", new org.json.JSONArray().put("sgd").put("adamw"))
                .put("added_by_a_newer_coordinator", 3);
        Capabilities withExtra = Capabilities.fromJson(both, "capabilities");
        assertEquals(List.of("sgd", "adamw"), withExtra.optimizers);
        assertEquals("{\"optimizers\":[\"sgd\",\"adamw\"],\"added_by_a_newer_coordinator\":3}",
                withExtra.toJsonString());
        try {
            Capabilities.fromJson(new JSONObject().put("optimizers", new org.json.JSONArray().put(7)), "capabilities");
            fail("a number in the optimizer list must be refused");
        } catch (ProtocolFormatException expected) {
            assertEquals("capabilities.optimizers[0] must be a string, got integer", expected.getMessage());
        }
    }

    @Test
    public void metricsKeepNullAndAbsentApart() throws Exception {
        ResultMeta meta = ResultMeta.fromJson(load("result_meta_with_metrics.json"));
        assertTrue(meta.metrics.has(DeviceMetrics.Key.PREVIOUS_UPLOAD_SECONDS));
        assertNull(meta.metrics.get(DeviceMetrics.Key.PREVIOUS_UPLOAD_SECONDS));
        assertEquals(20L, meta.metrics.get(DeviceMetrics.Key.STEPS).longValue());
        DeviceMetrics built = new DeviceMetrics().set(DeviceMetrics.Key.STEPS, 3L);
        assertEquals("{\"steps\":3}", built.toJsonString());
        try {
            new DeviceMetrics().set(DeviceMetrics.Key.STEPS, 3.0);
            fail("steps is an integer");
        } catch (IllegalArgumentException expected) {
            // the coordinator would answer 422 invalid_field
        }
    }

    @Test
    public void clientBuiltRequestsOmitAbsentOptionalFields() {
        RegisterRequest request = new RegisterRequest("k", "pixel", "android-14",
                new Capabilities(6144L, 8L, 21.5, 40.0, List.of("executorch"), List.of("sgd")), null, null);
        assertEquals("{\"enrollment_key\":\"k\",\"name\":\"pixel\",\"platform\":\"android-14\",\"capabilities\":"
                + "{\"ram_mb\":6144,\"cores\":8,\"gflops\":21.5,\"bandwidth_mbps\":40.0,\"runtimes\":[\"executorch\"],"
                + "\"optimizers\":[\"sgd\"]}}",
                request.toJsonString());
        assertEquals("{\"gflops\":22.0}", Capabilities.gflopsOnly(22.0).toJsonString());
        assertEquals("{\"charging\":true}", new HeartbeatRequest(null, true, null).toJsonString());
        ResultMeta meta = new ResultMeta(16, 2.5, 2.0, 3.0, 100, 8192, "ab".repeat(32), null);
        assertEquals("{\"num_examples\":16,\"loss_before\":2.5,\"loss_after\":2.0,\"train_seconds\":3.0,"
                + "\"bytes_downloaded\":100,\"bytes_uploaded\":8192,\"start_adapter_sha256\":\"" + "ab".repeat(32)
                + "\"}", meta.toJsonString());
    }

    @Test
    public void aMissingOrMistypedFieldNamesItsPath() throws Exception {
        JSONObject task = load("task_response.json");
        task.getJSONObject("artifact").getJSONArray("files").getJSONObject(1).put("sha256", 7);
        try {
            Task.fromJson(task);
            fail("a number where a sha256 string belongs must be refused");
        } catch (ProtocolFormatException expected) {
            assertEquals("task.artifact.files[1].sha256 must be a string, got integer 7", expected.getMessage());
        }
        JSONObject response = load("register_response.json");
        response.remove("token");
        try {
            RegisterResponse.fromJson(response);
            fail("a missing token must be refused");
        } catch (ProtocolFormatException expected) {
            assertTrue(expected.getMessage().contains("'token'"));
        }
    }

    @Test
    public void unknownFieldsAreCollectedInOrder() {
        JSONObject object = (JSONObject) Json.parse("{\"a\": 1, \"z\": 2, \"b\": 3}");
        JsonFields fields = JsonFields.of(object, "x");
        fields.requireLong("a");
        assertNotNull(fields.unknown());
        assertEquals("{\"z\":2,\"b\":3}", JsonWriter.compact(fields.unknown()));
    }
}
