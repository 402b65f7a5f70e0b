package dev.pockettune.core.integration;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.artifact.ArtifactStore;
import dev.pockettune.core.artifact.LocalArtifact;
import dev.pockettune.core.artifact.Manifest;
import dev.pockettune.core.device.DeviceStatus;
import dev.pockettune.core.device.FileIdentityStore;
import dev.pockettune.core.device.LocalText;
import dev.pockettune.core.device.ParticipationSession;
import dev.pockettune.core.device.TaskReport;
import dev.pockettune.core.device.TaskRunner;
import dev.pockettune.core.http.BlobDownloader;
import dev.pockettune.core.http.CoordinatorClient;
import dev.pockettune.core.http.HttpExchange;
import dev.pockettune.core.http.ProtocolException;
import dev.pockettune.core.http.RetryPolicy;
import dev.pockettune.core.http.Sha256;
import dev.pockettune.core.http.TaskOffer;
import dev.pockettune.core.http.TransferListener;
import dev.pockettune.core.http.UploadOutcome;
import dev.pockettune.core.json.JsonOut;
import dev.pockettune.core.json.JsonWriter;
import dev.pockettune.core.protocol.Capabilities;
import dev.pockettune.core.protocol.ErrorCode;
import dev.pockettune.core.protocol.HealthResponse;
import dev.pockettune.core.protocol.RegisterRequest;
import dev.pockettune.core.protocol.ResultMeta;
import dev.pockettune.core.protocol.Task;
import dev.pockettune.core.training.NamedTensor;
import dev.pockettune.core.training.SafetensorsWriter;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.json.JSONArray;
import org.junit.Test;

/**
 * The JVM client against a real coordinator (started by tests/android/test_jvm_core.py with the
 * test harness, a tiny artifact and a running one-round job): register, heartbeat, get the task,
 * download with a resumed and a corrupted partial file, verify every device file and the start
 * adapter by sha256, tokenize and batch local text with the artifact's tokenizer, make an update
 * with {@link FakeTrainerForTests} (the one piece replaced: the JVM has no ExecuTorch), upload it,
 * and write a report the Python side checks against the admin API.
 *
 * <p>Environment: POCKETTUNE_COORDINATOR_URL, POCKETTUNE_ENROLLMENT_KEY, POCKETTUNE_IT_STATE_DIR,
 * POCKETTUNE_IT_REPORT.
 */
public class CoordinatorIntegrationTest {
    static final String[] PARAGRAPHS = {
        "Ad sales boost Time Warner profit. Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn "
                + "for the three months to December, from $639m year-earlier.",
        "The firm, which is now one of the biggest investors in Google, benefited from sales of high-speed internet "
                + "connections and higher advert sales.",
        "Time Warner said on Friday that it now owns 8% of search-engine Google. But its own internet business, AOL, "
                + "had mixed fortunes.",
        "It lost 464,000 subscribers in the fourth quarter profits were lower than in the preceding three quarters.",
        "However, the company said AOL's underlying profit before exceptional items rose 8% on the back of stronger "
                + "internet advertising revenues.",
        "Dollar gains on Greenspan speech. The dollar has hit its highest level against the euro in almost three "
                + "months after the Federal Reserve head said the US trade deficit is set to stabilise.",
    };

