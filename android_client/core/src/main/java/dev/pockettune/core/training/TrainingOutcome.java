package dev.pockettune.core.training;

import java.util.Collections;
import java.util.List;

/** What a {@link Trainer} returns: the losses, the time spent computing and the trained adapter. */
public final class TrainingOutcome {
    public final double lossBefore;
    public final double lossAfter;
    /** Forward/backward passes run (optimizer steps plus the final loss evaluation). */
    public final int passes;
    public final double computeSeconds;
    /** Every LoRA tensor under its PEFT key, float32, row-major. */
    public final List<NamedTensor> adapter;

    public TrainingOutcome(double lossBefore, double lossAfter, int passes, double computeSeconds,
                           List<NamedTensor> adapter) {
        this.lossBefore = lossBefore;
        this.lossAfter = lossAfter;
        this.passes = passes;
        this.computeSeconds = computeSeconds;
        this.adapter = Collections.unmodifiableList(adapter);
    }
}
