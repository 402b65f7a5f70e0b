package dev.pockettune.core.http;

import dev.pockettune.core.protocol.ErrorCode;

/**
 * The coordinator answered with an error body ({@code status}, {@code code}, {@code message}).
 * A 4xx is its considered answer and is raised at once; a 5xx only once retries ran out.
 */
public class ProtocolException extends CoordinatorException {
    private static final long serialVersionUID = 1L;

    public final int status;
    /** The error code from the body ({@code http_error} when the body was not the protocol's). */
    public final String code;
    public final String serverMessage;

    public ProtocolException(int status, String code, String serverMessage) {
        super(status + " " + code + ": " + serverMessage);
        this.status = status;
        this.code = code;
        this.serverMessage = serverMessage;
    }

    /** The known code, or null if this client does not know it. */
    public ErrorCode errorCode() {
        return ErrorCode.of(code);
    }

    public boolean is(ErrorCode expected) {
        return expected.code.equals(code);
    }
}
