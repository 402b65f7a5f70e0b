package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.JsonOut;
import java.util.List;
import org.json.JSONObject;

/** A job as the admin API shows it ({@code POST /jobs} 202, {@code GET /jobs/<id>}, {@code GET /jobs}). */
public final class Job implements JsonModel {
    public final long jobId;
    public final String name;
    public final String model;
    public final String task;
    public final Tier tier;
    public final long rounds;
    public final long devicesPerRound;
    public final long minUpdates;
    public final Number roundDeadlineS;
    public final long localSteps;
    public final Number lr;
    public final String strategy;
    public final String configurator;
    /** Configurator-specific options, kept as given (their schema belongs to each configurator). */
    public final JSONObject configuratorOptions;
    public final String prepareTiers;
    public final Number maxUpdateNorm;
    public final Long minRamMb;
    public final long evalExamples;
    public final String error;
    public final String createdAt;
    public final String status;
    public final String updatedAt;
    public final Long currentRound;
    public final BlobRef artifact;
    public final GlobalAdapter initialAdapter;
    public final Evaluation initialEvaluation;
    public final Long latestAdapterRound;
    public final List<RoundSummary.Entry> roundHistory;
    public final JSONObject extra;

    private Job(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        jobId = f.requireLong("job_id");
        name = f.optString("name");
        model = f.requireString("model");
        task = f.requireString("task");
        tier = f.require("tier", Tier::fromJson);
        rounds = f.requireLong("rounds");
        devicesPerRound = f.requireLong("devices_per_round");
        minUpdates = f.requireLong("min_updates");
        roundDeadlineS = f.requireNumber("round_deadline_s");
        localSteps = f.requireLong("local_steps");
        lr = f.requireNumber("lr");
        strategy = f.requireString("strategy");
        configurator = f.requireString("configurator");
        configuratorOptions = f.requireObject("configurator_options");
        prepareTiers = f.requireString("prepare_tiers");
        maxUpdateNorm = f.requireNumber("max_update_norm");
        minRamMb = f.optLong("min_ram_mb");
        evalExamples = f.requireLong("eval_examples");
        error = f.optString("error");
        createdAt = f.requireString("created_at");
        status = f.requireString("status");
        updatedAt = f.requireString("updated_at");
        currentRound = f.optLong("current_round");
        artifact = f.opt("artifact", BlobRef::fromJson);
        initialAdapter = f.opt("initial_adapter", GlobalAdapter::fromJson);
        initialEvaluation = f.opt("initial_evaluation", Evaluation::fromJson);
        latestAdapterRound = f.optLong("latest_adapter_round");
        roundHistory = f.requireList("round_history", RoundSummary.Entry::new);
        extra = f.unknown();
    }

    public static Job fromJson(JSONObject object) {
        return new Job(object, "job");
    }

    /** {@code GET /jobs}: {@code {"jobs": [...]}}. */
    public static List<Job> listFromJson(JSONObject object) {
        return JsonFields.of(object, "job_list").requireList("jobs", Job::new);
    }

    public static JSONObject listToJson(List<Job> jobs) {
        return new JsonOut().put("jobs", JsonOut.array(jobs)).build();
    }

    @Override
    public JSONObject toJson() {
        return new JsonOut().put("job_id", jobId).put("name", name).put("model", model).put("task", task)
                .put("tier", tier).put("rounds", rounds).put("devices_per_round", devicesPerRound)
                .put("min_updates", minUpdates).put("round_deadline_s", roundDeadlineS)
                .put("local_steps", localSteps).put("lr", lr).put("strategy", strategy)
                .put("configurator", configurator).put("configurator_options", configuratorOptions)
                .put("prepare_tiers", prepareTiers).put("max_update_norm", maxUpdateNorm)
                .put("min_ram_mb", minRamMb).put("eval_examples", evalExamples).put("error", error)
                .put("created_at", createdAt).put("status", status).put("updated_at", updatedAt)
                .put("current_round", currentRound).put("artifact", artifact)
                .put("initial_adapter", initialAdapter).put("initial_evaluation", initialEvaluation)
                .put("latest_adapter_round", latestAdapterRound)
                .put("round_history", JsonOut.array(roundHistory)).with(extra);
    }
}
