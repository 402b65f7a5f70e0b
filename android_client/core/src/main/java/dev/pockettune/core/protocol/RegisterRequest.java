package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** {@code POST /devices}: enrol a device with the coordinator's enrollment key. */
public final class RegisterRequest implements JsonModel {
    public final String enrollmentKey;
    public final String name;
    public final String platform;
    public final Capabilities capabilities;
    /** Battery percentage 0..100, or null when unknown (left out of the request). */
    public final Number battery;
    public final Boolean charging;
    public final JSONObject extra;

    public RegisterRequest(String enrollmentKey, String name, String platform, Capabilities capabilities,
                           Number battery, Boolean charging) {
        this.enrollmentKey = enrollmentKey;
        this.name = name;
        this.platform = platform;
        this.capabilities = capabilities;
        this.battery = battery;
        this.charging = charging;
        this.extra = new JSONObject();
    }

    private RegisterRequest(JsonFields f) {
        enrollmentKey = f.requireString("enrollment_key");
        name = f.requireString("name");
        platform = f.requireString("platform");
        capabilities = f.require("capabilities", Capabilities::fromJson);
        battery = f.optNumber("battery");
        charging = f.optBoolean("charging");
        extra = f.unknown();
    }

    public static RegisterRequest fromJson(JSONObject object) {
        return new RegisterRequest(JsonFields.of(object, "register_request"));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("enrollment_key", enrollmentKey).put("name", name).put("platform", platform)
                .put("capabilities", capabilities).putIfPresent("battery", battery)
                .putIfPresent("charging", charging).with(extra);
    }
}
