package dev.pockettune.core.training;

import java.util.Arrays;

/** A named float32 tensor in row-major order: a LoRA weight on its way into or out of training. */
public final class NamedTensor {
    public final String name;
    public final long[] shape;
    public final float[] data;

    public NamedTensor(String name, long[] shape, float[] data) {
        long numel = 1;
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException(name + ": negative dimension in " + Arrays.toString(shape));
            }
            numel *= d;
        }
        if (numel != data.length) {
            throw new IllegalArgumentException(name + ": shape " + Arrays.toString(shape) + " holds " + numel
                    + " values, got " + data.length);
        }
        this.name = name;
        this.shape = shape.clone();
        this.data = data;
    }

    public NamedTensor renamed(String newName) {
        return new NamedTensor(newName, shape, data);
    }

    @Override
    public String toString() {
        return name + Arrays.toString(shape);
    }
}
