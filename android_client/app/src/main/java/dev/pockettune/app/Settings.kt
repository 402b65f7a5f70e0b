package dev.pockettune.app

import android.content.Context
import android.content.SharedPreferences

/**
 * The user's choices and the app's last known state, in private SharedPreferences.
 * Participation is off until the user turns it on: nothing is downloaded or trained before.
 */
class Settings(context: Context) {
    private val prefs: SharedPreferences = context.getSharedPreferences("pockettune", Context.MODE_PRIVATE)

    var coordinatorUrl: String
        get() = prefs.getString("coordinator_url", "") ?: ""
        set(value) = prefs.edit().putString("coordinator_url", value.trim().trimEnd('/')).apply()

    var enrollmentKey: String
        get() = prefs.getString("enrollment_key", "") ?: ""
        set(value) = prefs.edit().putString("enrollment_key", value.trim()).apply()

    var participationAllowed: Boolean
        get() = prefs.getBoolean("participation_allowed", false)
        set(value) = prefs.edit().putBoolean("participation_allowed", value).apply()

    /** "notes" or "file". */
    var source: String
        get() = prefs.getString("source", SOURCE_NOTES) ?: SOURCE_NOTES
        set(value) = prefs.edit().putString("source", value).apply()

    var notes: String
        get() = prefs.getString("notes", "") ?: ""
        set(value) = prefs.edit().putString("notes", value).apply()

    /** The picked document (a SAF content:// URI with a persisted read permission), or empty. */
    var fileUri: String
        get() = prefs.getString("file_uri", "") ?: ""
        set(value) = prefs.edit().putString("file_uri", value).apply()

    var fileName: String
        get() = prefs.getString("file_name", "") ?: ""
        set(value) = prefs.edit().putString("file_name", value).apply()

    /** One line per event, newest first, for the state panel. */
    var lastStatus: String
        get() = prefs.getString("last_status", "") ?: ""
        set(value) = prefs.edit().putString("last_status", value).apply()

    /** Measured once (MatmulBenchmark); 0: not measured yet. */
    var gflops: Float
        get() = prefs.getFloat("gflops", 0f)
        set(value) = prefs.edit().putFloat("gflops", value).apply()

    /** Tasks this device gave up on; not retried while their round lasts. */
    var abandonedTasks: Set<String>
        get() = prefs.getStringSet("abandoned_tasks", emptySet()) ?: emptySet()
        set(value) = prefs.edit().putStringSet("abandoned_tasks", value).apply()

    val isConfigured: Boolean
        get() = coordinatorUrl.startsWith("http://") || coordinatorUrl.startsWith("https://")

    fun registerChanges(listener: SharedPreferences.OnSharedPreferenceChangeListener) =
        prefs.registerOnSharedPreferenceChangeListener(listener)

    fun unregisterChanges(listener: SharedPreferences.OnSharedPreferenceChangeListener) =
        prefs.unregisterOnSharedPreferenceChangeListener(listener)

    companion object {
        const val SOURCE_NOTES = "notes"
        const val SOURCE_FILE = "file"
    }
}