    private static String env(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            fail(name + " is not set: the integration test runs through tests/android/test_jvm_core.py "
                    + "(scripts/jvm_tests.sh integration), which starts a coordinator and sets it");
        }
        return value;
    }

    /** The device's fixed facts; its optimizers are the trainer's, as the app's worker wires them. */
    private static final class TestDevice implements DeviceStatus {
        private final List<String> optimizers;

        TestDevice(List<String> optimizers) {
            this.optimizers = optimizers;
        }

        @Override
        public String name() {
            return "jvm-integration-phone";
        }

        @Override
        public String platform() {
            return "android-14 (JVM test)";
        }

        @Override
        public Capabilities capabilities() {
            return new Capabilities(6144L, 8L, 21.5, 40.0, Collections.singletonList(Capabilities.RUNTIME_EXECUTORCH),
                    optimizers);
        }

        @Override
        public Double battery() {
            return 87.0;
        }

        @Override
        public Boolean charging() {
            return true;
        }
    }

    @Test
    public void aJvmDeviceCompletesARoundAgainstARealCoordinator() throws Exception {
        String url = env("POCKETTUNE_COORDINATOR_URL");
        String enrollmentKey = env("POCKETTUNE_ENROLLMENT_KEY");
        Path state = Paths.get(env("POCKETTUNE_IT_STATE_DIR"));
        Path reportPath = Paths.get(env("POCKETTUNE_IT_REPORT"));
        CoordinatorClient client = new CoordinatorClient(url, RetryPolicy.boundedBy(60_000))
                .withUserAgent("PocketTune-JVM-IntegrationTest/1");

        // The phone's trainer, replaced by the test double (which declares ExecuTorchTrainer's sgd).
        FakeTrainerForTests trainer = new FakeTrainerForTests(11, 0.01);
        List<String> optimizers = List.copyOf(trainer.optimizers());
        assertEquals(List.of("sgd"), optimizers);

        HealthResponse health = client.health();
        assertTrue("coordinator health: " + health.toJsonString(), health.ok());

        try {
            new CoordinatorClient(url, RetryPolicy.boundedBy(10_000)).register(new RegisterRequest("wrong-key",
                    "intruder", "android-14", new TestDevice(optimizers).capabilities(), null, null));
            fail("a wrong enrollment key must be refused");
        } catch (ProtocolException e) {
            assertEquals(401, e.status);
            assertTrue(e.is(ErrorCode.UNAUTHORIZED));
        }

        ParticipationSession session = new ParticipationSession(client, url, enrollmentKey,
                new FileIdentityStore(state.resolve("device.json")), new TestDevice(optimizers));
        long deviceId = session.ensureRegistered();
        assertTrue(Files.isRegularFile(state.resolve("device.json")));
        assertEquals(deviceId, session.heartbeat().deviceId);

        Task task = null;
        for (int attempt = 0; attempt < 60 && task == null; attempt++) {
            TaskOffer offer = session.nextTask();
            if (offer.hasTask()) {
                task = offer.task;
            } else {
                Thread.sleep(Math.min(offer.retryAfterMillis, 1_000));
            }
        }
        assertNotNull("the coordinator never offered a task", task);

        ArtifactStore store = new ArtifactStore(state.resolve("cache"), new BlobDownloader(client, TransferListener.NONE));
        BlobDownloader downloader = new BlobDownloader(client, TransferListener.NONE);
        Path artifactDir = store.artifactDir(task.artifact.sha256);

        // Resume: the first half of the largest file arrives by a plain Range request, then the
        // downloader must fetch exactly the rest.
        Task.ArtifactFile largest = Collections.max(task.artifact.files, (a, b) -> Long.compare(a.size, b.size));
        long half = largest.size / 2;
        Path largestDest = artifactDir.resolve(largest.path);
        Files.createDirectories(largestDest.getParent());
        try (HttpExchange exchange = client.open("GET", largest.url, Map.of("Range", "bytes=0-" + (half - 1)), null,
                null, 206)) {
            byte[] firstHalf = exchange.readBody();
            assertEquals(half, firstHalf.length);
            Files.write(BlobDownloader.partFile(largestDest), firstHalf);
        }
        long resumedBytes = downloader.download(largest.url, largest.sha256, largest.size, largestDest);
        assertEquals("only the missing half travels", largest.size - half, resumedBytes);

        // A corrupted partial file: detected by the hash, deleted, fetched again from scratch.
        Task.ArtifactFile tokenizerFile = task.artifact.files.stream()
                .filter(f -> f.path.endsWith("tokenizer.json")).findFirst().orElseThrow();
        Path tokenizerDest = artifactDir.resolve(tokenizerFile.path);
        Files.createDirectories(tokenizerDest.getParent());
        byte[] garbage = new byte[(int) (tokenizerFile.size / 2)];
        new Random(5).nextBytes(garbage);
        Files.write(BlobDownloader.partFile(tokenizerDest), garbage);
        long refetchedBytes = downloader.download(tokenizerFile.url, tokenizerFile.sha256, tokenizerFile.size,
                tokenizerDest);
        assertEquals(tokenizerFile.size - garbage.length + tokenizerFile.size, refetchedBytes);

        LocalArtifact artifact = store.fetch(task.artifact);
        Path adapter = store.fetchAdapter(task.adapter);
        assertEquals(task.artifact.sha256, Sha256.ofFile(artifactDir.resolve(Manifest.FILE)));
        assertEquals(task.adapter.sha256, Sha256.ofFile(adapter));
        List<String> verified = new ArrayList<>();
        for (Manifest.FileEntry entry : artifact.manifest.deviceFiles()) {
            Path file = artifact.file(entry.path);
            assertEquals(entry.path, entry.sha256, Sha256.ofFile(file));
            assertEquals(entry.path, entry.size, Files.size(file));
            verified.add(entry.path);
        }
        assertTrue(verified.contains("tokenizer/tokenizer.json"));
        assertTrue(verified.contains(artifact.manifest.programFile));

        // A malformed update is refused with the coordinator's code (and changes nothing).
        List<NamedTensor> wrongShape = new ArrayList<>();
        for (var spec : artifact.manifest.loraTensors) {
            long[] shape = spec.shape.clone();
            if (wrongShape.isEmpty()) {
                assertTrue("LoRA matrices are not square", shape.length == 2 && shape[0] != shape[1]);
                shape = new long[] {spec.shape[1], spec.shape[0]};   // transposed: same size, wrong shape
            }
            wrongShape.add(new NamedTensor(spec.name, shape, new float[Math.toIntExact(spec.numel())]));
        }
        byte[] badUpdate = SafetensorsWriter.write(wrongShape, Map.of("format", "pt"));
        ResultMeta badMeta = new ResultMeta(1, 2.5, 2.1, 1.0, 0, badUpdate.length, task.adapter.sha256, null);
        try {
            client.uploadResult(task.upload.url, badMeta, badUpdate);
            fail("an update with a transposed tensor must be refused");
        } catch (ProtocolException e) {
            assertEquals(422, e.status);
            assertTrue(e.code + ": " + e.serverMessage, e.is(ErrorCode.TENSOR_SHAPE));
        }

        // The round itself: the phone's TaskRunner with the test double as its trainer.
        LocalText text = new LocalText() {
            @Override
            public List<String> documents() {
                return Collections.singletonList(String.join("\n\n", PARAGRAPHS));
            }

            @Override
            public String describe() {
                return "test paragraphs (" + PARAGRAPHS.length + ")";
            }
        };
        TaskReport report = new TaskRunner(client, store, trainer, text, null).withPeakGflops(21.5).run(task);
        assertEquals("accepted", report.status);
        assertNotNull(report.response);
        assertEquals(task.taskId, report.response.taskId);
        assertEquals(report.updateSha256, report.response.sha256);
        assertEquals(report.updateBytes, report.response.size);
        assertEquals("the coordinator's delta norm is the device's", report.deltaNorm,
                report.response.deltaNorm.doubleValue(), 1e-6 * Math.max(1, report.deltaNorm));
        assertEquals(task.train.steps, trainer.batchesSeen);

        UploadOutcome again = client.uploadResult(task.upload.url, badMeta, badUpdate);
        assertTrue("a second upload reads as already submitted", again.alreadySubmitted);
        TaskOffer after = session.nextTask();
        assertFalse("a device that submitted gets no task in a one-round job", after.hasTask());

        JSONArray files = new JSONArray();
        for (String path : verified) {
            files.put(path);
        }
        String json = JsonWriter.pretty(new JsonOut()
                .put("device_id", deviceId).put("task_id", task.taskId).put("job_id", task.jobId)
                .put("round", task.round).put("update_sha256", report.updateSha256)
                .put("server_sha256", report.response.sha256).put("update_bytes", report.updateBytes)
                .put("delta_norm_jvm", report.deltaNorm).put("delta_norm_server", report.response.deltaNorm)
                .put("num_examples", report.numExamples).put("loss_before", report.lossBefore)
                .put("loss_after", report.lossAfter).put("bytes_downloaded", report.bytesDownloaded)
                .put("resumed_bytes", resumedBytes).put("resumed_file", largest.path)
                .put("refetched_bytes", refetchedBytes).put("verified_files", files)
                .put("round_status", report.response.roundStatus).put("no_task_reason", after.noTaskReason)
                .build(), 2);
        Files.write(reportPath, json.getBytes(StandardCharsets.UTF_8));
        System.out.println("integration report: " + json.replace('\n', ' '));
        assertFalse(Arrays.asList(task.artifact.files).isEmpty());
    }
}
