package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import java.util.List;
import org.json.JSONObject;

/** {@code GET /jobs/<id>/rounds/<n>} (admin): a round with every device's task and accepted update. */
public final class RoundDetail extends RoundSummary implements JsonModel {
    public final long jobId;
    public final List<RoundTask> tasks;
    public final JSONObject extra;

    private RoundDetail(JsonFields f) {
        super(f);
        jobId = f.requireLong("job_id");
        tasks = f.requireList("tasks", RoundTask::new);
        extra = f.unknown();
    }

    public static RoundDetail fromJson(JSONObject object) {
        return new RoundDetail(JsonFields.of(object, "round"));
    }

    @Override
    public JSONObject toJson() {
        JsonOut out = new JsonOut().put("job_id", jobId);
        writeTo(out);
        return out.put("tasks", JsonOut.array(tasks)).with(extra);
    }

    /** One device's task in the round; {@link #update} is null until its result is accepted. */
    public static final class RoundTask implements JsonModel {
        public final long taskId;
        public final long deviceId;
        public final String deviceName;
        public final String status;
        public final String assignedAt;
        public final String submittedAt;
        public final String arm;
        /** The device's tier in heterogeneous jobs (kept as sent), else null. */
        public final JSONObject tier;
        public final Long localSteps;
        public final AcceptedUpdate update;
        public final JSONObject extra;

        RoundTask(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            taskId = f.requireLong("task_id");
            deviceId = f.requireLong("device_id");
            deviceName = f.requireString("device_name");
            status = f.requireString("status");
            assignedAt = f.requireString("assigned_at");
            submittedAt = f.optString("submitted_at");
            arm = f.optString("arm");
            tier = f.optObject("tier");
            localSteps = f.optLong("local_steps");
            update = f.opt("update", AcceptedUpdate::new);
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("task_id", taskId).put("device_id", deviceId).put("device_name", deviceName)
                    .put("status", status).put("assigned_at", assignedAt).put("submitted_at", submittedAt)
                    .put("arm", arm).put("tier", tier).put("local_steps", localSteps).put("update", update)
                    .with(extra);
        }
    }

    /** An accepted update as the admin sees it ({@code url}: its blob, readable by the admin only). */
    public static final class AcceptedUpdate implements JsonModel {
        public final long updateId;
        public final String sha256;
        public final long size;
        public final String url;
        public final long numExamples;
        public final Number lossBefore;
        public final Number lossAfter;
        public final Number trainSeconds;
        public final long bytesDownloaded;
        public final long bytesUploaded;
        public final Number deltaNorm;
        /** The highest LoRA rank the update uses, read by the coordinator from its tensors (null for old updates). */
        public final Long effectiveRank;
        public final String receivedAt;
        public final DeviceMetrics metrics;
        public final JSONObject extra;

        AcceptedUpdate(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            updateId = f.requireLong("update_id");
            sha256 = f.requireString("sha256");
            size = f.requireLong("size");
            url = f.requireString("url");
            numExamples = f.requireLong("num_examples");
            lossBefore = f.requireNumber("loss_before");
            lossAfter = f.requireNumber("loss_after");
            trainSeconds = f.requireNumber("train_seconds");
            bytesDownloaded = f.requireLong("bytes_downloaded");
            bytesUploaded = f.requireLong("bytes_uploaded");
            deltaNorm = f.requireNumber("delta_norm");
            effectiveRank = f.optLong("effective_rank");
            receivedAt = f.requireString("received_at");
            metrics = f.opt("metrics", DeviceMetrics::fromJson);
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("update_id", updateId).put("sha256", sha256).put("size", size)
                    .put("url", url).put("num_examples", numExamples).put("loss_before", lossBefore)
                    .put("loss_after", lossAfter).put("train_seconds", trainSeconds)
                    .put("bytes_downloaded", bytesDownloaded).put("bytes_uploaded", bytesUploaded)
                    .put("delta_norm", deltaNorm).put("effective_rank", effectiveRank)
                    .put("received_at", receivedAt).put("metrics", metrics)
                    .with(extra);
        }
    }
}
