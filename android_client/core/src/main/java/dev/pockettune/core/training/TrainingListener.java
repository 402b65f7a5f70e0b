package dev.pockettune.core.training;

/** Progress of local training, for the app's UI and for cancelling when participation is withdrawn. */
public interface TrainingListener {
    void onStep(int step, int totalSteps, double loss);

    /** Checked between steps: true stops training (the task is then not uploaded). */
    default boolean isCancelled() {
        return false;
    }

    TrainingListener NONE = (step, total, loss) -> { };
}
