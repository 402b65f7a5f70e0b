package dev.pockettune.core.http;

import java.io.IOException;

/** Base of what talking to the coordinator can fail with; checked, because a phone must handle it. */
public class CoordinatorException extends IOException {
    private static final long serialVersionUID = 1L;

    public CoordinatorException(String message) {
        super(message);
    }

    public CoordinatorException(String message, Throwable cause) {
        super(message, cause);
    }
}
