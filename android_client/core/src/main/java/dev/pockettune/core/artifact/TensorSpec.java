package dev.pockettune.core.artifact;

import java.util.Arrays;

/** A LoRA tensor the program trains: its PEFT name, shape and dtype (from the manifest). */
public final class TensorSpec {
    public final String name;
    public final long[] shape;
    public final String dtype;

    public TensorSpec(String name, long[] shape, String dtype) {
        this.name = name;
        this.shape = shape.clone();
        this.dtype = dtype;
    }

    public long numel() {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return n;
    }

    @Override
    public String toString() {
        return name + Arrays.toString(shape) + " " + dtype;
    }
}
