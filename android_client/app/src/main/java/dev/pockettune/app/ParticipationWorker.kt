package dev.pockettune.app

import android.app.Notification
import android.content.Context
import android.content.pm.ServiceInfo
import androidx.core.app.NotificationCompat
import androidx.work.CoroutineWorker
import androidx.work.ForegroundInfo
import androidx.work.WorkerParameters
import androidx.work.workDataOf
import dev.pockettune.core.artifact.ArtifactStore
import dev.pockettune.core.device.NoLocalDataException
import dev.pockettune.core.device.ParticipationSession
import dev.pockettune.core.device.TaskListener
import dev.pockettune.core.device.TaskRunner
import dev.pockettune.core.http.BlobDownloader
import dev.pockettune.core.http.CoordinatorClient
import dev.pockettune.core.http.CoordinatorUnavailableException
import dev.pockettune.core.http.IntegrityException
import dev.pockettune.core.http.ProtocolException
import dev.pockettune.core.http.RetryPolicy
import dev.pockettune.core.training.TrainingException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.delay
import kotlinx.coroutines.withContext
import java.text.DateFormat
import java.util.Date

/**
 * One participation window: register if needed, heartbeat, ask for a task for a few minutes,
 * and run at most one task through the core's [TaskRunner] with the [ExecuTorchTrainer].
 *
 * Runs as a foreground job (a notification shows the phase and step) because a task takes
 * minutes. WorkManager stops it when a constraint (charging, unmetered network) goes away; the
 * trainer checks [isStopped] between steps and the task is then simply not uploaded.
 */
class ParticipationWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    private val settings = Settings(context)

    override suspend fun doWork(): Result = withContext(Dispatchers.IO) {
        if (!settings.participationAllowed || !settings.isConfigured) return@withContext Result.success()
        try {
            setForeground(foregroundInfo("Contacting the coordinator"))
        } catch (e: IllegalStateException) {
            // Android 12+ may refuse a foreground start from the background; the job then runs
            // under WorkManager's normal 10-minute window, enough for small artifacts.
            record("Running without a foreground notification: ${e.message}", quiet = true)
        }
        val url = settings.coordinatorUrl
        val client = CoordinatorClient(url, RetryPolicy.boundedBy(5 * 60_000L)).withUserAgent("PocketTune-Android/0.1")
        val listener = ProgressListener()
        val store = ArtifactStore(applicationContext.filesDir.toPath().resolve("pockettune"),
            BlobDownloader(client, listener))
        val runner = TaskRunner(client, store, ExecuTorchTrainer(), LocalTextSource(applicationContext, settings), listener)
        // Registration declares exactly the optimizers the runner accepts (the trainer's own list).
        val status = AndroidDeviceStatus(applicationContext, settings, runner.optimizers())
        runner.withPeakGflops(status.gflops())
        val session = ParticipationSession(client, url, settings.enrollmentKey, PrefsIdentityStore(applicationContext), status)
        settings.abandonedTasks.mapNotNull { it.toLongOrNull() }.forEach(session::abandon)
        try {
            val deviceId = session.ensureRegistered()
            session.heartbeat()
            val deadline = System.currentTimeMillis() + LOOK_FOR_WORK_MILLIS
            while (!isStopped && System.currentTimeMillis() < deadline) {
                val offer = session.nextTask()
                if (offer.hasTask()) {
                    val task = offer.task
                    try {
                        val report = runner.run(task)
                        record("Task ${report.taskId} (job ${report.jobId}, round ${report.round}) ${report.status}: " +
                            "loss %.3f -> %.3f, %d steps, %d bytes up".format(report.lossBefore, report.lossAfter,
                                report.steps, report.updateBytes))
                    } catch (e: IntegrityException) {
                        abandon(session, task.taskId, "refused task ${task.taskId}: ${e.message}")
                    } catch (e: TrainingException) {
                        abandon(session, task.taskId, "training failed for task ${task.taskId}: ${e.message}")
                    } catch (e: NoLocalDataException) {
                        abandon(session, task.taskId, "nothing to train on: ${e.message}. Add text first.")
                    }
                    return@withContext Result.success()
                }
                record("Device $deviceId: no task (${offer.noTaskReason.ifEmpty { "none offered" }})", quiet = true)
                setProgress(workDataOf(KEY_PHASE to "WAITING", KEY_DETAIL to offer.noTaskReason))
                delay(offer.retryAfterMillis.coerceIn(1_000L, 60_000L))
            }
            Result.success()
        } catch (e: CoordinatorUnavailableException) {
            record("Coordinator unreachable: ${e.message}")
            Result.retry()
        } catch (e: ProtocolException) {
            record("Coordinator refused: ${e.status} ${e.code}: ${e.serverMessage}")
            Result.success()
        } catch (e: InterruptedException) {
            record("Stopped (a constraint no longer holds, or participation was turned off)")
            Result.success()
        } catch (e: IllegalStateException) {
            record(e.message ?: e.toString())
            Result.success()
        }
    }

    private fun abandon(session: ParticipationSession, taskId: Long, message: String) {
        session.abandon(taskId)
        settings.abandonedTasks = (settings.abandonedTasks + taskId.toString()).toList().takeLast(50).toSet()
        record(message)
    }

    private fun record(message: String, quiet: Boolean = false) {
        val stamp = DateFormat.getTimeInstance(DateFormat.SHORT).format(Date())
        val previous = settings.lastStatus.lines().filter { it.isNotBlank() }
        val lines = if (quiet && previous.firstOrNull()?.contains("no task") == true) previous.drop(1) else previous
        settings.lastStatus = (listOf("$stamp  $message") + lines).take(12).joinToString("\n")
    }

    private fun foregroundInfo(text: String, progress: Int = 0, max: Int = 0): ForegroundInfo {
        val notification: Notification = NotificationCompat.Builder(applicationContext, PocketTuneApp.CHANNEL_ID)
            .setSmallIcon(android.R.drawable.stat_sys_download)
            .setContentTitle(applicationContext.getString(R.string.notification_title))
            .setContentText(text)
            .setOngoing(true)
            .setOnlyAlertOnce(true)
            .setProgress(max, progress, max == 0)
            .build()
        return ForegroundInfo(NOTIFICATION_ID, notification, ServiceInfo.FOREGROUND_SERVICE_TYPE_DATA_SYNC)
    }

    /** Core callbacks (on this worker's thread) -> WorkManager progress and the notification. */
    private inner class ProgressListener : TaskListener {
        private var phase = TaskListener.Phase.DOWNLOADING
        private var lastUpdate = 0L

        override fun onPhase(phase: TaskListener.Phase, detail: String) {
            this.phase = phase
            publish(detail, 0, 0, force = true)
        }

        override fun onProgress(what: String, done: Long, total: Long) {
            val permille = if (total > 0) (1000 * done / total).toInt() else 0
            publish("${done / 1_000_000} / ${if (total > 0) total / 1_000_000 else "?"} MB", permille, 1000)
        }

        override fun onStep(step: Int, totalSteps: Int, loss: Double) {
            publish("step $step / $totalSteps, loss %.3f".format(loss), step, totalSteps, force = true)
        }

        override fun isCancelled(): Boolean = isStopped

        private fun publish(detail: String, progress: Int, max: Int, force: Boolean = false) {
            val now = System.currentTimeMillis()
            if (!force && now - lastUpdate < 500) return
            lastUpdate = now
            setProgressAsync(workDataOf(KEY_PHASE to phase.name, KEY_DETAIL to detail,
                KEY_PROGRESS to progress, KEY_MAX to max))
            runCatching { setForegroundAsync(foregroundInfo("${phase.name.lowercase()}: $detail", progress, max)) }
        }
    }

    companion object {
        const val KEY_PHASE = "phase"
        const val KEY_DETAIL = "detail"
        const val KEY_PROGRESS = "progress"
        const val KEY_MAX = "max"
        private const val NOTIFICATION_ID = 17
        /** How long one run keeps asking when the coordinator has no task for this device. */
        private const val LOOK_FOR_WORK_MILLIS = 5 * 60_000L
    }
}
