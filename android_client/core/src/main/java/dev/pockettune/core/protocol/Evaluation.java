package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** A global adapter's score on the held-out split; after a failure only {@code error} and {@code seconds} are set. */
public final class Evaluation implements JsonModel {
    public final String metric;
    public final Number value;
    public final Number loss;
    public final Long numExamples;
    public final Number seconds;
    public final String error;
    public final JSONObject extra;

    private Evaluation(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        metric = f.optString("metric");
        value = f.optNumber("value");
        loss = f.optNumber("loss");
        numExamples = f.optLong("num_examples");
        seconds = f.optNumber("seconds");
        error = f.optString("error");
        extra = f.unknown();
    }

    public static Evaluation fromJson(JSONObject object, String path) {
        return new Evaluation(object, path);
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("metric", metric).put("value", value).put("loss", loss)
                .put("num_examples", numExamples).put("seconds", seconds).put("error", error).with(extra);
    }
}
