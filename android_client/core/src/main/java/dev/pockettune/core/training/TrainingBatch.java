package dev.pockettune.core.training;

/**
 * One fixed-shape training batch: {@code ids} and {@code labels}, row-major [batch, seq] int64, the
 * two inputs of the exported program ({@code forward(ids, labels)} returns the loss).
 */
public final class TrainingBatch {
    public final int batch;
    public final int seq;
    public final long[] ids;
    public final long[] labels;

    public TrainingBatch(int batch, int seq, long[] ids, long[] labels) {
        if (ids.length != (long) batch * seq || labels.length != ids.length) {
            throw new IllegalArgumentException("a [" + batch + ", " + seq + "] batch needs " + batch * seq
                    + " ids and labels, got " + ids.length + " and " + labels.length);
        }
        this.batch = batch;
        this.seq = seq;
        this.ids = ids;
        this.labels = labels;
    }

    public long[] shape() {
        return new long[] {batch, seq};
    }

    /**
     * How many next-token targets each row has: labels at positions 1..seq-1 other than
     * {@code ignoreIndex}. Position 0's label never counts, since nothing predicts the first token
     * (the count of {@code models/batching.py}'s {@code labelled_positions_per_row}, which a
     * label-position program's K is compared with).
     */
    public int[] labelledPositionsPerRow(long ignoreIndex) {
        int[] counts = new int[batch];
        for (int row = 0; row < batch; row++) {
            for (int position = 1; position < seq; position++) {
                if (labels[row * seq + position] != ignoreIndex) {
                    counts[row]++;
                }
            }
        }
        return counts;
    }
}
