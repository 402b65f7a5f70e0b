package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/**
 * The {@code meta} part of {@code POST /tasks/<id>/result}. The coordinator accepts exactly these
 * fields (and refuses any other), so a client-built meta never carries extras.
 */
public final class ResultMeta implements JsonModel {
    public final long numExamples;
    public final Number lossBefore;
    public final Number lossAfter;
    public final Number trainSeconds;
    public final long bytesDownloaded;
    public final long bytesUploaded;
    /**
     * The sha256 of the adapter the task started training from (the task's {@code adapter.sha256}):
     * the coordinator refuses an update made for another task or round.
     */
    public final String startAdapterSha256;
    /** Optional hardware measurements; null: not sent. */
    public final DeviceMetrics metrics;
    public final JSONObject extra;

    public ResultMeta(long numExamples, double lossBefore, double lossAfter, double trainSeconds,
                      long bytesDownloaded, long bytesUploaded, String startAdapterSha256, DeviceMetrics metrics) {
        this.numExamples = numExamples;
        this.lossBefore = lossBefore;
        this.lossAfter = lossAfter;
        this.trainSeconds = trainSeconds;
        this.bytesDownloaded = bytesDownloaded;
        this.bytesUploaded = bytesUploaded;
        this.startAdapterSha256 = startAdapterSha256;
        this.metrics = metrics;
        this.extra = new JSONObject();
    }

    private ResultMeta(JsonFields f) {
        numExamples = f.requireLong("num_examples");
        lossBefore = f.requireNumber("loss_before");
        lossAfter = f.requireNumber("loss_after");
        trainSeconds = f.requireNumber("train_seconds");
        bytesDownloaded = f.requireLong("bytes_downloaded");
        bytesUploaded = f.requireLong("bytes_uploaded");
        startAdapterSha256 = f.requireString("start_adapter_sha256");
        metrics = f.opt("metrics", DeviceMetrics::fromJson);
        extra = f.unknown();
    }

    public static ResultMeta fromJson(JSONObject object) {
        return new ResultMeta(JsonFields.of(object, "meta"));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("num_examples", numExamples).put("loss_before", lossBefore)
                .put("loss_after", lossAfter).put("train_seconds", trainSeconds)
                .put("bytes_downloaded", bytesDownloaded).put("bytes_uploaded", bytesUploaded)
                .put("start_adapter_sha256", startAdapterSha256)
                .putIfPresent("metrics", metrics).with(extra);
    }
}
