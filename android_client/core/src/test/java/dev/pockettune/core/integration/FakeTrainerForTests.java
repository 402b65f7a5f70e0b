package dev.pockettune.core.integration;

import dev.pockettune.core.artifact.PtdReader;
import dev.pockettune.core.artifact.LoraKeys;
import dev.pockettune.core.artifact.TensorSpec;
import dev.pockettune.core.training.NamedTensor;
import dev.pockettune.core.training.Trainer;
import dev.pockettune.core.training.TrainingBatch;
import dev.pockettune.core.training.TrainingException;
import dev.pockettune.core.training.TrainingListener;
import dev.pockettune.core.training.TrainingOutcome;
import dev.pockettune.core.training.TrainingRequest;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

/**
 * TEST DOUBLE, not a trainer: it makes a *valid* update without any runtime, the JVM twin of
 * {@code FakeTrainer} in tests/coordinator/coordinator_harness.py. The JVM has no ExecuTorch, so
 * the integration test replaces the app's ExecuTorchTrainer with this class and keeps everything
 * else (download, verification, tokenization, batching, checks, upload) on the phone's code path.
 *
 * <p>It reads the start adapter from the round's {@code .ptd}, adds a small seeded Gaussian
 * perturbation to every LoRA tensor (float32, the manifest's names and shapes) and reports fixed
 * losses. It does look at every batch: each must have the program's shape and follow the label
 * rule (labels = ids on real tokens, -100 on padding), or it fails the task.
 *
 * <p>It declares the app's trainer's optimizers ({@code sgd}) unless a test gives it others.
 */
public final class FakeTrainerForTests implements Trainer {
    private final long seed;
    private final double scale;
    private final List<String> optimizers;
    public int batchesSeen;
    /** The optimizer of the last request it trained. */
    public String lastOptimizer;
    /** The probe batch of the last request (null: none). */
    public TrainingBatch lastProbe;

    public FakeTrainerForTests(long seed, double scale) {
        this(seed, scale, List.of(Trainer.OPTIMIZER_SGD));
    }

    public FakeTrainerForTests(long seed, double scale, List<String> optimizers) {
        this.seed = seed;
        this.scale = scale;
        this.optimizers = optimizers;
    }

    @Override
    public List<String> optimizers() {
        return optimizers;
    }

    @Override
    public TrainingOutcome train(TrainingRequest request, TrainingListener listener) throws TrainingException {
        int batch = request.artifact.manifest.batch;
        int seq = request.artifact.manifest.seq;
        long pad = request.artifact.manifest.tokenizer.padTokenId;
        int ignore = request.artifact.manifest.ignoreIndex;
        if (!optimizers.contains(request.optimizer)) {
            throw new TrainingException("asked to train with " + request.optimizer + ", declared " + optimizers);
        }
        lastOptimizer = request.optimizer;
        int step = 0;
        for (TrainingBatch b : request.batches) {
            if (b.batch != batch || b.seq != seq) {
                throw new TrainingException("batch of shape [" + b.batch + ", " + b.seq + "], the program takes ["
                        + batch + ", " + seq + "]");
            }
            for (int i = 0; i < b.ids.length; i++) {
                boolean padding = b.labels[i] == ignore;
                if (padding ? b.ids[i] != pad : b.labels[i] != b.ids[i]) {
                    throw new TrainingException("position " + i + " breaks the label rule: id " + b.ids[i]
                            + ", label " + b.labels[i]);
                }
            }
            batchesSeen++;
            listener.onStep(++step, request.batches.size(), 2.5);
        }
        Map<String, NamedTensor> start = new HashMap<>();
        try {
            for (NamedTensor tensor : PtdReader.read(request.startAdapter)) {
                start.put(LoraKeys.peftKey(tensor.name), tensor);
            }
        } catch (IOException e) {
            throw new TrainingException("cannot read the start adapter", e);
        }
        Random random = new Random(seed);
        List<NamedTensor> adapter = new ArrayList<>();
        for (TensorSpec spec : request.artifact.manifest.loraTensors) {
            NamedTensor origin = start.get(spec.name);
            float[] values = new float[Math.toIntExact(spec.numel())];
            for (int i = 0; i < values.length; i++) {
                values[i] = (float) (origin.data[i] + scale * random.nextGaussian());
            }
            adapter.add(new NamedTensor(spec.name, spec.shape, values));
        }
        lastProbe = request.probe;
        if (request.probe != null) {   // fixed probe losses, as the in-sample pair
            return new TrainingOutcome(2.5, 2.1, request.batches.size() + 3, 0.01, adapter, 2.7, 2.4);
        }
        return new TrainingOutcome(2.5, 2.1, request.batches.size() + 1, 0.01, adapter);
    }
}
