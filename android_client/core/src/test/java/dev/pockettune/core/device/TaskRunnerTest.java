package dev.pockettune.core.device;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.sun.net.httpserver.HttpExchange;
import dev.pockettune.core.artifact.ArtifactStore;
import dev.pockettune.core.artifact.LoraKeys;
import dev.pockettune.core.artifact.PtdReader;
import dev.pockettune.core.http.BlobDownloader;
import dev.pockettune.core.http.CoordinatorClient;
import dev.pockettune.core.http.IntegrityException;
import dev.pockettune.core.http.RetryPolicy;
import dev.pockettune.core.http.Sha256;
import dev.pockettune.core.http.TransferListener;
import dev.pockettune.core.integration.FakeTrainerForTests;
import dev.pockettune.core.json.Json;
import dev.pockettune.core.json.JsonWriter;
import dev.pockettune.core.protocol.DeviceMetrics;
import dev.pockettune.core.protocol.ResultMeta;
import dev.pockettune.core.protocol.Task;
import dev.pockettune.core.testing.FakeTiming;
import dev.pockettune.core.testing.Paths2;
import dev.pockettune.core.testing.SafetensorsReader;
import dev.pockettune.core.testing.TestServer;
import dev.pockettune.core.training.NamedTensor;
import dev.pockettune.core.training.TrainingException;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.After;
import org.junit.Before;
import org.junit.Test;

/**
 * {@link TaskRunner} end to end against a loopback stand-in for the coordinator serving the tiny
 * artifact's real files (its program replaced by placeholder bytes: the test trainer never loads
 * it). The served coordinator is the integration test's job; this one runs without Python.
 */
public class TaskRunnerTest {
    private static final Path ARTIFACT = Paths2.resource("tiny_artifact/manifest.json").getParent();
    private final Map<String, byte[]> blobs = new HashMap<>();
    private final AtomicReference<ResultMeta> receivedMeta = new AtomicReference<>();
    private final AtomicReference<byte[]> receivedUpdate = new AtomicReference<>();
    private final AtomicInteger blobRequests = new AtomicInteger();
    private TestServer server;
    private Path dir;
    private JSONObject task;
    private JSONObject manifest;

    private String blob(byte[] data) {
        String sha = Sha256.of(data);
        blobs.put(sha, data);
        return sha;
    }

    private JSONObject fileRef(String path, byte[] data) throws Exception {
        String sha = blob(data);
        return new JSONObject().put("path", path).put("sha256", sha).put("size", data.length)
                .put("url", "/api/v1/blobs/" + sha);
    }

    @Before
    public void setUp() throws Exception {
        dir = Files.createTempDirectory("runner");
        byte[] program = "placeholder program: the test trainer never loads it".getBytes(StandardCharsets.UTF_8);
        byte[] ptd = Files.readAllBytes(ARTIFACT.resolve("lora.ptd"));
        byte[] tokenizer = Files.readAllBytes(ARTIFACT.resolve("tokenizer/tokenizer.json"));
        byte[] tokenizerConfig = Files.readAllBytes(ARTIFACT.resolve("tokenizer/tokenizer_config.json"));
        JSONObject manifest = Json.parseObject(Files.readAllBytes(ARTIFACT.resolve("manifest.json")), "manifest");
        JSONObject programEntry = manifest.getJSONObject("files").getJSONObject("model.pte");
        programEntry.put("sha256", Sha256.of(program)).put("size", program.length);
        JSONArray files = new JSONArray()
                .put(fileRef("lora.ptd", ptd)).put(fileRef("model.pte", program))
                .put(fileRef("tokenizer/tokenizer.json", tokenizer))
                .put(fileRef("tokenizer/tokenizer_config.json", tokenizerConfig));
        String adapterSha = blob(ptd);
        task = Json.parseObject(new String(Files.readAllBytes(Paths2.protocolDir().resolve("task_response.json")),
                StandardCharsets.UTF_8), "task");
        task.put("task_id", 7).put("round", 3);
        task.getJSONObject("artifact").put("files", files);
        serve(manifest);
        task.getJSONObject("adapter").put("sha256", adapterSha).put("size", ptd.length)
                .put("url", "/api/v1/blobs/" + adapterSha);
        task.getJSONObject("train").put("steps", 3);
        task.getJSONObject("upload").put("url", "/api/v1/tasks/7/result").put("max_bytes", 20_000);

        server = new TestServer();
        server.handle("/api/v1/blobs/", exchange -> {
            blobRequests.incrementAndGet();
            String sha = exchange.getRequestURI().getPath().substring("/api/v1/blobs/".length());
            byte[] data = blobs.get(sha);
            TestServer.respond(exchange, data == null ? 404 : 200, "application/octet-stream",
                    data == null ? new byte[0] : data);
        });
        server.handle("/api/v1/tasks/7/result", this::acceptResult);
    }

