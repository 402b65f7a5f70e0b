package dev.pockettune.core.device;

import dev.pockettune.core.artifact.ArtifactStore;
import dev.pockettune.core.artifact.LocalArtifact;
import dev.pockettune.core.artifact.LoraKeys;
import dev.pockettune.core.artifact.Manifest;
import dev.pockettune.core.artifact.PtdReader;
import dev.pockettune.core.artifact.TensorSpec;
import dev.pockettune.core.http.CoordinatorClient;
import dev.pockettune.core.http.CoordinatorException;
import dev.pockettune.core.http.IntegrityException;
import dev.pockettune.core.http.Sha256;
import dev.pockettune.core.http.UploadOutcome;
import dev.pockettune.core.protocol.DeviceMetrics;
import dev.pockettune.core.protocol.ResultMeta;
import dev.pockettune.core.protocol.Task;
import dev.pockettune.core.tokenizer.HfTokenizer;
import dev.pockettune.core.training.LossPositions;
import dev.pockettune.core.training.NamedTensor;
import dev.pockettune.core.training.SafetensorsWriter;
import dev.pockettune.core.training.TextBatcher;
import dev.pockettune.core.training.Trainer;
import dev.pockettune.core.training.TrainingBatch;
import dev.pockettune.core.training.TrainingException;
import dev.pockettune.core.training.TrainingOutcome;
import dev.pockettune.core.training.TrainingRequest;
import java.io.IOException;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * One task, start to finish, exactly as the Python device does it ({@code DeviceAgent.do_task}):
 * fetch and verify the artifact and the round's start adapter; check that the task, the manifest
 * and the adapter agree; tokenize the local text as the manifest says (refusing batches a
 * label-position program cannot train: {@link LossPositions}); train through the
 * {@link Trainer}; check the update as the coordinator will; upload it with its metrics.
 *
 * <p>Shared by the app's worker and the JVM integration test, so the test exercises the phone's
 * own code path with only the trainer replaced.
 */
public final class TaskRunner {
    private final CoordinatorClient client;
    private final ArtifactStore store;
    private final Trainer trainer;
    private final List<String> optimizers;
    private final LocalText text;
    private final TaskListener listener;
    private Double peakGflops;
    private Double previousUploadSeconds;

    public TaskRunner(CoordinatorClient client, ArtifactStore store, Trainer trainer, LocalText text,
                      TaskListener listener) {
        this.client = client;
        this.store = store;
        this.trainer = trainer;
        this.optimizers = normalized(trainer.optimizers());
        this.text = text;
        this.listener = listener == null ? TaskListener.NONE : listener;
    }

    /** The trainer's optimizers (lower case): what the device declares, and all that {@link #run} accepts. */
    public List<String> optimizers() {
        return optimizers;
    }

    /** The device's measured matmul peak, reported with each result (null: not reported). */
    public TaskRunner withPeakGflops(Double gflops) {
        this.peakGflops = gflops;
        return this;
    }

