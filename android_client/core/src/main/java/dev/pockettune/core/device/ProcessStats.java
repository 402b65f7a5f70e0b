package dev.pockettune.core.device;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

/**
 * Peak resident memory of this process ({@code VmHWM} in {@code /proc/self/status}), reported as
 * the {@code peak_rss_mb} metric. Linux and Android both have it; elsewhere the metric is omitted.
 */
public final class ProcessStats {
    private ProcessStats() {
    }

    /** Megabytes, or null when not available. */
    public static Double peakRssMb() {
        return peakRssMb(Paths.get("/proc/self/status"));
    }

    static Double peakRssMb(Path status) {
        try {
            for (String line : new String(Files.readAllBytes(status), StandardCharsets.UTF_8).split("\n")) {
                if (line.startsWith("VmHWM:")) {
                    String[] parts = line.substring(6).trim().split("\\s+");
                    return Long.parseLong(parts[0]) / 1024.0;   // kB
                }
            }
        } catch (IOException | RuntimeException ignored) {
            // not Linux, or a kernel without the field: the metric is optional
        }
        return null;
    }
}
