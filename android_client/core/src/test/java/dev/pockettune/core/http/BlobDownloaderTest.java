package dev.pockettune.core.http;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.sun.net.httpserver.HttpExchange;
import dev.pockettune.core.testing.FakeTiming;
import dev.pockettune.core.testing.TestServer;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.After;
import org.junit.Before;
import org.junit.Test;

/** Resumable, verified downloads against a loopback server that honours Range like the coordinator. */
public class BlobDownloaderTest {
    private static final Pattern RANGE = Pattern.compile("bytes=(\\d+)-(\\d*)");
    private final byte[] blob = new byte[300_000];
    private String sha;
    private Path dir;
    private TestServer server;
    /** When set, the server sends the first response's headers for the whole body and stops halfway. */
    private final AtomicBoolean cutNext = new AtomicBoolean();
    private volatile byte[] served;

    @Before
    public void setUp() throws IOException {
        new Random(3).nextBytes(blob);
        sha = Sha256.of(blob);
        served = blob;
        dir = Files.createTempDirectory("blobs");
        server = new TestServer();
        server.handle("/api/v1/blobs/", this::serve);
    }

    @After
    public void tearDown() {
        server.close();
    }

    private void serve(HttpExchange exchange) throws IOException {
        byte[] data = served;
        String range = exchange.getRequestHeaders().getFirst("Range");
        String ifRange = exchange.getRequestHeaders().getFirst("If-Range");
        exchange.getResponseHeaders().set("ETag", "\"" + sha + "\"");
        int start = 0;
        int status = 200;
        if (range != null && (ifRange == null || ifRange.equals("\"" + sha + "\""))) {
            Matcher m = RANGE.matcher(range);
            if (m.matches()) {
                start = Integer.parseInt(m.group(1));
                if (start >= data.length) {
                    exchange.getResponseHeaders().set("Content-Range", "bytes */" + data.length);
                    TestServer.json(exchange, 416, "{\"error\":{\"code\":\"range_not_satisfiable\",\"message\":\"x\"}}");
                    return;
                }
                status = 206;
                exchange.getResponseHeaders().set("Content-Range",
                        "bytes " + start + "-" + (data.length - 1) + "/" + data.length);
            }
        }
        int length = data.length - start;
        exchange.sendResponseHeaders(status, length);
        try (OutputStream out = exchange.getResponseBody()) {
            if (cutNext.getAndSet(false)) {
                out.write(data, start, length / 2);
                out.flush();
                throw new IOException("simulated connection loss");   // the server abandons the exchange
            }
            out.write(data, start, length);
        }
    }

    private BlobDownloader downloader() {
        CoordinatorClient client = new CoordinatorClient(server.baseUrl(), RetryPolicy.boundedBy(30_000),
                new FakeTiming(), new Random(1)).withTimeouts(5_000, 5_000);
        return new BlobDownloader(client, TransferListener.NONE);
    }

    private String url() {
        return "/api/v1/blobs/" + sha;
    }

    @Test
    public void aPartialFileIsResumedWithARangeRequest() throws Exception {
        Path dest = dir.resolve("model.pte");
        Files.write(BlobDownloader.partFile(dest), Arrays.copyOf(blob, 100_000));
        long fetched = downloader().download(url(), sha, blob.length, dest);
        assertEquals(blob.length - 100_000, fetched);
        assertArrayEquals(blob, Files.readAllBytes(dest));
        assertFalse(Files.exists(BlobDownloader.partFile(dest)));
        assertEquals(java.util.List.of("GET /api/v1/blobs/" + sha + " Range:bytes=100000-"), server.requests);
    }

    @Test
    public void aConnectionCutMidBodyIsResumedAutomatically() throws Exception {
        Path dest = dir.resolve("cut.bin");
        cutNext.set(true);
        downloader().download(url(), sha, blob.length, dest);
        assertArrayEquals(blob, Files.readAllBytes(dest));
        assertEquals(2, server.requests.size());
        assertTrue(server.requests.get(1), server.requests.get(1).contains("Range:bytes=150000-"));
    }

    @Test
    public void aCorruptPartialFileIsDeletedAndFetchedAgain() throws Exception {
        Path dest = dir.resolve("adapter.ptd");
        byte[] wrong = Arrays.copyOf(blob, 120_000);
        wrong[5] ^= 1;
        Files.write(BlobDownloader.partFile(dest), wrong);
        long fetched = downloader().download(url(), sha, blob.length, dest);
        assertArrayEquals(blob, Files.readAllBytes(dest));
        assertEquals(blob.length - 120_000 + blob.length, fetched);
        assertEquals(2, server.requests.size());
        assertTrue(server.requests.get(1).endsWith(sha));   // the refetch starts from scratch
    }

    @Test
    public void bytesThatNeverMatchTheShaAreRefused() throws Exception {
        byte[] tampered = blob.clone();
        tampered[1000] ^= 0x40;
        served = tampered;
        Path dest = dir.resolve("tampered.pte");
        try {
            downloader().download(url(), sha, blob.length, dest);
            fail("tampered bytes must be refused");
        } catch (IntegrityException expected) {
            assertTrue(expected.getMessage().contains(sha));
        }
        assertFalse(Files.exists(dest));
        assertFalse(Files.exists(BlobDownloader.partFile(dest)));
    }

    @Test
    public void aCompletePartialFileIsVerifiedWithoutDownloading() throws Exception {
        Path dest = dir.resolve("whole.bin");
        Files.write(BlobDownloader.partFile(dest), blob);
        assertEquals(0, downloader().download(url(), sha, blob.length, dest));
        assertTrue(server.requests.isEmpty());
        assertEquals(0, downloader().download(url(), sha, blob.length, dest));   // dest present: trusted
    }
}