    public TaskReport run(Task task) throws CoordinatorException, IOException, InterruptedException,
            TrainingException, NoLocalDataException {
        // The coordinator offers only the optimizers the device declared; one outside them is
        // refused all the same, before anything is downloaded.
        String optimizer = task.train.optimizer.toLowerCase(Locale.ROOT);
        if (!optimizers.contains(optimizer)) {
            throw new IntegrityException("task asks for optimizer '" + task.train.optimizer
                    + "'; this device's trainer supports " + optimizers);
        }
        long bytesBefore = client.transfers().bytesDown();
        double secondsBefore = client.transfers().secondsDown();
        listener.onPhase(TaskListener.Phase.DOWNLOADING, "artifact " + shortSha(task.artifact.sha256));
        LocalArtifact artifact = store.fetch(task.artifact);
        Path adapterPath = store.fetchAdapter(task.adapter);
        long bytesDownloaded = client.transfers().bytesDown() - bytesBefore;
        double downloadSeconds = client.transfers().secondsDown() - secondsBefore;
        Manifest manifest = artifact.manifest;

        if (task.train.batch != manifest.batch || task.train.seq != manifest.seq) {
            throw new IntegrityException("task says batch/seq " + task.train.batch + "/" + task.train.seq
                    + ", the program was compiled for " + manifest.batch + "/" + manifest.seq);
        }
        List<NamedTensor> start = startAdapter(adapterPath, manifest.loraTensors);

        listener.onPhase(TaskListener.Phase.TOKENIZING, text.describe());
        int steps = Math.toIntExact(task.train.steps);
        List<TextBatcher.Example> examples = examples(artifact);
        TextBatcher batcher = batcher(artifact);
        // FedSpine's reward: the loss on a batch held out of training (the same one every round).
        List<TextBatcher.Example> probeExamples = probeExamples(examples, manifest.batch, task.train.wantsProbeLoss());
        examples = examples.subList(0, examples.size() - probeExamples.size());
        TrainingBatch probe = probeExamples.isEmpty() ? null : batcher.batches(probeExamples).get(0);
        List<TrainingBatch> batches = batcher.batches(examples);
        if (batches.isEmpty()) {
            throw new NoLocalDataException(text.describe() + " gives " + examples.size() + " examples; one batch needs "
                    + manifest.batch);
        }
        List<TrainingBatch> stepBatches = TextBatcher.forRound(batches, task.round, steps);
        // A label-position program cannot see labels past its first K per row: refuse such a batch
        // here, before any step, as the Python trainers do (the trainer never gets to run it).
        LossPositions.check(stepBatches, manifest.lossPositions, manifest.ignoreIndex);
        if (probe != null) {
            LossPositions.check(List.of(probe), manifest.lossPositions, manifest.ignoreIndex);
        }

        listener.onPhase(TaskListener.Phase.TRAINING, steps + " steps");
        long trainStarted = System.nanoTime();
        TrainingOutcome outcome = trainer.train(new TrainingRequest(artifact, adapterPath, stepBatches, optimizer,
                task.train.lr.doubleValue(), task.train.momentumOrZero(), task.train.weightDecayOrZero(), probe),
                listener);
        double trainSeconds = (System.nanoTime() - trainStarted) / 1e9;
        if (listener.isCancelled()) {
            throw new InterruptedException("training cancelled");
        }
        checkLoss("loss_before", outcome.lossBefore);
        checkLoss("loss_after", outcome.lossAfter);
        if (probe != null) {
            if (outcome.probeLossBefore == null || outcome.probeLossAfter == null) {
                throw new TrainingException("the trainer reported no probe loss for the held-out batch it was given");
            }
            checkLoss("probe_loss_before", outcome.probeLossBefore);
            checkLoss("probe_loss_after", outcome.probeLossAfter);
        }

        List<NamedTensor> update;
        try {
            update = UpdateCheck.againstManifest(outcome.adapter, manifest.loraTensors);
        } catch (IllegalStateException e) {
            throw new TrainingException(e.getMessage(), e);
        }
        if (task.train.privacy != null) {
            // A differentially private job: clip (and under local DP, noise) before anything leaves.
            update = UpdateClipping.clip(update, start, task.train.privacy.clipNorm.doubleValue(),
                    task.train.privacy.noiseMultiplierOrZero(), new SecureRandom());
        }
        double deltaNorm = UpdateCheck.deltaNorm(update, start);
        if (!(deltaNorm <= task.upload.maxUpdateNorm.doubleValue())) {
            throw new TrainingException("the update changes the adapter by L2 norm " + deltaNorm
                    + "; this job accepts at most " + task.upload.maxUpdateNorm);
        }
        Map<String, String> metadata = new HashMap<>();
        metadata.put("format", "pt");
        byte[] bytes = SafetensorsWriter.write(update, metadata);
        if (bytes.length > task.upload.maxBytes) {
            throw new TrainingException("the update is " + bytes.length + " bytes; the task allows " + task.upload.maxBytes);
        }

        // Distinct examples the steps trained on (a short tail that fills no batch is not trained):
        // the FedAvg weight of this update.
        long numExamples = Math.min((long) batches.size() * manifest.batch, (long) steps * manifest.batch);
        DeviceMetrics metrics = new DeviceMetrics()
                .set(DeviceMetrics.Key.STEPS, (long) outcome.passes)
                .set(DeviceMetrics.Key.COMPUTE_SECONDS, outcome.computeSeconds)
                .set(DeviceMetrics.Key.DOWNLOAD_SECONDS, downloadSeconds)
                .set(DeviceMetrics.Key.PREVIOUS_UPLOAD_SECONDS, previousUploadSeconds);
        Double rss = ProcessStats.peakRssMb();
        if (rss != null) {
            metrics.set(DeviceMetrics.Key.PEAK_RSS_MB, rss);
        }
        if (peakGflops != null && peakGflops > 0) {
            metrics.set(DeviceMetrics.Key.PEAK_GFLOPS, peakGflops);
        }
        if (probe != null) {
            metrics.set(DeviceMetrics.Key.PROBE_LOSS_BEFORE, outcome.probeLossBefore)
                    .set(DeviceMetrics.Key.PROBE_LOSS_AFTER, outcome.probeLossAfter);
        }
        ResultMeta meta = new ResultMeta(Math.max(1, numExamples), outcome.lossBefore, outcome.lossAfter, trainSeconds,
                bytesDownloaded, bytes.length, task.adapter.sha256, metrics);

        listener.onPhase(TaskListener.Phase.UPLOADING, bytes.length + " bytes");
        UploadOutcome uploaded = client.uploadResult(task.upload.url, meta, bytes);
        previousUploadSeconds = uploaded.seconds;
        listener.onPhase(TaskListener.Phase.DONE, "task " + task.taskId);
        return new TaskReport(task.taskId, task.jobId, task.round,
                uploaded.alreadySubmitted ? "accepted (already submitted)" : "accepted", uploaded.response,
                Sha256.of(bytes), bytes.length, deltaNorm, outcome.lossBefore, outcome.lossAfter, steps, numExamples,
                bytesDownloaded, downloadSeconds, trainSeconds, uploaded.seconds);
    }

