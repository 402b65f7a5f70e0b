package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** {@code GET /health}: whether the coordinator and its database answer. */
public final class HealthResponse implements JsonModel {
    public final String status;
    public final String service;
    public final String database;
    public final String schemaRevision;
    public final String time;
    public final JSONObject extra;

    private HealthResponse(JsonFields f) {
        status = f.requireString("status");
        service = f.requireString("service");
        database = f.requireString("database");
        schemaRevision = f.optString("schema_revision");
        time = f.requireString("time");
        extra = f.unknown();
    }

    public static HealthResponse fromJson(JSONObject object, String path) {
        return new HealthResponse(JsonFields.of(object, path));
    }

    public static HealthResponse fromJson(JSONObject object) {
        return fromJson(object, "health");
    }

    public boolean ok() {
        return "ok".equals(status);
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("status", status).put("service", service).put("database", database)
                .put("schema_revision", schemaRevision).put("time", time).with(extra);
    }
}
