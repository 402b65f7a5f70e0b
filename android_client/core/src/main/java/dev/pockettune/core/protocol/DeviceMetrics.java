package dev.pockettune.core.protocol;

import dev.pockettune.core.json.Json;
import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import dev.pockettune.core.json.ProtocolFormatException;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import org.json.JSONObject;

/**
 * {@code meta.metrics}: what the device measured while running a task. Every key is optional and
 * the coordinator refuses unknown ones, so the keys are an explicit list ({@link Key}) and each is
 * three-state: absent, null (only {@code previous_upload_seconds} may be), or a value.
 */
public final class DeviceMetrics implements JsonModel {
    /** The keys the coordinator accepts (docs/coordinator.md, "Device metrics"). */
    public enum Key {
        STEPS("steps", true, false),
        FLOPS_PER_STEP("flops_per_step", false, false),
        COMPUTE_SECONDS("compute_seconds", false, false),
        ACHIEVED_GFLOPS("achieved_gflops", false, false),
        PEAK_GFLOPS("peak_gflops", false, false),
        FLOP_UTILIZATION("flop_utilization", false, false),
        DOWNLOAD_SECONDS("download_seconds", false, false),
        PREVIOUS_UPLOAD_SECONDS("previous_upload_seconds", false, true),
        PEAK_RSS_MB("peak_rss_mb", false, false),
        SLOWDOWN("slowdown", false, false),
        VIRTUAL_SECONDS("virtual_seconds", false, false),
        /** The loss on the batch held out of training, before the task's first step (FedSpine). */
        PROBE_LOSS_BEFORE("probe_loss_before", false, false),
        /** The same batch's loss after the task's last step. */
        PROBE_LOSS_AFTER("probe_loss_after", false, false);

        public final String json;
        public final boolean integer;
        public final boolean nullable;

        Key(String json, boolean integer, boolean nullable) {
            this.json = json;
            this.integer = integer;
            this.nullable = nullable;
        }

        static Key byName(String name) {
            for (Key key : values()) {
                if (key.json.equals(name)) {
                    return key;
                }
            }
            return null;
        }
    }

    private final Map<Key, Object> values = new LinkedHashMap<>();   // Number or JSONObject.NULL
    private JSONObject extra = new JSONObject();

    public DeviceMetrics() {
    }

    /** Sets a measurement; a null value is allowed only where the protocol says so. */
    public DeviceMetrics set(Key key, Number value) {
        if (value == null) {
            if (!key.nullable) {
                throw new IllegalArgumentException(key.json + " may not be null");
            }
            values.put(key, JSONObject.NULL);
            return this;
        }
        if (key.integer && !Json.isIntegral(value)) {
            throw new IllegalArgumentException(key.json + " must be an integer");
        }
        if (!key.integer) {
            double d = value.doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d) || d < 0) {
                throw new IllegalArgumentException(key.json + " must be a finite number >= 0, got " + d);
            }
        }
        values.put(key, value);
        return this;
    }

    public boolean has(Key key) {
        return values.containsKey(key);
    }

    /** The value, or null when absent or null. */
    public Number get(Key key) {
        Object value = values.get(key);
        return value instanceof Number ? (Number) value : null;
    }

    public static DeviceMetrics fromJson(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        DeviceMetrics metrics = new DeviceMetrics();
        Iterator<String> names = object.keys();
        while (names.hasNext()) {
            Key key = Key.byName(names.next());
            if (key == null) {
                continue;
            }
            if (key.integer) {
                Long value = f.optLong(key.json);
                metrics.values.put(key, value == null ? JSONObject.NULL : value);
            } else {
                Number value = f.optNumber(key.json);
                if (value == null && !key.nullable) {
                    throw new ProtocolFormatException(path + "." + key.json + " must not be null");
                }
                metrics.values.put(key, value == null ? JSONObject.NULL : value);
            }
        }
        metrics.extra = f.unknown();
        return metrics;
    }

    @Override
    public JSONObject toJson() {
        JsonOut out = new JsonOut();
        for (Map.Entry<Key, Object> entry : values.entrySet()) {
            out.put(entry.getKey().json, entry.getValue() == JSONObject.NULL ? null : entry.getValue());
        }
        return out.with(extra);
    }
}