    /**
     * The examples of the probe batch: the last {@code batch} of them, held out of training, when
     * the task asks for a probe and the text can spare them (at least two batches left to train
     * on); otherwise none. The Python device's rule ({@code fleet.device.probe_split}): a probe
     * the device also trained on would reward memorizing it.
     */
    static List<TextBatcher.Example> probeExamples(List<TextBatcher.Example> examples, int batch, boolean wanted) {
        if (!wanted || examples.size() < 3 * batch) {
            return List.of();
        }
        return examples.subList(examples.size() - batch, examples.size());
    }

    /** A trainer's declared optimizers, lower case, duplicates dropped; refused if it declares none. */
    static List<String> normalized(List<String> declared) {
        if (declared == null || declared.isEmpty()) {
            throw new IllegalArgumentException("the trainer declares no optimizer it can train with");
        }
        List<String> names = new ArrayList<>();
        for (String name : declared) {
            if (name == null || name.isEmpty()) {
                throw new IllegalArgumentException("the trainer declares an empty optimizer name: " + declared);
            }
            String lower = name.toLowerCase(Locale.ROOT);
            if (!names.contains(lower)) {
                names.add(lower);
            }
        }
        return Collections.unmodifiableList(names);
    }

    /** The start adapter's tensors under PEFT keys, refused unless they are exactly the manifest's. */
    static List<NamedTensor> startAdapter(Path ptd, List<TensorSpec> specs) throws IOException {
        Map<String, NamedTensor> byName = new HashMap<>();
        for (NamedTensor tensor : PtdReader.read(ptd)) {
            String peft;
            try {
                peft = LoraKeys.peftKey(tensor.name);
            } catch (IllegalArgumentException e) {
                throw new IntegrityException("the start adapter holds " + tensor.name + ", not a LoRA tensor");
            }
            byName.put(peft, tensor.renamed(peft));
        }
        List<NamedTensor> ordered = new ArrayList<>();
        for (TensorSpec spec : specs) {
            NamedTensor tensor = byName.remove(spec.name);
            if (tensor == null || !Arrays.equals(tensor.shape, spec.shape)) {
                throw new IntegrityException("the start adapter does not fit the program: " + spec
                        + (tensor == null ? " is missing" : " has shape " + Arrays.toString(tensor.shape)));
            }
            ordered.add(tensor);
        }
        if (!byName.isEmpty()) {
            throw new IntegrityException("the start adapter has tensors the manifest does not: " + byName.keySet());
        }
        return Collections.unmodifiableList(ordered);
    }

    private TextBatcher batcher(LocalArtifact artifact) throws IOException {
        Manifest manifest = artifact.manifest;
        HfTokenizer tokenizer = tokenizer(artifact);
        return new TextBatcher(tokenizer, manifest.tokenizer.addSpecialTokens, manifest.tokenizer.padTokenId,
                manifest.ignoreIndex, manifest.batch, manifest.seq);
    }

    private List<TextBatcher.Example> examples(LocalArtifact artifact) throws IOException {
        return batcher(artifact).examples(text.documents());
    }

    private final Map<Path, HfTokenizer> tokenizers = new HashMap<>();

    /** The artifact's tokenizer, checked against the manifest's padding rules (cached per artifact). */
    private HfTokenizer tokenizer(LocalArtifact artifact) throws IOException {
        HfTokenizer cached = tokenizers.get(artifact.root);
        if (cached != null) {
            return cached;
        }
        Manifest.TokenizerSection section = artifact.manifest.tokenizer;
        if (!"right".equals(section.paddingSide) || !"right".equals(section.truncationSide)) {
            throw new IntegrityException("the manifest pads/truncates on the " + section.paddingSide + "/"
                    + section.truncationSide + "; this app implements right/right");
        }
        Path dir = artifact.tokenizerDir();
        HfTokenizer tokenizer = HfTokenizer.load(dir);
        Integer configPad = HfTokenizer.padTokenIdFromConfig(dir, tokenizer);
        if (configPad != null && configPad != section.padTokenId) {
            throw new IntegrityException("the artifact's tokenizer pads with id " + configPad
                    + ", its manifest says " + section.padTokenId);
        }
        tokenizers.put(artifact.root, tokenizer);
        return tokenizer;
    }

    private static void checkLoss(String name, double loss) throws TrainingException {
        if (Double.isNaN(loss) || Double.isInfinite(loss) || loss < 0) {
            throw new TrainingException(name + " is " + loss + ": training diverged or the program is broken");
        }
    }

    private static String shortSha(String sha) {
        return sha.length() > 12 ? sha.substring(0, 12) : sha;
    }
}
