package dev.pockettune.core.training;

import java.util.List;

/**
 * Runs a task's local training. The Android app implements it with ExecuTorch's training API
 * ({@code ExecuTorchTrainer}: TrainingModule + SGD); tests use a test double that makes valid
 * updates without a runtime. Keeping the interface here keeps the protocol core free of
 * {@code android.*} and of native code, so it compiles and is tested on a plain JVM.
 *
 * <p>Contract (the same as the Python device, {@code fleet/device.py}):
 * <ul>
 *   <li>declare in {@link #optimizers()} the optimizers it can train with: the app registers
 *       exactly that list (capabilities {@code optimizers}), so the coordinator offers no task
 *       with another {@code train.optimizer}, and {@code TaskRunner} refuses one all the same;</li>
 *   <li>start from {@link TrainingRequest#startAdapter} (the round's global adapter, a .ptd the
 *       program loads in place of its own), not from the artifact's initial adapter;</li>
 *   <li>take one optimizer step ({@link TrainingRequest#optimizer}) per batch in
 *       {@link TrainingRequest#batches}, in order;</li>
 *   <li>{@code lossBefore}: the first step's loss before its update; {@code lossAfter}: the loss
 *       on the first batch again after the last step (a comparable before/after pair);</li>
 *   <li>with a {@link TrainingRequest#probe} batch: its loss before the first step and after the
 *       last ({@code probeLossBefore/After}), passes that never step the optimizer, counted in
 *       {@code passes}; without one, both null;</li>
 *   <li>return every trained LoRA tensor under its PEFT key (the manifest's names), float32, the
 *       manifest's shapes: the full adapter values, not a delta.</li>
 * </ul>
 */
public interface Trainer {
    /** {@code train.optimizer} / capabilities {@code optimizers} name of SGD (momentum, weight decay). */
    String OPTIMIZER_SGD = "sgd";
    /** {@code train.optimizer} / capabilities {@code optimizers} name of AdamW. */
    String OPTIMIZER_ADAMW = "adamw";

    /**
     * The optimizers this trainer can train with, protocol names ({@link #OPTIMIZER_SGD},
     * {@link #OPTIMIZER_ADAMW}), at least one. What the device declares at registration.
     */
    List<String> optimizers();

    TrainingOutcome train(TrainingRequest request, TrainingListener listener)
            throws TrainingException, InterruptedException;
}
