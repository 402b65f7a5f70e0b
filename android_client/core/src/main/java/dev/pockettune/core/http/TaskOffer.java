package dev.pockettune.core.http;

import dev.pockettune.core.protocol.Task;

/**
 * The answer to {@code GET /tasks/next}: a task, or none with the coordinator's reason
 * ({@code PocketTune-No-Task-Reason}) and how long it asks the device to wait ({@code Retry-After}).
 */
public final class TaskOffer {
    public final Task task;
    public final String noTaskReason;
    public final long retryAfterMillis;

    private TaskOffer(Task task, String noTaskReason, long retryAfterMillis) {
        this.task = task;
        this.noTaskReason = noTaskReason;
        this.retryAfterMillis = retryAfterMillis;
    }

    public static TaskOffer of(Task task) {
        return new TaskOffer(task, "", 0);
    }

    public static TaskOffer none(String reason, long retryAfterMillis) {
        return new TaskOffer(null, reason == null ? "" : reason, retryAfterMillis);
    }

    public boolean hasTask() {
        return task != null;
    }
}
