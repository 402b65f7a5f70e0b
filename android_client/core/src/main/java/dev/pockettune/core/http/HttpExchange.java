package dev.pockettune.core.http;

import java.io.ByteArrayOutputStream;
import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.util.Map;

/**
 * One HTTP request over {@link HttpURLConnection}, with the response body left as a stream.
 *
 * <p>HttpURLConnection rather than {@code java.net.http.HttpClient}: Android has no
 * {@code java.net.http}, and this class must run unchanged on the phone and in the JVM tests
 * (on Android it is backed by OkHttp inside the platform).
 */
public final class HttpExchange implements Closeable {
    public final int status;
    private final HttpURLConnection connection;
    private final InputStream body;

    private HttpExchange(HttpURLConnection connection, int status, InputStream body) {
        this.connection = connection;
        this.status = status;
        this.body = body;
    }

    /**
     * Sends the request and reads the status line and headers. {@code body} may be null (no body);
     * it is buffered and sent with a Content-Length, never chunked.
     */
    public static HttpExchange open(String method, URL url, Map<String, String> headers, byte[] body,
                                    int connectTimeoutMillis, int readTimeoutMillis) throws IOException {
        HttpURLConnection connection = (HttpURLConnection) url.openConnection();
        boolean ok = false;
        try {
            connection.setRequestMethod(method);
            connection.setConnectTimeout(connectTimeoutMillis);
            connection.setReadTimeout(readTimeoutMillis);
            connection.setInstanceFollowRedirects(false);
            connection.setUseCaches(false);
            for (Map.Entry<String, String> header : headers.entrySet()) {
                connection.setRequestProperty(header.getKey(), header.getValue());
            }
            if (body != null) {
                connection.setDoOutput(true);
                // Not setFixedLengthStreamingMode: in streaming mode the JDK's implementation
                // drops the body of a 401 answer (it cannot replay the request for auth), and
                // the error code would be lost. Bodies here are in memory anyway (at most an update).
                try (OutputStream out = connection.getOutputStream()) {
                    out.write(body);
                }
            }
            int status = connection.getResponseCode();
            InputStream stream = status >= 400 ? connection.getErrorStream() : connection.getInputStream();
            HttpExchange exchange = new HttpExchange(connection, status,
                    stream != null ? stream : new java.io.ByteArrayInputStream(new byte[0]));
            ok = true;
            return exchange;
        } finally {
            if (!ok) {
                connection.disconnect();
            }
        }
    }

    public String header(String name) {
        return connection.getHeaderField(name);
    }

    /** Content-Length, or -1 when absent. */
    public long contentLength() {
        String value = header("Content-Length");
        try {
            return value == null ? -1 : Long.parseLong(value.trim());
        } catch (NumberFormatException e) {
            return -1;
        }
    }

    public InputStream body() {
        return body;
    }

    /** Reads the whole body (JSON answers: small). */
    public byte[] readBody() throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] buffer = new byte[8192];
        int n;
        while ((n = body.read(buffer)) >= 0) {
            out.write(buffer, 0, n);
        }
        return out.toByteArray();
    }

    @Override
    public void close() {
        try {
            body.close();
        } catch (IOException ignored) {
            // the connection is being abandoned; nothing useful to do with a close failure
        }
    }
}
