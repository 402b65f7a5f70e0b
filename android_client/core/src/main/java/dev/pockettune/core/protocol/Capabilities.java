package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import java.util.List;
import org.json.JSONObject;

/**
 * What a device can do: registration sends the five required fields and {@code optimizers}, a
 * heartbeat any subset (so each field is nullable, and a null one is left out of the JSON).
 *
 * <p>{@code optimizers} (optional in the protocol) lists the {@code train.optimizer} values the
 * device can train with ({@code "sgd"}, {@code "adamw"}); a device that leaves it out is taken to
 * support {@code "sgd"} only, and the coordinator offers no device a task with an optimizer
 * outside its list. The app fills it from its trainer's {@code Trainer.optimizers()}.
 *
 * <p>{@code privacy} (optional) lists what the device does to an update for a differentially
 * private job: {@link #PRIVACY_CLIP} and {@link #PRIVACY_LOCAL_NOISE} ({@code UpdateClipping});
 * a device that leaves it out is given no task of a DP job.
 */
public final class Capabilities implements JsonModel {
    /** The training runtime this client drives (the coordinator matches it to the artifact format). */
    public static final String RUNTIME_EXECUTORCH = "executorch";
    /** {@code privacy} step: the device clips its update's change to the job's clip norm. */
    public static final String PRIVACY_CLIP = "clip";
    /** {@code privacy} step: the device adds the Gaussian noise of local DP to its clipped change. */
    public static final String PRIVACY_LOCAL_NOISE = "local_noise";
    /** What this core does for a DP job (TaskRunner, UpdateClipping): both steps. */
    public static final List<String> PRIVACY_STEPS = List.of(PRIVACY_CLIP, PRIVACY_LOCAL_NOISE);

    public final Long ramMb;
    public final Long cores;
    public final Number gflops;
    public final Number bandwidthMbps;
    public final List<String> runtimes;
    /** The optimizers the device trains with; null: not sent (the coordinator assumes {@code ["sgd"]}). */
    public final List<String> optimizers;
    /** The update privacy steps the device implements; null: not sent (no DP job's tasks). */
    public final List<String> privacy;
    public final JSONObject extra;

    public Capabilities(Long ramMb, Long cores, Number gflops, Number bandwidthMbps, List<String> runtimes,
                        List<String> optimizers) {
        this(ramMb, cores, gflops, bandwidthMbps, runtimes, optimizers, null, new JSONObject());
    }

    public Capabilities(Long ramMb, Long cores, Number gflops, Number bandwidthMbps, List<String> runtimes,
                        List<String> optimizers, List<String> privacy) {
        this(ramMb, cores, gflops, bandwidthMbps, runtimes, optimizers, privacy, new JSONObject());
    }

    private Capabilities(Long ramMb, Long cores, Number gflops, Number bandwidthMbps, List<String> runtimes,
                         List<String> optimizers, List<String> privacy, JSONObject extra) {
        this.ramMb = ramMb;
        this.cores = cores;
        this.gflops = gflops;
        this.bandwidthMbps = bandwidthMbps;
        this.runtimes = runtimes;
        this.optimizers = optimizers;
        this.privacy = privacy;
        this.extra = extra;
    }

    /** Only a new compute measurement (what a heartbeat usually carries). */
    public static Capabilities gflopsOnly(double gflops) {
        return new Capabilities(null, null, gflops, null, null, null);
    }

    public static Capabilities fromJson(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        Long ramMb = f.optLong("ram_mb");
        Long cores = f.optLong("cores");
        Number gflops = f.optNumber("gflops");
        Number bandwidth = f.optNumber("bandwidth_mbps");
        List<String> runtimes = f.optStringList("runtimes");
        List<String> optimizers = f.optStringList("optimizers");
        List<String> privacy = f.optStringList("privacy");
        return new Capabilities(ramMb, cores, gflops, bandwidth, runtimes, optimizers, privacy, f.unknown());
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().putIfPresent("ram_mb", ramMb).putIfPresent("cores", cores)
                .putIfPresent("gflops", gflops).putIfPresent("bandwidth_mbps", bandwidthMbps)
                .putIfPresent("runtimes", runtimes).putIfPresent("optimizers", optimizers)
                .putIfPresent("privacy", privacy).with(extra);
    }
}
