package dev.pockettune.core.http;

import dev.pockettune.core.protocol.ResultResponse;

/**
 * What became of an upload. {@link #alreadySubmitted}: the coordinator answered 409
 * {@code already_submitted}, i.e. an earlier attempt whose answer was lost did land; that counts
 * as accepted (docs/coordinator.md, "Durability"), and {@link #response} is null.
 */
public final class UploadOutcome {
    public final ResultResponse response;
    public final boolean alreadySubmitted;
    public final long bytes;
    public final double seconds;

    UploadOutcome(ResultResponse response, boolean alreadySubmitted, long bytes, double seconds) {
        this.response = response;
        this.alreadySubmitted = alreadySubmitted;
        this.bytes = bytes;
        this.seconds = seconds;
    }
}
