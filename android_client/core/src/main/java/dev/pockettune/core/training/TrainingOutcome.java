package dev.pockettune.core.training;

import java.util.Collections;
import java.util.List;

/** What a {@link Trainer} returns: the losses, the time spent computing and the trained adapter. */
public final class TrainingOutcome {
    public final double lossBefore;
    public final double lossAfter;
    /** Forward/backward passes run (optimizer steps, the final loss evaluation and any probe passes). */
    public final int passes;
    public final double computeSeconds;
    /** Every LoRA tensor under its PEFT key, float32, row-major. */
    public final List<NamedTensor> adapter;
    /** The probe batch's loss before the first step and after the last (null: no probe asked). */
    public final Double probeLossBefore;
    public final Double probeLossAfter;

    public TrainingOutcome(double lossBefore, double lossAfter, int passes, double computeSeconds,
                           List<NamedTensor> adapter) {
        this(lossBefore, lossAfter, passes, computeSeconds, adapter, null, null);
    }

    public TrainingOutcome(double lossBefore, double lossAfter, int passes, double computeSeconds,
                           List<NamedTensor> adapter, Double probeLossBefore, Double probeLossAfter) {
        this.lossBefore = lossBefore;
        this.lossAfter = lossAfter;
        this.passes = passes;
        this.computeSeconds = computeSeconds;
        this.adapter = Collections.unmodifiableList(adapter);
        this.probeLossBefore = probeLossBefore;
        this.probeLossAfter = probeLossAfter;
    }
}
