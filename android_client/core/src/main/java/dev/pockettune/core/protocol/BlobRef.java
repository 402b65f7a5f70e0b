package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/**
 * A content-addressed blob: {@code sha256}, {@code size} and a {@code url} relative to the
 * coordinator's base URL. {@code format} is present on artifacts ({@code "executorch"}) and
 * absent on adapter {@code .ptd} refs inside jobs.
 */
public final class BlobRef implements JsonModel {
    public final String format;
    public final String sha256;
    public final long size;
    public final String url;
    public final JSONObject extra;

    private BlobRef(JsonFields f) {
        format = f.optString("format");
        sha256 = f.requireString("sha256");
        size = f.requireLong("size");
        url = f.requireString("url");
        extra = f.unknown();
    }

    public static BlobRef fromJson(JSONObject object, String path) {
        return new BlobRef(JsonFields.of(object, path));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().putIfPresent("format", format).put("sha256", sha256).put("size", size)
                .put("url", url).with(extra);
    }
}
