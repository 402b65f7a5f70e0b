package dev.pockettune.core.training;

import java.util.List;

/**
 * The check every trainer makes for a program compiled with a label-position head
 * ({@code program.loss_positions} K in the manifest; {@code models.batching.check_loss_positions}
 * on the Python side): such a program runs the LM head at the first K labelled positions of each
 * row only. Given a row labelled at more, it would silently train on part of the loss and report a
 * loss that is not the task's, so the batch is refused before any step runs.
 *
 * <p>On a phone this matters because the local text labels every token of a row: an artifact
 * exported for a task with a short label (a topic word) cannot train on it, and the task is given
 * up with this message rather than uploaded as a wrong update.
 */
public final class LossPositions {
    private LossPositions() {
    }

    /**
     * Refuses {@code batches} if a row of one of them has more than {@code lossPositions} labelled
     * positions ({@link TrainingBatch#labelledPositionsPerRow}); null accepts everything.
     */
    public static void check(List<TrainingBatch> batches, Integer lossPositions, long ignoreIndex)
            throws TrainingException {
        if (lossPositions == null) {
            return;
        }
        for (int index = 0; index < batches.size(); index++) {
            int[] counts = batches.get(index).labelledPositionsPerRow(ignoreIndex);
            for (int row = 0; row < counts.length; row++) {
                if (counts[row] > lossPositions) {
                    throw new TrainingException("batch " + index + " row " + row + " has " + counts[row]
                            + " labelled positions, but this program computes the loss at only the first "
                            + lossPositions + " per row (manifest program.loss_positions=" + lossPositions
                            + "); it would train on part of the loss. Local text labels every token: this job "
                            + "needs an artifact exported without --loss-positions (or with at least "
                            + counts[row] + ")");
                }
            }
        }
    }
}
