package dev.pockettune.core.json;

/**
 * A message from the coordinator (or a file it served) does not have the shape the protocol
 * promises: a required field is missing, or a field has the wrong JSON type.
 *
 * <p>Unchecked on purpose: it signals a coordinator/client version mismatch or a bug, which no
 * caller can repair locally; the message names the JSON path so the mismatch is easy to find.
 */
public class ProtocolFormatException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public ProtocolFormatException(String message) {
        super(message);
    }

    public ProtocolFormatException(String message, Throwable cause) {
        super(message, cause);
    }
}
