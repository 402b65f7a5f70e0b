package dev.pockettune.core.http;

import java.util.Random;

/**
 * Capped exponential backoff with jitter, the same schedule as the Python device
 * ({@code fleet/transport.py}): first wait {@code initialMillis}, doubling up to {@code maxMillis},
 * each wait multiplied by a random factor in [1 - jitter, 1 + jitter] so that a fleet of phones
 * that lost the coordinator at the same moment does not come back in lockstep.
 *
 * <p>{@code giveUpAfterMillis <= 0} retries for ever, which suits a background worker that the
 * OS stops anyway; tests and the foreground UI use a bound.
 */
public final class RetryPolicy {
    public final long initialMillis;
    public final long maxMillis;
    public final double jitter;
    public final long giveUpAfterMillis;
    /** Upper bound on a server-requested Retry-After, so a bad header cannot park the device for days. */
    public final long maxRetryAfterMillis;

    public RetryPolicy(long initialMillis, long maxMillis, double jitter, long giveUpAfterMillis,
                       long maxRetryAfterMillis) {
        if (initialMillis <= 0 || maxMillis < initialMillis || jitter < 0 || jitter >= 1) {
            throw new IllegalArgumentException("invalid retry policy");
        }
        this.initialMillis = initialMillis;
        this.maxMillis = maxMillis;
        this.jitter = jitter;
        this.giveUpAfterMillis = giveUpAfterMillis;
        this.maxRetryAfterMillis = maxRetryAfterMillis;
    }

    /** 0.5 s doubling to 10 s, +-25 %, never giving up (a background device). */
    public static RetryPolicy forever() {
        return new RetryPolicy(500, 10_000, 0.25, 0, 300_000);
    }

    /** The same schedule, giving up once {@code giveUpAfterMillis} would be exceeded. */
    public static RetryPolicy boundedBy(long giveUpAfterMillis) {
        return new RetryPolicy(500, 10_000, 0.25, giveUpAfterMillis, 300_000);
    }

    public RetryPolicy withDelays(long initialMillis, long maxMillis) {
        return new RetryPolicy(initialMillis, maxMillis, jitter, giveUpAfterMillis, maxRetryAfterMillis);
    }

    /** The wait before retry number {@code attempt} (0 for the first retry). */
    public long delayMillis(int attempt, Random random) {
        double base = initialMillis * Math.pow(2, Math.min(attempt, 30));
        base = Math.min(base, maxMillis);
        double factor = 1.0 + jitter * (2 * random.nextDouble() - 1);
        return Math.max(1L, Math.round(base * factor));
    }

    /** True when waiting {@code waitMillis} more would pass the give-up bound. */
    public boolean exhausted(long elapsedMillis, long waitMillis) {
        return giveUpAfterMillis > 0 && elapsedMillis + waitMillis > giveUpAfterMillis;
    }

    /** A server's Retry-After, capped. */
    public long serverDelay(long retryAfterMillis) {
        return Math.max(0, Math.min(retryAfterMillis, maxRetryAfterMillis));
    }
}
