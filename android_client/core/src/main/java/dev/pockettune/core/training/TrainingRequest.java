package dev.pockettune.core.training;

import dev.pockettune.core.artifact.LocalArtifact;
import java.nio.file.Path;
import java.util.Collections;
import java.util.List;

/** Everything a {@link Trainer} needs for one task, verified and tokenized by the core. */
public final class TrainingRequest {
    public final LocalArtifact artifact;
    public final Path startAdapter;
    /** One batch per optimizer step. */
    public final List<TrainingBatch> batches;
    /** The task's {@code train.optimizer} (lower case), one of the trainer's {@link Trainer#optimizers()}. */
    public final String optimizer;
    public final double learningRate;
    public final double momentum;
    public final double weightDecay;
    /**
     * A batch held out of {@link #batches} whose loss the trainer reports before the first step
     * and after the last ({@code train.probe_loss}); null when the task asks for none or the text
     * cannot spare one.
     */
    public final TrainingBatch probe;

    public TrainingRequest(LocalArtifact artifact, Path startAdapter, List<TrainingBatch> batches,
                           String optimizer, double learningRate, double momentum, double weightDecay) {
        this(artifact, startAdapter, batches, optimizer, learningRate, momentum, weightDecay, null);
    }

    public TrainingRequest(LocalArtifact artifact, Path startAdapter, List<TrainingBatch> batches,
                           String optimizer, double learningRate, double momentum, double weightDecay,
                           TrainingBatch probe) {
        this.artifact = artifact;
        this.startAdapter = startAdapter;
        this.batches = Collections.unmodifiableList(batches);
        this.optimizer = optimizer;
        this.learningRate = learningRate;
        this.momentum = momentum;
        this.weightDecay = weightDecay;
        this.probe = probe;
    }
}
