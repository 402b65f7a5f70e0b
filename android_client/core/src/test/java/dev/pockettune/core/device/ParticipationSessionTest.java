package dev.pockettune.core.device;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.http.CoordinatorClient;
import dev.pockettune.core.http.ProtocolException;
import dev.pockettune.core.http.RetryPolicy;
import dev.pockettune.core.http.TaskOffer;
import dev.pockettune.core.protocol.Capabilities;
import dev.pockettune.core.testing.FakeTiming;
import dev.pockettune.core.testing.TestServer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.Test;

/** Registration is done once and remembered; a token the coordinator forgot is dropped. */
public class ParticipationSessionTest {
    private static final DeviceStatus PHONE = new DeviceStatus() {
        @Override
        public String name() {
            return "pixel-7a";
        }

        @Override
        public String platform() {
            return "android-14";
        }

        @Override
        public Capabilities capabilities() {
            return new Capabilities(6144L, 8L, 21.5, 40.0, List.of("executorch"), List.of("sgd"));
        }

        @Override
        public Double battery() {
            return 87.0;
        }

        @Override
        public Boolean charging() {
            return true;
        }
    };

    @Test
    public void registersOnceKeepsTheTokenAndForgetsItOn401() throws Exception {
        AtomicInteger registrations = new AtomicInteger();
        AtomicReference<String> registerBody = new AtomicReference<>();
        AtomicReference<String> validToken = new AtomicReference<>("tok-1");
        Path dir = Files.createTempDirectory("session");
        try (TestServer server = new TestServer()) {
            server.handle("/api/v1/devices", exchange -> {
                registerBody.set(new String(TestServer.body(exchange), StandardCharsets.UTF_8));
                int n = registrations.incrementAndGet();
                validToken.set("tok-" + n);
                TestServer.json(exchange, 201, "{\"device_id\":" + (16 + n) + ",\"token\":\"tok-" + n
                        + "\",\"heartbeat_interval_s\":30.0}");
            });
            server.handle("/api/v1/tasks/next", exchange -> {
                String auth = exchange.getRequestHeaders().getFirst("Authorization");
                if (!("Bearer " + validToken.get()).equals(auth)) {
                    TestServer.json(exchange, 401, "{\"error\":{\"code\":\"unauthorized\",\"message\":\"invalid bearer token\"}}");
                    return;
                }
                exchange.getResponseHeaders().set("Retry-After", "10");
                exchange.getResponseHeaders().set("PocketTune-No-Task-Reason", "no running job");
                TestServer.respond(exchange, 204, null, new byte[0]);
            });
            String url = server.baseUrl();
            FileIdentityStore store = new FileIdentityStore(dir.resolve("device.json"));

            ParticipationSession first = new ParticipationSession(new CoordinatorClient(url, RetryPolicy.boundedBy(5_000),
                    new FakeTiming(), new Random(1)), url, "enroll", store, PHONE);
            assertEquals(17, first.ensureRegistered());
            assertTrue(registerBody.get().contains("\"enrollment_key\":\"enroll\""));
            assertTrue(registerBody.get().contains("\"battery\":87.0"));
            assertTrue(registerBody.get(), registerBody.get().contains("\"optimizers\":[\"sgd\"]"));
            TaskOffer offer = first.nextTask();
            assertFalse(offer.hasTask());
            assertEquals("no running job", offer.noTaskReason);

            // A new process (the next worker run) reuses the saved token: no second registration.
            ParticipationSession second = new ParticipationSession(new CoordinatorClient(url, RetryPolicy.boundedBy(5_000),
                    new FakeTiming(), new Random(1)), url, "enroll", store, PHONE);
            assertEquals(17, second.ensureRegistered());
            second.nextTask();
            assertEquals(1, registrations.get());

            // The coordinator lost its database: the token is refused, forgotten, and the next call registers anew.
            validToken.set("tok-from-another-life");
            try {
                second.nextTask();
                fail("a refused token must surface");
            } catch (ProtocolException e) {
                assertEquals(401, e.status);
            }
            assertNull(store.load(url));
            validToken.set("tok-2");
            second.nextTask();
            assertEquals(2, registrations.get());
            assertEquals(18, store.load(url).deviceId);
        }
    }
}
