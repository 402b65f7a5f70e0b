package dev.pockettune.app

import android.content.Context
import android.net.Uri
import dev.pockettune.core.device.LocalText
import java.io.IOException

/**
 * The text the user chose to train on: the app's own notes, or one text file picked with the
 * Storage Access Framework (read through its persisted content:// permission). It is read on
 * the device only; nothing but the trained adapter is uploaded.
 */
class LocalTextSource(private val context: Context, private val settings: Settings) : LocalText {
    override fun documents(): List<String> = when (settings.source) {
        Settings.SOURCE_FILE -> listOf(readFile())
        else -> listOf(settings.notes)
    }

    private fun readFile(): String {
        val uri = settings.fileUri.takeIf { it.isNotEmpty() }?.let(Uri::parse)
            ?: throw IOException("no text file picked")
        val stream = context.contentResolver.openInputStream(uri)
            ?: throw IOException("cannot open ${settings.fileName}")
        return stream.use { input ->
            val bytes = input.readBytes()
            if (bytes.size > MAX_BYTES) throw IOException("${settings.fileName} is over ${MAX_BYTES / 1_000_000} MB")
            String(bytes, Charsets.UTF_8)
        }
    }

    override fun describe(): String = when (settings.source) {
        Settings.SOURCE_FILE -> "file ${settings.fileName}"
        else -> "notes (${settings.notes.length} characters)"
    }

    companion object {
        /** A round takes a few hundred examples at most; more text is not read into memory. */
        const val MAX_BYTES = 8_000_000
    }
}
