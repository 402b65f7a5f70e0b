package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** Every 4xx/5xx body: {@code {"error": {"code", "message"}}}. */
public final class ErrorResponse implements JsonModel {
    public final String code;
    public final String message;
    private final JSONObject errorExtra;
    public final JSONObject extra;

    private ErrorResponse(JsonFields f) {
        JsonFields error = JsonFields.of(f.requireObject("error"), f.path() + ".error");
        code = error.requireString("code");
        message = error.requireString("message");
        errorExtra = error.unknown();
        extra = f.unknown();
    }

    public static ErrorResponse fromJson(JSONObject object) {
        return new ErrorResponse(JsonFields.of(object, "error_response"));
    }

    @Override
    public JSONObject toJson() {
        JSONObject error = new JsonOut().put("code", code).put("message", message).with(errorExtra);
        return new JsonOut().put("error", error).with(extra);
    }
}
