package dev.pockettune.core.device;

import dev.pockettune.core.http.TransferListener;
import dev.pockettune.core.training.TrainingListener;

/** Phases and progress of a task, for the app's notification and screen. */
public interface TaskListener extends TransferListener, TrainingListener {
    enum Phase { DOWNLOADING, TOKENIZING, TRAINING, UPLOADING, DONE }

    void onPhase(Phase phase, String detail);

    TaskListener NONE = new TaskListener() {
        @Override
        public void onPhase(Phase phase, String detail) {
        }

        @Override
        public void onProgress(String what, long done, long total) {
        }

        @Override
        public void onStep(int step, int totalSteps, double loss) {
        }
    };
}
