package dev.pockettune.core.device;

import dev.pockettune.core.training.NamedTensor;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

/**
 * Client-level differential privacy on the phone, before anything leaves it: the update's change
 * from the start adapter is scaled to L2 norm at most {@code clipNorm}, and under local DP
 * Gaussian noise of standard deviation {@code noiseMultiplier * clipNorm} is added to every value
 * of the clipped change. The same arithmetic as the Python device's {@code models/update_privacy.py}
 * (float64, the same margin), checked against the shared vectors in
 * {@code tests/protocol/update_clipping.json}.
 */
public final class UpdateClipping {
    /**
     * The clipped change's norm is brought to at most {@code clipNorm * (1 - CLIP_MARGIN)} so that
     * float32 rounding of {@code start + change} cannot push the norm the coordinator recomputes past it.
     */
    public static final double CLIP_MARGIN = 1e-5;

    private UpdateClipping() {
    }

    /**
     * {@code start + clip(update - start)} (plus noise when {@code noiseMultiplier > 0}), tensor by
     * tensor in {@code update}'s order. {@code rng} must be unpredictable to the coordinator when
     * noise is added (the task runner passes a {@link java.security.SecureRandom}).
     */
    public static List<NamedTensor> clip(List<NamedTensor> update, List<NamedTensor> start, double clipNorm,
                                         double noiseMultiplier, Random rng) {
        if (!(clipNorm > 0) || Double.isInfinite(clipNorm)) {
            throw new IllegalArgumentException("clipNorm must be a positive number, got " + clipNorm);
        }
        if (!(noiseMultiplier >= 0)) {
            throw new IllegalArgumentException("noiseMultiplier must be >= 0, got " + noiseMultiplier);
        }
        Map<String, NamedTensor> origin = new HashMap<>();
        for (NamedTensor tensor : start) {
            origin.put(tensor.name, tensor);
        }
        double norm = UpdateCheck.deltaNorm(update, start);
        double bound = clipNorm * (1.0 - CLIP_MARGIN);
        double scale = norm <= bound ? 1.0 : bound / norm;
        double sigma = noiseMultiplier * clipNorm;
        List<NamedTensor> out = new ArrayList<>(update.size());
        for (NamedTensor tensor : update) {
            float[] base = origin.get(tensor.name).data;
            float[] values = new float[tensor.data.length];
            for (int i = 0; i < values.length; i++) {
                double change = ((double) tensor.data[i] - (double) base[i]) * scale;
                if (sigma > 0) {
                    change += sigma * rng.nextGaussian();
                }
                values[i] = (float) ((double) base[i] + change);
            }
            out.add(new NamedTensor(tensor.name, tensor.shape, values));
        }
        return out;
    }
}
