package dev.pockettune.core.http;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.protocol.ErrorCode;
import dev.pockettune.core.protocol.ResultMeta;
import dev.pockettune.core.testing.FakeTiming;
import dev.pockettune.core.testing.TestServer;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.Test;

/** The client against a real loopback HTTP server: retries, Retry-After, errors, uploads. */
public class CoordinatorClientTest {
    private static final String HEALTH = "{\"status\":\"ok\",\"service\":\"pockettune-coordinator\","
            + "\"database\":\"sqlite\",\"schema_revision\":\"0001\",\"time\":\"2026-11-22T08:08:23.780Z\"}";

    private static CoordinatorClient client(TestServer server, FakeTiming timing, long giveUpMillis) {
        return new CoordinatorClient(server.baseUrl(), RetryPolicy.boundedBy(giveUpMillis), timing, new Random(7))
                .withTimeouts(5_000, 5_000);
    }

    @Test
    public void transientServerErrorsAreRetriedWithGrowingJitteredBackoff() throws Exception {
        AtomicInteger calls = new AtomicInteger();
        try (TestServer server = new TestServer()) {
            server.handle("/api/v1/health", exchange -> {
                if (calls.incrementAndGet() <= 3) {
                    TestServer.json(exchange, 500, "{\"error\":{\"code\":\"internal_error\",\"message\":\"boom\"}}");
                } else {
                    TestServer.json(exchange, 200, HEALTH);
                }
            });
            FakeTiming timing = new FakeTiming();
            assertTrue(client(server, timing, 60_000).health().ok());
            assertEquals(4, calls.get());
            assertEquals(3, timing.sleeps.size());
            long[] bases = {500, 1000, 2000};
            for (int i = 0; i < 3; i++) {
                long wait = timing.sleeps.get(i);
                assertTrue("wait " + wait + " within +-25% of " + bases[i],
                        wait >= bases[i] * 0.75 && wait <= bases[i] * 1.25);
            }
        }
    }

    @Test
    public void retryAfterOn503IsHonouredInsteadOfTheBackoff() throws Exception {
        AtomicInteger calls = new AtomicInteger();
        try (TestServer server = new TestServer()) {
            server.handle("/api/v1/health", exchange -> {
                if (calls.incrementAndGet() == 1) {
                    exchange.getResponseHeaders().set("Retry-After", "7");
                    TestServer.json(exchange, 503, "{\"error\":{\"code\":\"unavailable\",\"message\":\"db\"}}");
                } else {
                    TestServer.json(exchange, 200, HEALTH);
                }
            });
            FakeTiming timing = new FakeTiming();
            client(server, timing, 60_000).health();
            assertEquals(java.util.List.of(7000L), timing.sleeps);
        }
    }

    @Test
    public void aClientErrorIsRaisedAtOnceWithItsCode() throws Exception {
        AtomicInteger calls = new AtomicInteger();
        try (TestServer server = new TestServer()) {
            server.handle("/api/v1/devices/heartbeat", exchange -> {
                calls.incrementAndGet();
                exchange.getResponseHeaders().set("WWW-Authenticate", "Bearer");
                TestServer.json(exchange, 401, "{\"error\":{\"code\":\"unauthorized\",\"message\":\"invalid bearer token\"}}");
            });
            FakeTiming timing = new FakeTiming();
            try {
                client(server, timing, 60_000).heartbeat(new dev.pockettune.core.protocol.HeartbeatRequest(50.0, true, null));
                fail("401 must raise");
            } catch (ProtocolException e) {
                assertEquals(401, e.status);
                assertTrue(e.is(ErrorCode.UNAUTHORIZED));
                assertEquals("invalid bearer token", e.serverMessage);
            }
            assertEquals(1, calls.get());
            assertTrue(timing.sleeps.isEmpty());
        }
    }

    @Test
    public void anUnreachableCoordinatorIsGivenUpOnOnlyAfterTheBound() throws Exception {
        int port;
        try (ServerSocket socket = new ServerSocket(0)) {
            port = socket.getLocalPort();   // closed again: connections are refused
        }
        FakeTiming timing = new FakeTiming();
        CoordinatorClient client = new CoordinatorClient("http://127.0.0.1:" + port, RetryPolicy.boundedBy(20_000),
                timing, new Random(1));
        try {
            client.health();
            fail("nothing listens there");
        } catch (CoordinatorUnavailableException expected) {
            long waited = timing.sleeps.stream().mapToLong(Long::longValue).sum();
            assertTrue("waited " + waited, waited <= 20_000 && waited > 5_000);
            assertTrue(timing.sleeps.size() >= 3);
        }
    }

