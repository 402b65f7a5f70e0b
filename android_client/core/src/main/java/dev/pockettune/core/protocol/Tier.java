package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import java.util.List;
import org.json.JSONObject;

/**
 * A job's tier: what is compiled into the artifact (pruning, LoRA layout, quantization, batch,
 * sequence length) and the training hyper-parameters. A job request may give any subset, so
 * every field is optional and left out when null; a job answer has them all.
 */
public final class Tier implements JsonModel {
    public final Number pruneRatio;
    public final String pruneMethod;
    public final Long loraRank;
    public final String rankPattern;
    public final Long loraLayers;
    public final List<String> loraTargets;
    public final String quantize;
    public final Long batch;
    public final Long seq;
    public final Train train;
    public final String kernels;
    public final Boolean prefixCache;
    public final JSONObject extra;

    private Tier(JsonFields f) {
        pruneRatio = f.optNumber("prune_ratio");
        pruneMethod = f.optString("prune_method");
        loraRank = f.optLong("lora_rank");
        rankPattern = f.optString("rank_pattern");
        loraLayers = f.optLong("lora_layers");
        loraTargets = f.optStringList("lora_targets");
        quantize = f.optString("quantize");
        batch = f.optLong("batch");
        seq = f.optLong("seq");
        train = f.opt("train", Train::new);
        kernels = f.optString("kernels");
        prefixCache = f.optBoolean("prefix_cache");
        extra = f.unknown();
    }

    public static Tier fromJson(JSONObject object, String path) {
        return new Tier(JsonFields.of(object, path));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().putIfPresent("prune_ratio", pruneRatio).putIfPresent("prune_method", pruneMethod)
                .putIfPresent("lora_rank", loraRank).putIfPresent("rank_pattern", rankPattern)
                .putIfPresent("lora_layers", loraLayers).putIfPresent("lora_targets", loraTargets)
                .putIfPresent("quantize", quantize).putIfPresent("batch", batch).putIfPresent("seq", seq)
                .putIfPresent("train", train).putIfPresent("kernels", kernels)
                .putIfPresent("prefix_cache", prefixCache).with(extra);
    }

    /** The tier's training hyper-parameters. */
    public static final class Train implements JsonModel {
        public final String optimizer;
        public final Number lr;
        public final Number momentum;
        public final Number weightDecay;
        public final Long localSteps;
        public final JSONObject extra;

        Train(JSONObject object, String path) {
            JsonFields f = JsonFields.of(object, path);
            optimizer = f.optString("optimizer");
            lr = f.optNumber("lr");
            momentum = f.optNumber("momentum");
            weightDecay = f.optNumber("weight_decay");
            localSteps = f.optLong("local_steps");
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            return new JsonOut().putIfPresent("optimizer", optimizer).putIfPresent("lr", lr)
                    .putIfPresent("momentum", momentum).putIfPresent("weight_decay", weightDecay)
                    .putIfPresent("local_steps", localSteps).with(extra);
        }
    }
}
