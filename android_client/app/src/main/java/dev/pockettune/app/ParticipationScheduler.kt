package dev.pockettune.app

import android.content.Context
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkManager
import java.util.concurrent.TimeUnit

/**
 * When the phone may take part: only after the user allowed it, and then only while charging,
 * on an unmetered network, with a battery that is not low. WorkManager holds the job until those
 * constraints hold and stops it (the worker sees isStopped) when one of them goes away.
 */
object ParticipationScheduler {
    const val PERIODIC = "pockettune-participation"
    const val NOW = "pockettune-participation-now"

    private fun constraints() = Constraints.Builder()
        .setRequiresCharging(true)
        .setRequiredNetworkType(NetworkType.UNMETERED)
        .setRequiresBatteryNotLow(true)
        .build()

    /** Applies the user's choice: schedule the periodic job, or cancel everything. */
    fun apply(context: Context, allowed: Boolean) {
        val work = WorkManager.getInstance(context)
        if (!allowed) {
            work.cancelUniqueWork(PERIODIC)
            work.cancelUniqueWork(NOW)
            return
        }
        val periodic = PeriodicWorkRequestBuilder<ParticipationWorker>(15, TimeUnit.MINUTES)
            .setConstraints(constraints())
            .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
            .build()
        work.enqueueUniquePeriodicWork(PERIODIC, ExistingPeriodicWorkPolicy.UPDATE, periodic)
    }

    /** One run as soon as the constraints hold (the "look for work now" button). */
    fun runNow(context: Context) {
        val request = OneTimeWorkRequestBuilder<ParticipationWorker>()
            .setConstraints(constraints())
            .build()
        WorkManager.getInstance(context).enqueueUniqueWork(NOW, ExistingWorkPolicy.KEEP, request)
    }
}
