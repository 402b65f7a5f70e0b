package dev.pockettune.core.training;

/**
 * Runs a task's local training. The Android app implements it with ExecuTorch's training API
 * ({@code ExecuTorchTrainer}: TrainingModule + SGD); tests use a test double that makes valid
 * updates without a runtime. Keeping the interface here keeps the protocol core free of
 * {@code android.*} and of native code, so it compiles and is tested on a plain JVM.
 *
 * <p>Contract (the same as the Python device, {@code fleet/device.py}):
 * <ul>
 *   <li>start from {@link TrainingRequest#startAdapter} (the round's global adapter, a .ptd the
 *       program loads in place of its own), not from the artifact's initial adapter;</li>
 *   <li>take one optimizer step per batch in {@link TrainingRequest#batches}, in order;</li>
 *   <li>{@code lossBefore}: the first step's loss before its update; {@code lossAfter}: the loss
 *       on the first batch again after the last step (a comparable before/after pair);</li>
 *   <li>return every trained LoRA tensor under its PEFT key (the manifest's names), float32, the
 *       manifest's shapes: the full adapter values, not a delta.</li>
 * </ul>
 */
public interface Trainer {
    TrainingOutcome train(TrainingRequest request, TrainingListener listener)
            throws TrainingException, InterruptedException;
}
