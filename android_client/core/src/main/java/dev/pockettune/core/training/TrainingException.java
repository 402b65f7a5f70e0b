package dev.pockettune.core.training;

/** Training could not run or produced something unusable (runtime error, bad program, NaN loss). */
public class TrainingException extends Exception {
    private static final long serialVersionUID = 1L;

    public TrainingException(String message) {
        super(message);
    }

    public TrainingException(String message, Throwable cause) {
        super(message, cause);
    }
}
