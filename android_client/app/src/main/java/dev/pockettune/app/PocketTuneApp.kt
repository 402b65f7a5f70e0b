package dev.pockettune.app

import android.app.Application
import android.app.NotificationChannel
import android.app.NotificationManager
import android.content.Context

/** Creates the notification channel the training job's foreground notification uses. */
class PocketTuneApp : Application() {
    override fun onCreate() {
        super.onCreate()
        val channel = NotificationChannel(CHANNEL_ID, getString(R.string.channel_name), NotificationManager.IMPORTANCE_LOW)
        getSystemService(NotificationManager::class.java).createNotificationChannel(channel)
    }

    companion object {
        const val CHANNEL_ID = "training"

        fun settings(context: Context) = Settings(context.applicationContext)
    }
}
