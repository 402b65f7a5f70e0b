package dev.pockettune.core.http;

/** The coordinator could not be reached (or kept failing) for longer than the retry policy allows. */
public class CoordinatorUnavailableException extends CoordinatorException {
    private static final long serialVersionUID = 1L;

    public CoordinatorUnavailableException(String message, Throwable cause) {
        super(message, cause);
    }
}
