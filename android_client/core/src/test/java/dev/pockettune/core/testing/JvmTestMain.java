package dev.pockettune.core.testing;

import java.util.ArrayList;
import java.util.List;
import org.junit.runner.JUnitCore;
import org.junit.runner.Result;
import org.junit.runner.notification.Failure;
import org.junit.internal.TextListener;

/**
 * Runs the named JUnit 4 classes with {@link JUnitCore} and ends with a plain
 * {@code "N passed, N failed"} line. Exits non-zero on a failure, and also when nothing ran or a
 * test was ignored: a skipped check must never read as a pass.
 */
public final class JvmTestMain {
    private JvmTestMain() {
    }

    public static void main(String[] args) throws ClassNotFoundException {
        List<Class<?>> classes = new ArrayList<>();
        for (String name : args) {
            classes.add(Class.forName(name));
        }
        JUnitCore core = new JUnitCore();
        core.addListener(new TextListener(System.out));
        Result result = core.run(classes.toArray(new Class<?>[0]));
        int failed = result.getFailureCount();
        int passed = result.getRunCount() - failed;
        for (Failure failure : result.getFailures()) {
            System.out.println("FAILED: " + failure.getTestHeader());
        }
        System.out.println("jvm tests: " + passed + " passed, " + failed + " failed, " + result.getIgnoreCount() + " skipped");
        boolean ok = failed == 0 && result.getRunCount() > 0 && result.getIgnoreCount() == 0;
        System.exit(ok ? 0 : 1);
    }
}
