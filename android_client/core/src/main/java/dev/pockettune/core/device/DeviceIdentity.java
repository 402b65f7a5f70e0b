package dev.pockettune.core.device;

/** This device's registration with one coordinator: the id and the bearer token (shown once at registration). */
public final class DeviceIdentity {
    public final String coordinatorUrl;
    public final long deviceId;
    public final String token;

    public DeviceIdentity(String coordinatorUrl, long deviceId, String token) {
        this.coordinatorUrl = coordinatorUrl;
        this.deviceId = deviceId;
        this.token = token;
    }
}
