package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** {@code POST /devices/heartbeat}, 200. */
public final class HeartbeatResponse implements JsonModel {
    public final long deviceId;
    public final String lastSeen;
    public final boolean online;
    public final Number heartbeatIntervalS;
    public final JSONObject extra;

    private HeartbeatResponse(JsonFields f) {
        deviceId = f.requireLong("device_id");
        lastSeen = f.requireString("last_seen");
        online = f.requireBoolean("online");
        heartbeatIntervalS = f.requireNumber("heartbeat_interval_s");
        extra = f.unknown();
    }

    public static HeartbeatResponse fromJson(JSONObject object) {
        return new HeartbeatResponse(JsonFields.of(object, "heartbeat_response"));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("device_id", deviceId).put("last_seen", lastSeen).put("online", online)
                .put("heartbeat_interval_s", heartbeatIntervalS).with(extra);
    }
}
