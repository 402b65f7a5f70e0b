package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** {@code POST /devices}, 201: the device's id and bearer token (shown once: the client must keep it). */
public final class RegisterResponse implements JsonModel {
    public final long deviceId;
    public final String token;
    public final Number heartbeatIntervalS;
    public final JSONObject extra;

    private RegisterResponse(JsonFields f) {
        deviceId = f.requireLong("device_id");
        token = f.requireString("token");
        heartbeatIntervalS = f.requireNumber("heartbeat_interval_s");
        extra = f.unknown();
    }

    public static RegisterResponse fromJson(JSONObject object) {
        return new RegisterResponse(JsonFields.of(object, "register_response"));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("device_id", deviceId).put("token", token)
                .put("heartbeat_interval_s", heartbeatIntervalS).with(extra);
    }
}
