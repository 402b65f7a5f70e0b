package dev.pockettune.core.testing;

import dev.pockettune.core.http.Timing;
import java.util.ArrayList;
import java.util.List;

/** A clock that only moves when the code under test sleeps; records every sleep. */
public final class FakeTiming implements Timing {
    public final List<Long> sleeps = new ArrayList<>();
    private long now;

    @Override
    public synchronized long monotonicMillis() {
        return now;
    }

    @Override
    public synchronized void sleep(long millis) {
        sleeps.add(millis);
        now += millis;
    }
}
