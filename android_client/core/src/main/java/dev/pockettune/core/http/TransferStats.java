package dev.pockettune.core.http;

/** Bytes and seconds moved in each direction: what the device reports with its result. Thread-safe. */
public final class TransferStats {
    private long bytesDown;
    private double secondsDown;
    private long bytesUp;
    private double secondsUp;

    public synchronized void addDown(long bytes, double seconds) {
        bytesDown += bytes;
        secondsDown += seconds;
    }

    public synchronized void addUp(long bytes, double seconds) {
        bytesUp += bytes;
        secondsUp += seconds;
    }

    public synchronized long bytesDown() {
        return bytesDown;
    }

    public synchronized double secondsDown() {
        return secondsDown;
    }

    public synchronized long bytesUp() {
        return bytesUp;
    }

    public synchronized double secondsUp() {
        return secondsUp;
    }
}
