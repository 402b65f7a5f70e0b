package dev.pockettune.core.device;

/** The user's text yields not even one full batch for this artifact: nothing to train on. */
public class NoLocalDataException extends Exception {
    private static final long serialVersionUID = 1L;

    public NoLocalDataException(String message) {
        super(message);
    }
}
