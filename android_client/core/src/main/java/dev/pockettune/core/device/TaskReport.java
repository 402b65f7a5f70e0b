package dev.pockettune.core.device;

import dev.pockettune.core.protocol.ResultResponse;

/** What happened to one task on this device, for the UI and the logs. */
public final class TaskReport {
    public final long taskId;
    public final long jobId;
    public final long round;
    /** {@code accepted}, or {@code accepted (already submitted)}. */
    public final String status;
    public final ResultResponse response;
    public final String updateSha256;
    public final int updateBytes;
    /** The update's change from the start adapter, computed on the device (the coordinator recomputes it). */
    public final double deltaNorm;
    public final double lossBefore;
    public final double lossAfter;
    public final int steps;
    public final long numExamples;
    public final long bytesDownloaded;
    public final double downloadSeconds;
    public final double trainSeconds;
    public final double uploadSeconds;

    TaskReport(long taskId, long jobId, long round, String status, ResultResponse response, String updateSha256,
               int updateBytes, double deltaNorm, double lossBefore, double lossAfter, int steps, long numExamples,
               long bytesDownloaded, double downloadSeconds, double trainSeconds, double uploadSeconds) {
        this.taskId = taskId;
        this.jobId = jobId;
        this.round = round;
        this.status = status;
        this.response = response;
        this.updateSha256 = updateSha256;
        this.updateBytes = updateBytes;
        this.deltaNorm = deltaNorm;
        this.lossBefore = lossBefore;
        this.lossAfter = lossAfter;
        this.steps = steps;
        this.numExamples = numExamples;
        this.bytesDownloaded = bytesDownloaded;
        this.downloadSeconds = downloadSeconds;
        this.trainSeconds = trainSeconds;
        this.uploadSeconds = uploadSeconds;
    }
}
