package dev.pockettune.core.http;

/** Progress of a download, for the app's progress bar. Called on the downloading thread. */
public interface TransferListener {
    /** {@code total} is -1 when unknown. */
    void onProgress(String what, long done, long total);

    TransferListener NONE = (what, done, total) -> { };
}
