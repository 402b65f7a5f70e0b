package dev.pockettune.core.device;

import dev.pockettune.core.protocol.Capabilities;

/**
 * What the device says about itself: fixed facts for registration and the battery state for
 * heartbeats. The app reads them from Android (ActivityManager, BatteryManager); tests fix them.
 */
public interface DeviceStatus {
    String name();

    String platform();

    Capabilities capabilities();

    /** Battery percentage 0..100, or null if unknown. */
    Double battery();

    /** Null if unknown. */
    Boolean charging();
}
