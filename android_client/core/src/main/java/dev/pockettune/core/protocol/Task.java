package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import dev.pockettune.core.json.ProtocolFormatException;
import java.util.List;
import org.json.JSONObject;

/**
 * {@code GET /tasks/next}, 200: one device's share of a federated round.
 *
 * <p>The device fetches {@link #artifact} (the manifest, named by its sha256, and the device
 * files), starts from {@link #adapter} (the round's global adapter as a {@code .ptd}), trains as
 * {@link #train} says and uploads to {@link #upload} before {@link #deadline}.
 */
public final class Task implements JsonModel {
    public final long taskId;
    public final long jobId;
    public final long round;
    /** The job's task name (e.g. {@code bbcnews}); a phone trains on its own text regardless. */
    public final String dataset;
    public final Artifact artifact;
    public final Adapter adapter;
    /** The configurator's label for this device's tier (heterogeneous jobs), else null. */
    public final String arm;
    private final boolean armSent;
    public final TrainSettings train;
    public final Upload upload;
    public final String deadline;
    public final JSONObject extra;

    private Task(JsonFields f) {
        taskId = f.requireLong("task_id");
        jobId = f.requireLong("job_id");
        round = f.requireLong("round");
        dataset = f.optString("dataset");
        artifact = f.require("artifact", Artifact::new);
        adapter = f.require("adapter", Adapter::new);
        armSent = f.has("arm");
        arm = f.optString("arm");
        train = f.require("train", TrainSettings::new);
        upload = f.require("upload", Upload::new);
        deadline = f.requireString("deadline");
        extra = f.unknown();
    }

    public static Task fromJson(JSONObject object) {
        return new Task(JsonFields.of(object, "task"));
    }

    @Override
    public JSONObject toJson() {
        JsonOut out = new JsonOut().put("task_id", taskId).put("job_id", jobId).put("round", round)
                .put("dataset", dataset).put("artifact", artifact).put("adapter", adapter);
        if (armSent) {
            out.put("arm", arm);
        }
        return out.put("train", train).put("upload", upload).put("deadline", deadline).with(extra);
    }

    /** The artifact: its manifest blob and the files a device downloads. */
    public static final class Artifact implements JsonModel {
        public final String format;
        /** sha256 of the manifest. */
        public final String sha256;
        public final long size;
        public final String url;
        public final List<ArtifactFile> files;
        public final JSONObject extra;

        Artifact(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            format = f.requireString("format");
            sha256 = f.requireString("sha256");
            size = f.requireLong("size");
            url = f.requireString("url");
            files = f.requireList("files", ArtifactFile::new);
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("format", format).put("sha256", sha256).put("size", size).put("url", url)
                    .put("files", JsonOut.array(files)).with(extra);
        }
    }

    /** One device file of the artifact, at {@code path} relative to the artifact's directory. */
    public static final class ArtifactFile implements JsonModel {
        public final String path;
        public final String sha256;
        public final long size;
        public final String url;
        public final JSONObject extra;

        ArtifactFile(JSONObject object, String jsonPath) {
            JsonFields f = JsonFields.of(object, jsonPath);
            path = f.requireString("path");
            sha256 = f.requireString("sha256");
            size = f.requireLong("size");
            url = f.requireString("url");
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("path", path).put("sha256", sha256).put("size", size).put("url", url)
                    .with(extra);
        }
    }

    /** The adapter the round starts from, as a {@code .ptd} the program loads instead of its own. */
    public static final class Adapter implements JsonModel {
        public final long round;
        public final String format;
        public final String sha256;
        public final long size;
        public final String url;
        public final JSONObject extra;

        Adapter(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            round = f.requireLong("round");
            format = f.requireString("format");
            sha256 = f.requireString("sha256");
            size = f.requireLong("size");
            url = f.requireString("url");
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("round", round).put("format", format).put("sha256", sha256)
                    .put("size", size).put("url", url).with(extra);
        }
    }

    /**
     * Local training settings. A strategy may add its own keys ({@code configure_train}); they
     * are kept in {@link #extra}.
     */
    public static final class TrainSettings implements JsonModel {
        public final long steps;
        public final Number lr;
        public final long batch;
        public final long seq;
        public final String optimizer;
        public final Number momentum;
        public final Number weightDecay;
        /**
         * {@code probe_loss}: the job's configurator (FedSpine) asks for the loss on a batch held out
         * of training, before and after the task; null when the task does not say.
         */
        public final Boolean probeLoss;
        /**
         * {@code privacy}: a differentially private job's device step (clip the update's change to
         * {@code clip_norm}, and under local DP add noise of {@code noise_multiplier * clip_norm});
         * null when the job has none.
         */
        public final Privacy privacy;
        public final JSONObject extra;

        TrainSettings(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            steps = f.requireLong("steps");
            lr = f.requireNumber("lr");
            batch = f.requireLong("batch");
            seq = f.requireLong("seq");
            optimizer = f.requireString("optimizer");
            momentum = f.optNumber("momentum");
            weightDecay = f.optNumber("weight_decay");
            probeLoss = f.optBoolean("probe_loss");
            privacy = f.opt("privacy", Privacy::new);
            extra = f.unknown();
        }

        /** Whether the task asks for a held-out probe loss ({@code train.probe_loss: true}). */
        public boolean wantsProbeLoss() {
            return Boolean.TRUE.equals(probeLoss);
        }

        public double momentumOrZero() {
            return momentum == null ? 0.0 : momentum.doubleValue();
        }

        public double weightDecayOrZero() {
            return weightDecay == null ? 0.0 : weightDecay.doubleValue();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("steps", steps).put("lr", lr).put("batch", batch).put("seq", seq)
                    .put("optimizer", optimizer).putIfPresent("momentum", momentum)
                    .putIfPresent("weight_decay", weightDecay).putIfPresent("probe_loss", probeLoss)
                    .putIfPresent("privacy", privacy).with(extra);
        }
    }

    /** {@code train.privacy}: what the device does to its update before upload in a DP job. */
    public static final class Privacy implements JsonModel {
        public final Number clipNorm;
        public final Number noiseMultiplier;
        public final JSONObject extra;

        Privacy(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            clipNorm = f.requireNumber("clip_norm");
            noiseMultiplier = f.optNumber("noise_multiplier");
            extra = f.unknown();
            if (!(clipNorm.doubleValue() > 0) || Double.isInfinite(clipNorm.doubleValue())) {
                throw new ProtocolFormatException(path + ".clip_norm must be a positive number, got " + clipNorm);
            }
            if (noiseMultiplier != null && !(noiseMultiplier.doubleValue() >= 0)) {
                throw new ProtocolFormatException(path + ".noise_multiplier must be >= 0, got " + noiseMultiplier);
            }
        }

        public double noiseMultiplierOrZero() {
            return noiseMultiplier == null ? 0.0 : noiseMultiplier.doubleValue();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("clip_norm", clipNorm).putIfPresent("noise_multiplier", noiseMultiplier).with(extra);
        }
    }

    /** Where and how to upload: a safetensors file of at most {@code max_bytes}. */
    public static final class Upload implements JsonModel {
        public final String url;
        public final String format;
        public final long maxBytes;
        public final Number maxUpdateNorm;
        public final JSONObject extra;

        Upload(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            url = f.requireString("url");
            format = f.requireString("format");
            maxBytes = f.requireLong("max_bytes");
            maxUpdateNorm = f.requireNumber("max_update_norm");
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().put("url", url).put("format", format).put("max_bytes", maxBytes)
                    .put("max_update_norm", maxUpdateNorm).with(extra);
        }
    }
}
