package dev.pockettune.core.http;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;

/**
 * A {@code multipart/form-data} body built in memory: what {@code POST /tasks/<id>/result}
 * takes ({@code meta} JSON as a field, {@code update} safetensors as a file part). Updates are
 * small (about 1 MB for SmolLM2's LoRA), so buffering is simpler than streaming and lets the
 * request carry a Content-Length.
 */
public final class Multipart {
    private final String boundary;
    private final ByteArrayOutputStream body = new ByteArrayOutputStream();

    public Multipart() {
        byte[] random = new byte[16];
        new SecureRandom().nextBytes(random);
        StringBuilder b = new StringBuilder("pockettune-");
        for (byte x : random) {
            b.append(String.format("%02x", x & 0xff));
        }
        boundary = b.toString();
    }

    public String contentType() {
        return "multipart/form-data; boundary=" + boundary;
    }

    /** A form field (no filename), as Werkzeug puts it in {@code request.form}. */
    public Multipart field(String name, String contentType, byte[] content) {
        return part("form-data; name=\"" + name + "\"", contentType, content);
    }

    /** A file part, as Werkzeug puts it in {@code request.files}. */
    public Multipart file(String name, String filename, String contentType, byte[] content) {
        return part("form-data; name=\"" + name + "\"; filename=\"" + filename + "\"", contentType, content);
    }

    private Multipart part(String disposition, String contentType, byte[] content) {
        ascii("--" + boundary + "\r\n");
        ascii("Content-Disposition: " + disposition + "\r\n");
        ascii("Content-Type: " + contentType + "\r\n\r\n");
        body.write(content, 0, content.length);
        ascii("\r\n");
        return this;
    }

    public byte[] finish() {
        ascii("--" + boundary + "--\r\n");
        return body.toByteArray();
    }

    private void ascii(String s) {
        byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
        body.write(bytes, 0, bytes.length);
    }
}
