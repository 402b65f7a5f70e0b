package dev.pockettune.core.device;

import java.io.IOException;
import java.util.List;

/**
 * The text this device trains on, which never leaves it: on the phone, the file the user picked
 * or the app's own notes. Only the trained adapter is uploaded.
 */
public interface LocalText {
    List<String> documents() throws IOException;

    /** Short description for logs and the UI ("notes (3 paragraphs)"). */
    String describe();
}
