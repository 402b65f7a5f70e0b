package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import java.util.List;
import org.json.JSONObject;

/** One device as the admin API lists it ({@code GET /devices}, {@code GET /devices/<id>}). */
public final class DeviceInfo implements JsonModel {
    public final long deviceId;
    public final String name;
    public final String platform;
    public final Capabilities capabilities;
    public final Number battery;
    public final Boolean charging;
    public final String registeredAt;
    public final String lastSeen;
    public final boolean online;
    public final JSONObject extra;

    private DeviceInfo(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        deviceId = f.requireLong("device_id");
        name = f.requireString("name");
        platform = f.requireString("platform");
        capabilities = f.require("capabilities", Capabilities::fromJson);
        battery = f.optNumber("battery");
        charging = f.optBoolean("charging");
        registeredAt = f.requireString("registered_at");
        lastSeen = f.optString("last_seen");
        online = f.requireBoolean("online");
        extra = f.unknown();
    }

    public static DeviceInfo fromJson(JSONObject object, String path) {
        return new DeviceInfo(object, path);
    }

    /** {@code GET /devices}: {@code {"devices": [...]}}. */
    public static List<DeviceInfo> listFromJson(JSONObject object) {
        return JsonFields.of(object, "device_list").requireList("devices", DeviceInfo::new);
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("device_id", deviceId).put("name", name).put("platform", platform)
                .put("capabilities", capabilities).put("battery", battery).put("charging", charging)
                .put("registered_at", registeredAt).put("last_seen", lastSeen).put("online", online)
                .with(extra);
    }

    public static JSONObject listToJson(List<DeviceInfo> devices) {
        return new JsonOut().put("devices", JsonOut.array(devices)).build();
    }
}
