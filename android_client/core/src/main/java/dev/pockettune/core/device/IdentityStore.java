package dev.pockettune.core.device;

import java.io.IOException;

/**
 * Where the device keeps its registration. The app stores it in private SharedPreferences; the
 * JVM uses {@link FileIdentityStore}. Losing it means registering again as a new device.
 */
public interface IdentityStore {
    /** The saved identity, or null if none (or it belongs to another coordinator URL). */
    DeviceIdentity load(String coordinatorUrl) throws IOException;

    void save(DeviceIdentity identity) throws IOException;

    /** Forgets the identity (the coordinator no longer knows its token). */
    void clear() throws IOException;
}
