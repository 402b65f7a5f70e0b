package dev.pockettune.core.protocol;

/**
 * Every error code the coordinator sends, with its HTTP status ({@code tests/protocol/error_codes.json};
 * a JVM test keeps this list and that file equal). The client branches on a few of them:
 * {@link #ALREADY_SUBMITTED} after a lost answer means the upload landed.
 */
public enum ErrorCode {
    BAD_REQUEST("bad_request", 400),
    INVALID_JSON("invalid_json", 400),
    MISSING_PART("missing_part", 400),
    MALFORMED_UPDATE("malformed_update", 400),
    UNAUTHORIZED("unauthorized", 401),
    FORBIDDEN("forbidden", 403),
    NOT_FOUND("not_found", 404),
    METHOD_NOT_ALLOWED("method_not_allowed", 405),
    ROUND_CLOSED("round_closed", 409),
    LATE("late", 409),
    ALREADY_SUBMITTED("already_submitted", 409),
    JOB_NOT_RUNNING("job_not_running", 409),
    // split jobs (the client does not run them yet; listed so that it recognizes them)
    NOT_JOINED("not_joined", 403),
    NOT_IN_STEP("not_in_step", 403),
    NOT_IN_AVERAGING("not_in_averaging", 403),
    STEP_CLOSED("step_closed", 409),
    STEP_NOT_READY("step_not_ready", 409),
    NO_SUCH_STEP("no_such_step", 409),
    NO_SUCH_AVERAGING("no_such_averaging", 409),
    DROPPED("dropped", 409),
    JOB_FULL("job_full", 409),
    PRECONDITION_FAILED("precondition_failed", 412),
    PAYLOAD_TOO_LARGE("payload_too_large", 413),
    UPDATE_TOO_LARGE("update_too_large", 413),
    RANGE_NOT_SATISFIABLE("range_not_satisfiable", 416),
    INVALID_FIELD("invalid_field", 422),
    TENSOR_NAMES("tensor_names", 422),
    TENSOR_SHAPE("tensor_shape", 422),
    TENSOR_DTYPE("tensor_dtype", 422),
    NON_FINITE("non_finite", 422),
    NORM_EXCEEDED("norm_exceeded", 422),
    BAD_FEATURES("bad_features", 422),
    BAD_LABELS("bad_labels", 422),
    BAD_ADAPTER("bad_adapter", 422),
    INTERNAL_ERROR("internal_error", 500),
    UNAVAILABLE("unavailable", 503);

    public final String code;
    public final int status;

    ErrorCode(String code, int status) {
        this.code = code;
        this.status = status;
    }

    /** The known code, or null for one this client does not know (a newer coordinator). */
    public static ErrorCode of(String code) {
        for (ErrorCode value : values()) {
            if (value.code.equals(code)) {
                return value;
            }
        }
        return null;
    }
}
