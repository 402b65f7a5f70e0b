package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/**
 * {@code POST /jobs} (admin). Only {@code model}, {@code task} and {@code rounds} are required;
 * other settings the coordinator knows (configurator, max_update_norm, ...) are kept in
 * {@link #extra} as given.
 */
public final class JobCreateRequest implements JsonModel {
    public final String name;
    public final String model;
    public final String task;
    public final long rounds;
    public final Long devicesPerRound;
    public final Long minUpdates;
    public final Number roundDeadlineS;
    public final Long localSteps;
    public final Number lr;
    public final String strategy;
    public final Long evalExamples;
    public final Tier tier;
    public final JSONObject extra;

    private JobCreateRequest(JsonFields f) {
        name = f.optString("name");
        model = f.requireString("model");
        task = f.requireString("task");
        rounds = f.requireLong("rounds");
        devicesPerRound = f.optLong("devices_per_round");
        minUpdates = f.optLong("min_updates");
        roundDeadlineS = f.optNumber("round_deadline_s");
        localSteps = f.optLong("local_steps");
        lr = f.optNumber("lr");
        strategy = f.optString("strategy");
        evalExamples = f.optLong("eval_examples");
        tier = f.opt("tier", Tier::fromJson);
        extra = f.unknown();
    }

    public static JobCreateRequest fromJson(JSONObject object) {
        return new JobCreateRequest(JsonFields.of(object, "job_create_request"));
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().putIfPresent("name", name).put("model", model).put("task", task)
                .put("rounds", rounds).putIfPresent("devices_per_round", devicesPerRound)
                .putIfPresent("min_updates", minUpdates).putIfPresent("round_deadline_s", roundDeadlineS)
                .putIfPresent("local_steps", localSteps).putIfPresent("lr", lr).putIfPresent("strategy", strategy)
                .putIfPresent("eval_examples", evalExamples).putIfPresent("tier", tier).with(extra);
    }
}
