package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** {@code POST /devices/heartbeat}: every field optional; absent ones are not sent. */
public final class HeartbeatRequest implements JsonModel {
    public final Number battery;
    public final Boolean charging;
    public final Capabilities capabilities;
    public final JSONObject extra;

    public HeartbeatRequest(Number battery, Boolean charging, Capabilities capabilities) {
        this.battery = battery;
        this.charging = charging;
        this.capabilities = capabilities;
        this.extra = new JSONObject();
    }

    private HeartbeatRequest(JsonFields f) {
        battery = f.optNumber("battery");
        charging = f.optBoolean("charging");
        capabilities = f.opt("capabilities", Capabilities::fromJson);
        extra = f.unknown();
    }

    public static HeartbeatRequest fromJson(JSONObject object) {
        return new HeartbeatRequest(JsonFields.of(object, "heartbeat_request"));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().putIfPresent("battery", battery).putIfPresent("charging", charging)
                .putIfPresent("capabilities", capabilities).with(extra);
    }
}
