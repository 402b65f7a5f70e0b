package dev.pockettune.app

import android.content.Context
import dev.pockettune.core.device.DeviceIdentity
import dev.pockettune.core.device.IdentityStore

/** The device's registration (id and bearer token) in private SharedPreferences. */
class PrefsIdentityStore(context: Context) : IdentityStore {
    private val prefs = context.getSharedPreferences("pockettune_identity", Context.MODE_PRIVATE)

    override fun load(coordinatorUrl: String): DeviceIdentity? {
        if (prefs.getString("coordinator", null) != coordinatorUrl) return null
        val token = prefs.getString("token", null) ?: return null
        return DeviceIdentity(coordinatorUrl, prefs.getLong("device_id", -1), token)
    }

    override fun save(identity: DeviceIdentity) {
        prefs.edit()
            .putString("coordinator", identity.coordinatorUrl)
            .putLong("device_id", identity.deviceId)
            .putString("token", identity.token)
            .commit()
    }

    override fun clear() {
        prefs.edit().clear().commit()
    }
}