    /** Serves {@code manifest} as the task's artifact manifest (tests change it before running). */
    private void serve(JSONObject manifest) throws Exception {
        this.manifest = manifest;
        byte[] manifestBytes = JsonWriter.pretty(manifest, 2).getBytes(StandardCharsets.UTF_8);
        String manifestSha = blob(manifestBytes);
        task.getJSONObject("artifact").put("sha256", manifestSha).put("size", manifestBytes.length)
                .put("url", "/api/v1/blobs/" + manifestSha);
    }

    /** Parses the multipart upload the way Werkzeug would and answers 201. */
    private void acceptResult(HttpExchange exchange) throws IOException {
        String type = exchange.getRequestHeaders().getFirst("Content-Type");
        String boundary = "--" + type.substring(type.indexOf("boundary=") + "boundary=".length());
        byte[] body = TestServer.body(exchange);
        String text = new String(body, StandardCharsets.ISO_8859_1);
        for (String part : text.split(java.util.regex.Pattern.quote(boundary))) {
            int split = part.indexOf("\r\n\r\n");
            if (split < 0) {
                continue;
            }
            String headers = part.substring(0, split);
            String content = part.substring(split + 4, part.length() - 2);
            byte[] raw = content.getBytes(StandardCharsets.ISO_8859_1);
            if (headers.contains("name=\"meta\"")) {
                receivedMeta.set(ResultMeta.fromJson(Json.parseObject(raw, "meta")));
            } else if (headers.contains("name=\"update\"")) {
                receivedUpdate.set(raw);
            }
        }
        TestServer.json(exchange, 201, "{\"update_id\":1,\"task_id\":7,\"job_id\":3,\"round\":3,\"sha256\":\""
                + Sha256.of(receivedUpdate.get()) + "\",\"size\":" + receivedUpdate.get().length
                + ",\"delta_norm\":0.5,\"accepted_updates\":1,\"round_status\":\"closed\"}");
    }

    @After
    public void tearDown() {
        server.close();
    }

    private TaskRunner runner(FakeTrainerForTests trainer, String text) {
        CoordinatorClient client = new CoordinatorClient(server.baseUrl(), RetryPolicy.boundedBy(10_000),
                new FakeTiming(), new Random(2));
        ArtifactStore store = new ArtifactStore(dir, new BlobDownloader(client, TransferListener.NONE));
        LocalText local = new LocalText() {
            @Override
            public List<String> documents() {
                return List.of(text);
            }

            @Override
            public String describe() {
                return "test text";
            }
        };
        return new TaskRunner(client, store, trainer, local, null);
    }

