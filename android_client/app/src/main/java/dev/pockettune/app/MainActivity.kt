package dev.pockettune.app

import android.Manifest
import android.content.Intent
import android.content.SharedPreferences
import android.net.Uri
import android.os.Build
import android.os.Bundle
import android.provider.OpenableColumns
import android.widget.Button
import android.widget.EditText
import android.widget.ProgressBar
import android.widget.RadioGroup
import android.widget.TextView
import android.widget.Toast
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.work.WorkInfo
import androidx.work.WorkManager
import com.google.android.material.materialswitch.MaterialSwitch

/**
 * The device's state and progress, and the user's choices: coordinator, enrollment key, whether
 * the phone may take part (charging + unmetered network, enforced by [ParticipationScheduler]),
 * and what to train on (in-app notes, or a text file picked through the Storage Access Framework).
 */
class MainActivity : AppCompatActivity() {
    private lateinit var settings: Settings
    private lateinit var state: TextView
    private lateinit var progress: ProgressBar
    private lateinit var progressText: TextView
    private lateinit var fileName: TextView

    private val pickFile = registerForActivityResult(ActivityResultContracts.OpenDocument()) { uri: Uri? ->
        if (uri != null) {
            contentResolver.takePersistableUriPermission(uri, Intent.FLAG_GRANT_READ_URI_PERMISSION)
            settings.fileUri = uri.toString()
            settings.fileName = displayName(uri)
            settings.source = Settings.SOURCE_FILE
            findViewById<RadioGroup>(R.id.source).check(R.id.source_file)
            fileName.text = settings.fileName
        }
    }

    private val askNotifications = registerForActivityResult(ActivityResultContracts.RequestPermission()) { }

    private val statusListener = SharedPreferences.OnSharedPreferenceChangeListener { _, key ->
        if (key == "last_status") runOnUiThread { showState() }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        settings = Settings(this)
        state = findViewById(R.id.state)
        progress = findViewById(R.id.progress)
        progressText = findViewById(R.id.progress_text)
        fileName = findViewById(R.id.file_name)
        val url = findViewById<EditText>(R.id.coordinator_url)
        val key = findViewById<EditText>(R.id.enrollment_key)
        val notes = findViewById<EditText>(R.id.notes)
        val allow = findViewById<MaterialSwitch>(R.id.allow_participation)
        val source = findViewById<RadioGroup>(R.id.source)

        url.setText(settings.coordinatorUrl)
        key.setText(settings.enrollmentKey)
        notes.setText(settings.notes)
        allow.isChecked = settings.participationAllowed
        source.check(if (settings.source == Settings.SOURCE_FILE) R.id.source_file else R.id.source_notes)
        fileName.text = settings.fileName.ifEmpty { getString(R.string.no_file) }

        fun save() {
            settings.coordinatorUrl = url.text.toString()
            settings.enrollmentKey = key.text.toString()
            settings.notes = notes.text.toString()
            settings.source = if (source.checkedRadioButtonId == R.id.source_file) Settings.SOURCE_FILE else Settings.SOURCE_NOTES
        }

        findViewById<Button>(R.id.pick_file).setOnClickListener { pickFile.launch(arrayOf("text/*")) }
        findViewById<Button>(R.id.save).setOnClickListener {
            save()
            ParticipationScheduler.apply(this, settings.participationAllowed)
            Toast.makeText(this, "Saved", Toast.LENGTH_SHORT).show()
            showState()
        }
        allow.setOnCheckedChangeListener { _, checked ->
            save()
            if (checked && !settings.isConfigured) {
                Toast.makeText(this, "Enter the coordinator URL first", Toast.LENGTH_LONG).show()
                allow.isChecked = false
                return@setOnCheckedChangeListener
            }
            settings.participationAllowed = checked
            ParticipationScheduler.apply(this, checked)
            if (checked && Build.VERSION.SDK_INT >= 33) askNotifications.launch(Manifest.permission.POST_NOTIFICATIONS)
            showState()
        }
        findViewById<Button>(R.id.run_now).setOnClickListener {
            save()
            if (!settings.participationAllowed) {
                Toast.makeText(this, "Allow participation first", Toast.LENGTH_LONG).show()
            } else {
                ParticipationScheduler.runNow(this)
                Toast.makeText(this, "Queued: runs while charging on Wi-Fi", Toast.LENGTH_LONG).show()
            }
        }

        val work = WorkManager.getInstance(this)
        work.getWorkInfosForUniqueWorkLiveData(ParticipationScheduler.NOW).observe(this) { showWork(it) }
        work.getWorkInfosForUniqueWorkLiveData(ParticipationScheduler.PERIODIC).observe(this) { showWork(it) }
        showState()
    }

    override fun onStart() {
        super.onStart()
        settings.registerChanges(statusListener)
    }

    override fun onStop() {
        settings.unregisterChanges(statusListener)
        super.onStop()
    }

    private fun showState() {
        val participation = when {
            !settings.isConfigured -> "Not configured: enter the coordinator URL and enrollment key."
            !settings.participationAllowed -> "Participation is off."
            else -> "Participation is on: runs while charging on an unmetered network."
        }
        val data = if (settings.source == Settings.SOURCE_FILE) "Training text: ${settings.fileName.ifEmpty { "no file" }}"
        else "Training text: notes, ${settings.notes.length} characters"
        state.text = listOf(participation, data, settings.lastStatus).filter { it.isNotBlank() }.joinToString("\n")
    }

    private fun showWork(infos: List<WorkInfo>) {
        val running = infos.firstOrNull { it.state == WorkInfo.State.RUNNING }
        if (running == null) {
            val waiting = infos.firstOrNull { it.state == WorkInfo.State.ENQUEUED }
            progress.progress = 0
            progressText.text = if (waiting != null) "Waiting for charging + unmetered network" else ""
            return
        }
        val data = running.progress
        val max = data.getInt(ParticipationWorker.KEY_MAX, 0)
        val done = data.getInt(ParticipationWorker.KEY_PROGRESS, 0)
        progress.isIndeterminate = max == 0
        if (max > 0) progress.progress = (1000L * done / max).toInt()
        progressText.text = listOfNotNull(data.getString(ParticipationWorker.KEY_PHASE),
            data.getString(ParticipationWorker.KEY_DETAIL)).joinToString(": ")
    }

    private fun displayName(uri: Uri): String =
        contentResolver.query(uri, arrayOf(OpenableColumns.DISPLAY_NAME), null, null, null)?.use { cursor ->
            if (cursor.moveToFirst()) cursor.getString(0) else null
        } ?: uri.lastPathSegment ?: "text file"
}
