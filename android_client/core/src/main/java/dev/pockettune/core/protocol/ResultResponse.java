package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/** {@code POST /tasks/<id>/result}, 201: the stored update and the round's state after it. */
public final class ResultResponse implements JsonModel {
    public final long updateId;
    public final long taskId;
    public final long jobId;
    public final long round;
    public final String sha256;
    public final long size;
    /** L2 norm of the update's change from the round's start adapter, as the coordinator computed it. */
    public final Number deltaNorm;
    public final long acceptedUpdates;
    public final String roundStatus;
    public final JSONObject extra;

    private ResultResponse(JsonFields f) {
        updateId = f.requireLong("update_id");
        taskId = f.requireLong("task_id");
        jobId = f.requireLong("job_id");
        round = f.requireLong("round");
        sha256 = f.requireString("sha256");
        size = f.requireLong("size");
        deltaNorm = f.requireNumber("delta_norm");
        acceptedUpdates = f.requireLong("accepted_updates");
        roundStatus = f.requireString("round_status");
        extra = f.unknown();
    }

    public static ResultResponse fromJson(JSONObject object) {
        return new ResultResponse(JsonFields.of(object, "result_response"));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("update_id", updateId).put("task_id", taskId).put("job_id", jobId)
                .put("round", round).put("sha256", sha256).put("size", size).put("delta_norm", deltaNorm)
                .put("accepted_updates", acceptedUpdates).put("round_status", roundStatus).with(extra);
    }
}
