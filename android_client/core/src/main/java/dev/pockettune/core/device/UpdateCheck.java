package dev.pockettune.core.device;

import dev.pockettune.core.artifact.TensorSpec;
import dev.pockettune.core.training.NamedTensor;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The coordinator's upload checks (names, dtype, shapes, finite values, change norm), run on the
 * phone before uploading. A trainer bug then fails here with a precise message, the upload is
 * skipped, and the device's bandwidth and the round's rejection log are spared.
 */
public final class UpdateCheck {
    private UpdateCheck() {
    }

    /** The tensors in manifest order, or an exception naming the first problem. */
    public static List<NamedTensor> againstManifest(List<NamedTensor> tensors, List<TensorSpec> specs) {
        Map<String, NamedTensor> byName = new HashMap<>();
        for (NamedTensor tensor : tensors) {
            if (byName.put(tensor.name, tensor) != null) {
                throw new IllegalStateException("the trainer returned " + tensor.name + " twice");
            }
        }
        List<NamedTensor> ordered = new ArrayList<>(specs.size());
        for (TensorSpec spec : specs) {
            NamedTensor tensor = byName.remove(spec.name);
            if (tensor == null) {
                throw new IllegalStateException("the trainer did not return " + spec.name);
            }
            if (!"float32".equals(spec.dtype)) {
                throw new IllegalStateException(spec.name + " is " + spec.dtype + " in the manifest; only float32 is uploaded");
            }
            if (!Arrays.equals(spec.shape, tensor.shape)) {
                throw new IllegalStateException(spec.name + " has shape " + Arrays.toString(tensor.shape)
                        + "; the manifest says " + Arrays.toString(spec.shape));
            }
            for (float v : tensor.data) {
                if (Float.isNaN(v) || Float.isInfinite(v)) {
                    throw new IllegalStateException(spec.name + " has non-finite values: training diverged");
                }
            }
            ordered.add(tensor);
        }
        if (!byName.isEmpty()) {
            throw new IllegalStateException("the trainer returned tensors the manifest does not have: " + byName.keySet());
        }
        return ordered;
    }

    /** L2 norm of {@code after - before} over all tensors, in float64 (as the coordinator computes it). */
    public static double deltaNorm(List<NamedTensor> after, List<NamedTensor> before) {
        Map<String, NamedTensor> start = new HashMap<>();
        for (NamedTensor tensor : before) {
            start.put(tensor.name, tensor);
        }
        double squared = 0;
        for (NamedTensor tensor : after) {
            NamedTensor origin = start.get(tensor.name);
            if (origin == null || origin.data.length != tensor.data.length) {
                throw new IllegalStateException("no start value of the same size for " + tensor.name);
            }
            for (int i = 0; i < tensor.data.length; i++) {
                double d = (double) tensor.data[i] - (double) origin.data[i];
                squared += d * d;
            }
        }
        return Math.sqrt(squared);
    }
}
