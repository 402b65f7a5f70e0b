package dev.pockettune.core.http;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Resumable, verified downloads of content-addressed blobs ({@code GET /blobs/<sha256>}).
 *
 * <p>Bytes go to {@code <dest>.part}. After an interruption the next attempt asks for the rest
 * with {@code Range: bytes=<have>-}, guarded by {@code If-Range: "<sha256>"} (the blob's ETag):
 * a server that cannot honour the range sends the whole blob (200) and the part file starts over.
 * The finished file is hashed; only bytes with the promised sha256 are renamed to {@code dest}.
 * A mismatch deletes the part file and fetches once more from scratch (a stale or corrupt
 * partial file is the usual cause); a second mismatch raises {@link IntegrityException}: a
 * device never trains on bytes it did not ask for.
 *
 * <p>{@code dest} itself is trusted when present: it only ever appears by that verified rename.
 */
public final class BlobDownloader {
    private static final Pattern CONTENT_RANGE = Pattern.compile("bytes (\\d+)-(\\d+)/(\\d+|\\*)");
    private static final int BUFFER = 1 << 16;

    private final CoordinatorClient client;
    private final TransferListener listener;

    public BlobDownloader(CoordinatorClient client, TransferListener listener) {
        this.client = client;
        this.listener = listener == null ? TransferListener.NONE : listener;
    }

    /** The part file a download of {@code dest} resumes from. */
    public static Path partFile(Path dest) {
        return dest.resolveSibling(dest.getFileName() + ".part");
    }

    /**
     * Fetches {@code url} into {@code dest} unless a verified copy is there.
     *
     * @param expectedSize the size the task announced, or -1; a part file larger than it is discarded
     * @return the bytes transferred over the network (0 when {@code dest} was already there)
     */
    public long download(String url, String sha256, long expectedSize, Path dest)
            throws CoordinatorException, InterruptedException, IOException {
        if (!Sha256.isHex(sha256)) {
            throw new IntegrityException(url + ": '" + sha256 + "' is not a sha256");
        }
        if (Files.isRegularFile(dest)) {
            return 0;
        }
        Path parent = dest.toAbsolutePath().getParent();
        if (parent != null) {
            Files.createDirectories(parent);
        }
        Path part = partFile(dest);
        long started = System.nanoTime();
        long fetched = 0;
        int mismatches = 0;
        int stalledAttempts = 0;
        long attemptStarted = client.timing().monotonicMillis();
        while (true) {
            long have = Files.exists(part) ? Files.size(part) : 0;
            if (expectedSize >= 0 && have > expectedSize) {
                Files.delete(part);
                have = 0;
            }
            boolean complete = expectedSize >= 0 && have == expectedSize;
            if (!complete) {
                long before = have;
                try {
                    fetched += fetchInto(url, sha256, part, have, expectedSize);
                    stalledAttempts = 0;
                } catch (IOException cut) {
                    if (cut instanceof CoordinatorException) {
                        throw (CoordinatorException) cut;
                    }
                    // The connection broke mid-body: resume from what we have, backing off only
                    // while no progress is made (a slow but moving link is not a failure).
                    long now = Files.exists(part) ? Files.size(part) : 0;
                    fetched += Math.max(0, now - before);
                    stalledAttempts = now > before ? 0 : stalledAttempts + 1;
                    long wait = client.retryPolicy().delayMillis(stalledAttempts, new java.util.Random());
                    if (stalledAttempts > 0 && client.retryPolicy().exhausted(
                            client.timing().monotonicMillis() - attemptStarted, wait)) {
                        throw new CoordinatorUnavailableException("download of " + url + " keeps failing: " + cut, cut);
                    }
                    if (stalledAttempts > 0) {
                        client.timing().sleep(wait);
                    } else {
                        attemptStarted = client.timing().monotonicMillis();
                    }
                    continue;
                }
            }
            String actual = Sha256.ofFile(part);
            if (actual.equals(sha256)) {
                break;
            }
            Files.deleteIfExists(part);
            mismatches++;
            if (mismatches >= 2) {
                throw new IntegrityException(url + ": downloaded bytes have sha256 " + actual + ", not the "
                        + sha256 + " the task named (twice); refusing to use them");
            }
        }
        Files.move(part, dest, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        client.transfers().addDown(fetched, (System.nanoTime() - started) / 1e9);
        return fetched;
    }

    /** One request: appends to (206) or rewrites (200) the part file; returns bytes received. */
    private long fetchInto(String url, String sha256, Path part, long have, long expectedSize)
            throws IOException, InterruptedException {
        Map<String, String> headers = new LinkedHashMap<>();
        headers.put("Accept", "application/octet-stream");
        if (have > 0) {
            headers.put("Range", "bytes=" + have + "-");
            headers.put("If-Range", "\"" + sha256 + "\"");
        }
        try (HttpExchange exchange = client.open("GET", url, headers, null, null, 200, 206, 416)) {
            if (exchange.status == 416) {
                // Our part file already holds the whole blob (or is bogus): the hash decides.
                return 0;
            }
            boolean append = exchange.status == 206;
            long total = expectedSize;
            if (append) {
                Matcher range = CONTENT_RANGE.matcher(String.valueOf(exchange.header("Content-Range")));
                if (!range.matches() || Long.parseLong(range.group(1)) != have) {
                    // A range we did not ask for: start over rather than splice wrong bytes.
                    Files.deleteIfExists(part);
                    return 0;
                }
                if (!"*".equals(range.group(3))) {
                    total = Long.parseLong(range.group(3));
                }
            } else if (total < 0) {
                total = exchange.contentLength();
            }
            long received = 0;
            long done = append ? have : 0;
            byte[] buffer = new byte[BUFFER];
            StandardOpenOption mode = append ? StandardOpenOption.APPEND : StandardOpenOption.TRUNCATE_EXISTING;
            try (OutputStream out = Files.newOutputStream(part, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                    mode)) {
                InputStream in = exchange.body();
                int n;
                while ((n = in.read(buffer)) >= 0) {
                    if (Thread.interrupted()) {
                        throw new InterruptedException("download of " + url + " cancelled");
                    }
                    out.write(buffer, 0, n);
                    received += n;
                    done += n;
                    listener.onProgress(url, done, total);
                }
            }
            long expectedBody = exchange.contentLength();
            if (expectedBody >= 0 && received < expectedBody) {
                throw new IOException("connection closed after " + received + " of " + expectedBody + " bytes");
            }
            return received;
        }
    }
}
