package dev.pockettune.app

import dev.pockettune.core.artifact.LoraKeys
import dev.pockettune.core.training.NamedTensor
import dev.pockettune.core.training.Trainer
import dev.pockettune.core.training.TrainingBatch
import dev.pockettune.core.training.TrainingException
import dev.pockettune.core.training.TrainingListener
import dev.pockettune.core.training.TrainingOutcome
import dev.pockettune.core.training.TrainingRequest
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.pytorch.executorch.training.SGD
import org.pytorch.executorch.training.TrainingModule

/**
 * The core's [Trainer] on ExecuTorch's on-device training API (`executorch-android`, package
 * `org.pytorch.executorch.training`, marked experimental upstream): the same runtime and the same
 * `.pte`/`.ptd` files that the Python device (fleet/runtime_executorch.py) drives through the
 * Python bindings.
 *
 * - `TrainingModule.load(model.pte, start.ptd)`: the program with the round's global adapter as
 *   its trainable weights (the `.ptd` replaces the artifact's own `lora.ptd`);
 * - `executeForwardBackward("forward", ids, labels)`: loss (output 0) and gradients;
 * - `namedParameters("forward")` / `namedGradients("forward")`: the LoRA weights and their
 *   gradients as tensors over the runtime's own memory, under the program's keys;
 * - `SGD.create(parameters, lr, momentum, dampening = 0, weightDecay, nesterov = false)` and
 *   `step(gradients)`: updates those weights in place.
 *
 * The parameters exist only once a method has run, so the optimizer is created after the first
 * forward/backward, as in the Python trainer. Tiers with a frozen-prefix program (`prefix.pte`)
 * run it through `Module.forward(ids)` to get the hidden states the training program takes.
 * A task's held-out probe batch (`train.probe_loss`, FedSpine) is passed through the same
 * forward/backward before the first step and after the last, without an optimizer step.
 */
class ExecuTorchTrainer : Trainer {
    /**
     * SGD only: `org.pytorch.executorch.training` has no other optimizer. The app registers this
     * list (capabilities `optimizers`), so the coordinator offers this phone no AdamW task.
     */
    override fun optimizers(): List<String> = listOf(Trainer.OPTIMIZER_SGD)

    override fun train(request: TrainingRequest, listener: TrainingListener): TrainingOutcome {
        if (request.optimizer != Trainer.OPTIMIZER_SGD) {
            throw TrainingException("ExecuTorch trains with SGD only, not ${request.optimizer}")
        }
        val manifest = request.artifact.manifest
        val method = manifest.programMethod
        val prefix = request.artifact.prefixProgram()?.let { Module.load(it.toString()) }
        val module = try {
            TrainingModule.load(request.artifact.program().toString(), request.startAdapter.toString())
        } catch (e: RuntimeException) {
            prefix?.let(::release)
            throw TrainingException("ExecuTorch could not load ${manifest.programFile}: ${e.message}", e)
        }
        var optimizer: SGD? = null
        try {
            var lossBefore = Double.NaN
            var computeNanos = 0L
            val total = request.batches.size
            // FedSpine's held-out probe: a forward/backward whose gradients no optimizer step uses.
            val probeStarted = System.nanoTime()
            val probeBefore = request.probe?.let { forwardBackward(module, method, it, prefix) }
            computeNanos += System.nanoTime() - probeStarted
            request.batches.forEachIndexed { index, batch ->
                if (listener.isCancelled || Thread.currentThread().isInterrupted) {
                    throw InterruptedException("training cancelled after $index of $total steps")
                }
                val started = System.nanoTime()
                val loss = forwardBackward(module, method, batch, prefix)
                val sgd = optimizer ?: SGD.create(module.namedParameters(method), request.learningRate,
                    request.momentum, 0.0, request.weightDecay, false).also { optimizer = it }
                sgd.step(module.namedGradients(method))
                computeNanos += System.nanoTime() - started
                if (index == 0) lossBefore = loss
                listener.onStep(index + 1, total, loss)
            }
            // The first batch again after the last step: a before/after pair on the same data.
            val started = System.nanoTime()
            val lossAfter = forwardBackward(module, method, request.batches[0], prefix)
            val probeAfter = request.probe?.let { forwardBackward(module, method, it, prefix) }
            computeNanos += System.nanoTime() - started
            val adapter = module.namedParameters(method).map { (key, tensor) ->
                NamedTensor(LoraKeys.peftKey(key), tensor.shape(), tensor.dataAsFloatArray.copyOf())
            }
            val probePasses = if (request.probe != null) 2 else 0
            return TrainingOutcome(lossBefore, lossAfter, total + 1 + probePasses, computeNanos / 1e9, adapter,
                probeBefore, probeAfter)
        } catch (e: InterruptedException) {
            throw e
        } catch (e: TrainingException) {
            throw e
        } catch (e: RuntimeException) {
            throw TrainingException("ExecuTorch training failed: ${e.message}", e)
        } finally {
            release(module)
            prefix?.let(::release)
        }
    }

    /** One forward/backward pass; returns the loss (gradients stay in the module). */
    private fun forwardBackward(module: TrainingModule, method: String, batch: TrainingBatch, prefix: Module?): Double {
        val ids = Tensor.fromBlob(batch.ids, batch.shape())
        val labels = Tensor.fromBlob(batch.labels, batch.shape())
        val first = if (prefix != null) prefix.forward(EValue.from(ids))[0] else EValue.from(ids)
        val outputs = module.executeForwardBackward(method, first, EValue.from(labels))
        val loss = outputs[0].toTensor().dataAsFloatArray[0].toDouble()
        if (loss.isNaN() || loss.isInfinite()) throw TrainingException("loss is $loss: training diverged")
        return loss
    }

    /**
     * Frees native memory now rather than at garbage collection (a SmolLM2 program holds about
     * 1.4 GB). The Kotlin builds of executorch-android make these classes Closeable; the Java
     * builds have destroy(). Either is called.
     */
    private fun release(native: Any) {
        if (native is AutoCloseable) {
            runCatching { native.close() }
            return
        }
        runCatching { native.javaClass.getMethod("destroy").invoke(native) }
    }
}
