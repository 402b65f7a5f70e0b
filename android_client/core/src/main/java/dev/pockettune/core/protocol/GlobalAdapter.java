package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** A round's global adapter: its {@code .ptd} blob and the PEFT zip the admin can download. */
public final class GlobalAdapter implements JsonModel {
    public final long round;
    public final long numUpdates;
    public final long numExamples;
    public final BlobRef ptd;
    public final String peftZipUrl;
    public final JSONObject extra;

    private GlobalAdapter(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        round = f.requireLong("round");
        numUpdates = f.requireLong("num_updates");
        numExamples = f.requireLong("num_examples");
        ptd = f.require("ptd", BlobRef::fromJson);
        peftZipUrl = f.requireString("peft_zip_url");
        extra = f.unknown();
    }

    public static GlobalAdapter fromJson(JSONObject object, String path) {
        return new GlobalAdapter(object, path);
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("round", round).put("num_updates", numUpdates).put("num_examples", numExamples)
                .put("ptd", ptd).put("peft_zip_url", peftZipUrl).with(extra);
    }
}
