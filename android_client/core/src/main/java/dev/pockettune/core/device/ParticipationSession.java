package dev.pockettune.core.device;

import dev.pockettune.core.http.CoordinatorClient;
import dev.pockettune.core.http.CoordinatorException;
import dev.pockettune.core.http.ProtocolException;
import dev.pockettune.core.http.TaskOffer;
import dev.pockettune.core.protocol.ErrorCode;
import dev.pockettune.core.protocol.HeartbeatRequest;
import dev.pockettune.core.protocol.HeartbeatResponse;
import dev.pockettune.core.protocol.RegisterRequest;
import dev.pockettune.core.protocol.RegisterResponse;
import java.io.IOException;
import java.util.HashSet;
import java.util.Set;

/**
 * A device's standing with the coordinator: registers once (keeping the token), heartbeats, and
 * asks for work. The app's worker calls {@link #ensureRegistered()}, then {@link #nextTask()} and
 * hands a task to a {@link TaskRunner}; with none it waits as long as the coordinator asked.
 *
 * <p>A task this device gave up on (a file failed verification, nothing to train on) is not
 * picked up again: the coordinator would hand out the same task until the round ends.
 */
public final class ParticipationSession {
    private final CoordinatorClient client;
    private final IdentityStore identities;
    private final DeviceStatus status;
    private final String coordinatorUrl;
    private final String enrollmentKey;
    private final Set<Long> abandoned = new HashSet<>();
    private Long deviceId;
    private double heartbeatIntervalS = 30.0;

    public ParticipationSession(CoordinatorClient client, String coordinatorUrl, String enrollmentKey,
                                IdentityStore identities, DeviceStatus status) {
        this.client = client;
        this.coordinatorUrl = coordinatorUrl;
        this.enrollmentKey = enrollmentKey;
        this.identities = identities;
        this.status = status;
    }

    /** Registers with the enrollment key unless a saved token exists; returns the device id. */
    public long ensureRegistered() throws CoordinatorException, IOException, InterruptedException {
        if (deviceId != null) {
            return deviceId;
        }
        DeviceIdentity saved = identities.load(coordinatorUrl);
        if (saved != null) {
            client.setToken(saved.token);
            deviceId = saved.deviceId;
            return deviceId;
        }
        if (enrollmentKey == null || enrollmentKey.isEmpty()) {
            throw new IllegalStateException("this device is not registered yet: enter the coordinator's enrollment key");
        }
        RegisterResponse answer = client.register(new RegisterRequest(enrollmentKey, status.name(), status.platform(),
                status.capabilities(), status.battery(), status.charging()));
        identities.save(new DeviceIdentity(coordinatorUrl, answer.deviceId, answer.token));
        deviceId = answer.deviceId;
        heartbeatIntervalS = answer.heartbeatIntervalS.doubleValue();
        return deviceId;
    }

    public HeartbeatResponse heartbeat() throws CoordinatorException, InterruptedException {
        HeartbeatResponse answer = client.heartbeat(new HeartbeatRequest(status.battery(), status.charging(), null));
        heartbeatIntervalS = answer.heartbeatIntervalS.doubleValue();
        return answer;
    }

    public double heartbeatIntervalSeconds() {
        return heartbeatIntervalS;
    }

    /**
     * The next task, or none. A 401 means the saved token is no longer known to this coordinator
     * (a reset database): the identity is forgotten so the next call registers afresh.
     */
    public TaskOffer nextTask() throws CoordinatorException, IOException, InterruptedException {
        ensureRegistered();
        try {
            TaskOffer offer = client.nextTask();
            if (offer.hasTask() && abandoned.contains(offer.task.taskId)) {
                return TaskOffer.none("this device gave up on task " + offer.task.taskId, offer.retryAfterMillis > 0
                        ? offer.retryAfterMillis : 10_000);
            }
            return offer;
        } catch (ProtocolException e) {
            if (e.is(ErrorCode.UNAUTHORIZED)) {
                deviceId = null;
                client.setToken(null);
                identities.clear();
            }
            throw e;
        }
    }

    public void abandon(long taskId) {
        abandoned.add(taskId);
    }
}
