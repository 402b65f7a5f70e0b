package dev.pockettune.core.http;

/**
 * The clock and sleep the retry loops use. Injected so tests can check backoff schedules and
 * give-up deadlines in microseconds of real time instead of minutes.
 */
public interface Timing {
    long monotonicMillis();

    void sleep(long millis) throws InterruptedException;

    Timing SYSTEM = new Timing() {
        @Override
        public long monotonicMillis() {
            return System.nanoTime() / 1_000_000L;
        }

        @Override
        public void sleep(long millis) throws InterruptedException {
            if (millis > 0) {
                Thread.sleep(millis);
            }
        }
    };
}
