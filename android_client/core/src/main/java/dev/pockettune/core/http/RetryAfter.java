package dev.pockettune.core.http;

import java.time.Instant;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;

/**
 * Parses an HTTP {@code Retry-After} header: delta-seconds ({@code "10"}) or an HTTP-date.
 * The coordinator sends seconds on 204 (no task for this device now) and a proxy may send either
 * on 503; both mean "do not ask before then".
 */
public final class RetryAfter {
    private RetryAfter() {
    }

    /** Milliseconds to wait, or -1 when the header is absent or unreadable. */
    public static long millis(String header, Instant now) {
        if (header == null) {
            return -1;
        }
        String value = header.trim();
        if (value.isEmpty()) {
            return -1;
        }
        try {
            double seconds = Double.parseDouble(value);
            if (seconds < 0 || Double.isNaN(seconds) || Double.isInfinite(seconds)) {
                return -1;
            }
            return Math.round(seconds * 1000);
        } catch (NumberFormatException notSeconds) {
            try {
                Instant at = ZonedDateTime.parse(value, DateTimeFormatter.RFC_1123_DATE_TIME).toInstant();
                return Math.max(0, at.toEpochMilli() - now.toEpochMilli());
            } catch (DateTimeParseException notADate) {
                return -1;
            }
        }
    }
}
