package dev.pockettune.core.device;

/**
 * The device's own compute measurement for {@code capabilities.gflops}: a float32 matrix multiply
 * timed for a fraction of a second. It ranks phones for the coordinator's tier choice; it is not
 * the runtime's speed (XNNPACK is faster than plain Java), which the app reports per task instead.
 */
public final class MatmulBenchmark {
    private MatmulBenchmark() {
    }

    /** GFLOP/s of an n x n matmul repeated for about {@code millis}. */
    public static double gflops(int n, long millis) {
        float[] a = new float[n * n];
        float[] b = new float[n * n];
        float[] c = new float[n * n];
        for (int i = 0; i < a.length; i++) {
            a[i] = (i % 7) * 0.25f;
            b[i] = (i % 5) * 0.5f;
        }
        multiply(a, b, c, n);   // warm-up (JIT)
        long deadline = System.nanoTime() + millis * 1_000_000L;
        long started = System.nanoTime();
        int rounds = 0;
        do {
            multiply(a, b, c, n);
            rounds++;
        } while (System.nanoTime() < deadline);
        double seconds = (System.nanoTime() - started) / 1e9;
        double flops = 2.0 * n * n * n * rounds;
        return c[0] >= 0 ? flops / seconds / 1e9 : 0;   // read c so the work is not optimized away
    }

    private static void multiply(float[] a, float[] b, float[] c, int n) {
        java.util.Arrays.fill(c, 0f);
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < n; k++) {
                float aik = a[i * n + k];
                int bRow = k * n;
                int cRow = i * n;
                for (int j = 0; j < n; j++) {
                    c[cRow + j] += aik * b[bRow + j];
                }
            }
        }
    }
}
