package dev.pockettune.app

import android.app.ActivityManager
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.BatteryManager
import android.os.Build
import dev.pockettune.core.device.MatmulBenchmark
import dev.pockettune.core.protocol.Capabilities

/**
 * What this phone tells the coordinator about itself: model name, Android version, RAM, cores,
 * a measured compute figure (the core's matmul micro-benchmark, measured once and kept), the
 * optimizers its trainer supports ([optimizers]: the `TaskRunner`'s, i.e. `ExecuTorchTrainer`'s
 * list, so the coordinator offers no task the runner would refuse), and the battery state for
 * heartbeats. Training runs only on charge, so the battery is informative.
 */
class AndroidDeviceStatus(
    private val context: Context,
    private val settings: Settings,
    private val optimizers: List<String>,
) :
    dev.pockettune.core.device.DeviceStatus {

    override fun name(): String = "${Build.MANUFACTURER} ${Build.MODEL}".trim().take(100)

    override fun platform(): String = "android-${Build.VERSION.SDK_INT}"

    override fun capabilities(): Capabilities {
        val memory = ActivityManager.MemoryInfo()
        context.getSystemService(ActivityManager::class.java).getMemoryInfo(memory)
        val ramMb = memory.totalMem / (1024 * 1024)
        return Capabilities(ramMb, Runtime.getRuntime().availableProcessors().toLong(), gflops(), 0.0,
            listOf(Capabilities.RUNTIME_EXECUTORCH), optimizers, Capabilities.PRIVACY_STEPS)
    }

    /** Measured on first use (about half a second), then cached in the settings. */
    fun gflops(): Double {
        if (settings.gflops <= 0f) {
            settings.gflops = MatmulBenchmark.gflops(128, 400).toFloat()
        }
        return settings.gflops.toDouble()
    }

    private fun batteryIntent(): Intent? =
        context.registerReceiver(null, IntentFilter(Intent.ACTION_BATTERY_CHANGED))

    override fun battery(): Double? {
        val intent = batteryIntent() ?: return null
        val level = intent.getIntExtra(BatteryManager.EXTRA_LEVEL, -1)
        val scale = intent.getIntExtra(BatteryManager.EXTRA_SCALE, -1)
        return if (level >= 0 && scale > 0) 100.0 * level / scale else null
    }

    override fun charging(): Boolean? {
        val intent = batteryIntent() ?: return null
        val status = intent.getIntExtra(BatteryManager.EXTRA_STATUS, -1)
        return status == BatteryManager.BATTERY_STATUS_CHARGING || status == BatteryManager.BATTERY_STATUS_FULL
    }
}