    @Test
    public void noTaskCarriesTheReasonAndRetryAfter() throws Exception {
        try (TestServer server = new TestServer()) {
            server.handle("/api/v1/tasks/next", exchange -> {
                exchange.getResponseHeaders().set("Retry-After", "10");
                exchange.getResponseHeaders().set("PocketTune-No-Task-Reason", "no running job");
                TestServer.respond(exchange, 204, null, new byte[0]);
            });
            CoordinatorClient client = client(server, new FakeTiming(), 60_000);
            client.setToken("secret");
            TaskOffer offer = client.nextTask();
            assertFalse(offer.hasTask());
            assertEquals("no running job", offer.noTaskReason);
            assertEquals(10_000, offer.retryAfterMillis);
        }
    }

    @Test
    public void uploadSendsMetaAndUpdateAsMultipartAndTreatsAlreadySubmittedAsDone() throws Exception {
        byte[] update = {1, 2, 3, 4, 5, 0, (byte) 0xff};
        AtomicInteger calls = new AtomicInteger();
        StringBuilder seen = new StringBuilder();
        try (TestServer server = new TestServer()) {
            server.handle("/api/v1/tasks/41/result", exchange -> {
                String type = exchange.getRequestHeaders().getFirst("Content-Type");
                String auth = exchange.getRequestHeaders().getFirst("Authorization");
                byte[] body = TestServer.body(exchange);
                String text = new String(body, StandardCharsets.ISO_8859_1);
                seen.append(type).append('|').append(auth).append('|').append(text);
                if (calls.incrementAndGet() == 1) {
                    TestServer.json(exchange, 201, "{\"update_id\":5,\"task_id\":41,\"job_id\":3,\"round\":2,"
                            + "\"sha256\":\"" + "ab".repeat(32) + "\",\"size\":7,\"delta_norm\":0.25,"
                            + "\"accepted_updates\":1,\"round_status\":\"closed\"}");
                } else {
                    TestServer.json(exchange, 409, "{\"error\":{\"code\":\"already_submitted\",\"message\":\"done\"}}");
                }
            });
            CoordinatorClient client = client(server, new FakeTiming(), 60_000);
            client.setToken("tok");
            ResultMeta meta = new ResultMeta(16, 2.5, 2.0, 1.5, 10, update.length, "ab".repeat(32), null);
            UploadOutcome first = client.uploadResult("/api/v1/tasks/41/result", meta, update);
            assertFalse(first.alreadySubmitted);
            assertEquals(5, first.response.updateId);
            assertEquals(0.25, first.response.deltaNorm.doubleValue(), 0);
            UploadOutcome second = client.uploadResult("/api/v1/tasks/41/result", meta, update);
            assertTrue(second.alreadySubmitted);
            assertEquals(2 * update.length, client.transfers().bytesUp());
        }
        String request = seen.toString();
        assertTrue(request.startsWith("multipart/form-data; boundary=pockettune-"));
        assertTrue(request.contains("|Bearer tok|"));
        assertTrue(request.contains("Content-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n"
                + "{\"num_examples\":16,"));
        assertTrue(request.contains("Content-Disposition: form-data; name=\"update\"; filename=\"update.safetensors\"\r\n"
                + "Content-Type: application/octet-stream\r\n\r\n"
                + new String(update, StandardCharsets.ISO_8859_1) + "\r\n"));
    }

    @Test
    public void relativeAnswerPathsResolveAgainstAPrefixedBase() {
        CoordinatorClient client = new CoordinatorClient("http://10.0.2.2:8080/pockettune", RetryPolicy.forever());
        assertEquals("http://10.0.2.2:8080/pockettune/api/v1/blobs/ab", client.url("/api/v1/blobs/ab").toString());
        assertEquals("http://10.0.2.2:8080/pockettune/api/v1/health", client.url(CoordinatorClient.API + "health").toString());
    }

    @Test
    public void retryAfterParsesSecondsAndDates() {
        java.time.Instant now = java.time.Instant.parse("2026-11-22T08:00:00Z");
        assertEquals(10_000, RetryAfter.millis("10", now));
        assertEquals(30_000, RetryAfter.millis("Sun, 22 Nov 2026 08:00:30 GMT", now));
        assertEquals(-1, RetryAfter.millis("soon", now));
        assertEquals(-1, RetryAfter.millis(null, now));
    }

    @Test
    public void sha256IsLowercaseHex() {
        assertEquals("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Sha256.of(new byte[0]));
        assertArrayEquals(new byte[0], new byte[0]);
    }
}