    @Test
    public void aTaskIsFetchedTrainedCheckedAndUploaded() throws Exception {
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01);
        TaskReport report = runner(trainer, "First paragraph of my notes.\n\nSecond one.\n\nThird, a little longer one.")
                .run(Task.fromJson(task));
        assertEquals("accepted", report.status);
        assertEquals(3, trainer.batchesSeen);
        assertEquals("sgd", trainer.lastOptimizer);
        ResultMeta meta = receivedMeta.get();
        assertEquals(2, meta.numExamples);   // 3 paragraphs -> 1 full batch of 2; min(examples, steps * batch)
        assertEquals(2.5, meta.lossBefore.doubleValue(), 0);
        assertEquals(report.bytesDownloaded, meta.bytesDownloaded);
        long served = 0;
        for (byte[] data : blobs.values()) {
            served += data.length;
        }
        assertEquals("every blob (the adapter is the same bytes as lora.ptd, fetched twice)",
                served + Files.size(ARTIFACT.resolve("lora.ptd")), meta.bytesDownloaded);
        assertEquals(4L, meta.metrics.get(dev.pockettune.core.protocol.DeviceMetrics.Key.STEPS).longValue());

        Map<String, NamedTensor> update = SafetensorsReader.read(receivedUpdate.get());
        List<NamedTensor> start = PtdReader.read(ARTIFACT.resolve("lora.ptd"));
        List<NamedTensor> after = new ArrayList<>();
        for (NamedTensor tensor : start) {
            String name = LoraKeys.peftKey(tensor.name);
            assertTrue(name, update.containsKey(name));
            after.add(update.get(name));
        }
        assertEquals(8, update.size());
        List<NamedTensor> startPeft = new ArrayList<>();
        for (NamedTensor tensor : start) {
            startPeft.add(tensor.renamed(LoraKeys.peftKey(tensor.name)));
        }
        assertEquals(report.deltaNorm, UpdateCheck.deltaNorm(after, startPeft), 1e-9);
        assertTrue(report.deltaNorm > 0 && report.deltaNorm < 1);
    }

    @Test
    public void aProbeBatchIsHeldOutOfTrainingAndItsLossesReported() throws Exception {
        task.getJSONObject("train").put("probe_loss", true);
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01);
        // six paragraphs, batch 2: the last two are the probe, the first four train (two batches)
        String text = "One paragraph.\n\nTwo paragraphs.\n\nThree of them.\n\nFour now.\n\nFive here.\n\nSix, the end.";
        TaskReport report = runner(trainer, text).run(Task.fromJson(task));
        assertEquals("accepted", report.status);
        assertTrue(trainer.lastProbe != null);
        assertEquals(3, trainer.batchesSeen);                   // 3 steps over the 2 training batches
        ResultMeta meta = receivedMeta.get();
        assertEquals(4, meta.numExamples);                      // the probe's examples are not trained on
        assertEquals(2.7, meta.metrics.get(DeviceMetrics.Key.PROBE_LOSS_BEFORE).doubleValue(), 0);
        assertEquals(2.4, meta.metrics.get(DeviceMetrics.Key.PROBE_LOSS_AFTER).doubleValue(), 0);
        assertEquals(6L, meta.metrics.get(DeviceMetrics.Key.STEPS).longValue());   // 3 steps, 1 loss, 2 probe passes
        assertTrue(Task.fromJson(task).toJson().getJSONObject("train").getBoolean("probe_loss"));
    }

    @Test
    public void textTooShortToSpareAProbeTrainsOnEverythingAndReportsNone() throws Exception {
        task.getJSONObject("train").put("probe_loss", true);
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01);
        runner(trainer, "First paragraph of my notes.\n\nSecond one.\n\nThird, a little longer one.")
                .run(Task.fromJson(task));
        assertEquals(null, trainer.lastProbe);
        assertTrue(!receivedMeta.get().metrics.has(DeviceMetrics.Key.PROBE_LOSS_BEFORE));
    }

    @Test
    public void aTaskThatContradictsTheProgramIsRefusedBeforeTraining() throws Exception {
        task.getJSONObject("train").put("seq", 64);
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01);
        try {
            runner(trainer, "some text\n\nmore text").run(Task.fromJson(task));
            fail("seq 64 against a seq-32 program must be refused");
        } catch (IntegrityException expected) {
            assertTrue(expected.getMessage().contains("32"));
        }
        assertEquals(0, trainer.batchesSeen);
    }

    @Test
    public void anOptimizerTheTrainerDoesNotDeclareIsRefusedBeforeAnyDownload() throws Exception {
        task.getJSONObject("train").put("optimizer", "adamw").put("weight_decay", 0.01);
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01);   // declares sgd, as ExecuTorchTrainer
        TaskRunner runner = runner(trainer, "some text\n\nmore text");
        assertEquals(List.of("sgd"), runner.optimizers());
        try {
            runner.run(Task.fromJson(task));
            fail("an AdamW task must be refused by an SGD-only trainer");
        } catch (IntegrityException expected) {
            assertEquals("task asks for optimizer 'adamw'; this device's trainer supports [sgd]", expected.getMessage());
        }
        assertEquals(0, trainer.batchesSeen);
        assertEquals("nothing is fetched for a task the device cannot train", 0, blobRequests.get());
        assertEquals(null, receivedUpdate.get());
    }

    @Test
    public void anOptimizerTheTrainerDeclaresIsTrainedWith() throws Exception {
        task.getJSONObject("train").put("optimizer", "AdamW");
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01, List.of("sgd", "ADAMW", "adamw"));
        TaskRunner runner = runner(trainer, "First paragraph.\n\nSecond one.\n\nThird one.");
        assertEquals("lower case, duplicates dropped", List.of("sgd", "adamw"), runner.optimizers());
        TaskReport report = runner.run(Task.fromJson(task));
        assertEquals("accepted", report.status);
        assertEquals("adamw", trainer.lastOptimizer);
        assertEquals(3, trainer.batchesSeen);
    }

    @Test
    public void aTrainerThatDeclaresNoOptimizerIsRefused() {
        try {
            runner(new FakeTrainerForTests(4, 0.01, List.of()), "text");
            fail("a trainer must declare at least one optimizer");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage().contains("no optimizer"));
        }
    }

    @Test
    public void tooLittleTextIsReportedNotUploaded() throws Exception {
        try {
            runner(new FakeTrainerForTests(4, 0.01), "just one paragraph").run(Task.fromJson(task));
            fail("one example cannot fill a batch of 2");
        } catch (NoLocalDataException expected) {
            assertTrue(expected.getMessage().contains("one batch needs 2"));
        }
        assertEquals(null, receivedUpdate.get());
    }

    @Test
    public void aLabelPositionProgramRefusesLocalTextBeforeAnyStep() throws Exception {
        // "First paragraph of my notes." is 28 byte tokens: 27 labelled positions (not position 0).
        manifest.getJSONObject("program").put("loss_positions", 3);
        serve(manifest);
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01);
        try {
            runner(trainer, "First paragraph of my notes.\n\nSecond one.\n\nThird, a little longer one.")
                    .run(Task.fromJson(task));
            fail("rows labelled at more than program.loss_positions must be refused");
        } catch (TrainingException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().startsWith("batch 0 row 0 has 27 labelled positions, "
                    + "but this program computes the loss at only the first 3 per row (manifest "
                    + "program.loss_positions=3)"));
            assertTrue(expected.getMessage(), expected.getMessage().contains("without --loss-positions"));
        }
        assertEquals("no step ran", 0, trainer.batchesSeen);
        assertEquals(null, receivedUpdate.get());
    }

    @Test
    public void aLabelPositionProgramWhoseKHoldsEveryRowTrains() throws Exception {
        manifest.getJSONObject("program").put("loss_positions", 31);   // seq - 1: every row fits
        serve(manifest);
        FakeTrainerForTests trainer = new FakeTrainerForTests(4, 0.01);
        TaskReport report = runner(trainer, "First paragraph of my notes.\n\nSecond one.\n\nThird, a little longer one.")
                .run(Task.fromJson(task));
        assertEquals("accepted", report.status);
        assertEquals(3, trainer.batchesSeen);
    }
}
