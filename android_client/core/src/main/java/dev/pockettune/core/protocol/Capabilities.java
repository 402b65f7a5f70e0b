package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import java.util.List;
import org.json.JSONObject;

/**
 * What a device can do: registration sends all five fields, a heartbeat any subset (so each
 * field is nullable, and a null one is left out of the JSON).
 */
public final class Capabilities implements JsonModel {
    /** The training runtime this client drives (the coordinator matches it to the artifact format). */
    public static final String RUNTIME_EXECUTORCH = "executorch";

    public final Long ramMb;
    public final Long cores;
    public final Number gflops;
    public final Number bandwidthMbps;
    public final List<String> runtimes;
    public final JSONObject extra;

    public Capabilities(Long ramMb, Long cores, Number gflops, Number bandwidthMbps, List<String> runtimes) {
        this(ramMb, cores, gflops, bandwidthMbps, runtimes, new JSONObject());
    }

    private Capabilities(Long ramMb, Long cores, Number gflops, Number bandwidthMbps, List<String> runtimes,
                         JSONObject extra) {
        this.ramMb = ramMb;
        this.cores = cores;
        this.gflops = gflops;
        this.bandwidthMbps = bandwidthMbps;
        this.runtimes = runtimes;
        this.extra = extra;
    }

    /** Only a new compute measurement (what a heartbeat usually carries). */
    public static Capabilities gflopsOnly(double gflops) {
        return new Capabilities(null, null, gflops, null, null);
    }

    public static Capabilities fromJson(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        Long ramMb = f.optLong("ram_mb");
        Long cores = f.optLong("cores");
        Number gflops = f.optNumber("gflops");
        Number bandwidth = f.optNumber("bandwidth_mbps");
        List<String> runtimes = f.optStringList("runtimes");
        return new Capabilities(ramMb, cores, gflops, bandwidth, runtimes, f.unknown());
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().putIfPresent("ram_mb", ramMb).putIfPresent("cores", cores)
                .putIfPresent("gflops", gflops).putIfPresent("bandwidth_mbps", bandwidthMbps)
                .putIfPresent("runtimes", runtimes).with(extra);
    }
}
