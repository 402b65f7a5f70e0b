package dev.pockettune.core.protocol;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.JsonOut;
import org.json.JSONObject;

/**
 * One training round as a job lists it ({@code round_history}); {@link RoundDetail} adds the
 * job id and the devices' tasks. Shared fields are read and written here once.
 */
public class RoundSummary {
    public final long round;
    public final String status;
    public final String openedAt;
    public final String deadline;
    public final String closedAt;
    public final String closeReason;
    public final long numUpdates;
    public final GlobalAdapter adapter;
    public final Evaluation evaluation;

    RoundSummary(JsonFields f) {
        round = f.requireLong("round");
        status = f.requireString("status");
        openedAt = f.requireString("opened_at");
        deadline = f.requireString("deadline");
        closedAt = f.optString("closed_at");
        closeReason = f.optString("close_reason");
        numUpdates = f.requireLong("num_updates");
        adapter = f.opt("adapter", GlobalAdapter::fromJson);
        evaluation = f.opt("evaluation", Evaluation::fromJson);
    }

    void writeTo(JsonOut out) {
        out.put("round", round).put("status", status).put("opened_at", openedAt).put("deadline", deadline)
                .put("closed_at", closedAt).put("close_reason", closeReason).put("num_updates", numUpdates)
                .put("adapter", adapter).put("evaluation", evaluation);
    }

    /** A {@code round_history} entry. */
    public static final class Entry extends RoundSummary implements dev.pockettune.core.json.JsonModel {
        public final JSONObject extra;

        Entry(JSONObject object, String path) {
            this(JsonFields.of(object, path));
        }

        private Entry(JsonFields f) {
            super(f);
            extra = f.unknown();
        }

        @Override
        public JSONObject toJson() {
            JsonOut out = new JsonOut();
            writeTo(out);
            return out.with(extra);
        }
    }
}
