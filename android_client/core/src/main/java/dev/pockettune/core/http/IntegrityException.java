package dev.pockettune.core.http;

/**
 * Downloaded bytes do not have the sha256 the coordinator promised (even after a clean refetch),
 * or the task and the manifest disagree about a file: the device must not train on them.
 */
public class IntegrityException extends CoordinatorException {
    private static final long serialVersionUID = 1L;

    public IntegrityException(String message) {
        super(message);
    }
}
