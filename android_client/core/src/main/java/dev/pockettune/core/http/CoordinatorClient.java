package dev.pockettune.core.http;

import dev.pockettune.core.json.Json;
import dev.pockettune.core.json.JsonModel;
import dev.pockettune.core.json.ProtocolFormatException;
import dev.pockettune.core.protocol.ErrorCode;
import dev.pockettune.core.protocol.ErrorResponse;
import dev.pockettune.core.protocol.HealthResponse;
import dev.pockettune.core.protocol.HeartbeatRequest;
import dev.pockettune.core.protocol.HeartbeatResponse;
import dev.pockettune.core.protocol.RegisterRequest;
import dev.pockettune.core.protocol.RegisterResponse;
import dev.pockettune.core.protocol.ResultMeta;
import dev.pockettune.core.protocol.ResultResponse;
import dev.pockettune.core.protocol.Task;
import java.io.IOException;
import java.net.MalformedURLException;
import java.net.URI;
import java.net.URISyntaxException;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;

/**
 * The device side of the coordinator's API ({@code /api/v1}, docs/coordinator.md), over HTTP.
 *
 * <p>Phones lose their connection and coordinators restart, so every call retries transient
 * failures (connection refused or reset, timeouts, 5xx, 429) with the {@link RetryPolicy}'s
 * backoff, waiting exactly as long as a {@code Retry-After} header asks when there is one. A 4xx
 * is the coordinator's considered answer and is raised at once as a {@link ProtocolException}.
 * This mirrors {@code fleet/transport.py}, the Python device, call for call.
 *
 * <p>Not thread-safe for concurrent calls that change the token; one worker owns one client.
 */
public final class CoordinatorClient {
    public static final String API = "api/v1/";
    public static final String NO_TASK_REASON_HEADER = "PocketTune-No-Task-Reason";
    /** The coordinator's default when a 204 carries no Retry-After. */
    static final long DEFAULT_NO_TASK_WAIT_MILLIS = 5_000;

    private final URI base;
    private final RetryPolicy retry;
    private final Timing timing;
    private final Random random;
    private final TransferStats transfers = new TransferStats();
    private volatile String token;
    private int connectTimeoutMillis = 15_000;
    private int readTimeoutMillis = 60_000;
    private String userAgent = "PocketTune-JVM/1";

    public CoordinatorClient(String baseUrl, RetryPolicy retry, Timing timing, Random random) {
        try {
            String normalized = baseUrl.endsWith("/") ? baseUrl : baseUrl + "/";
            this.base = new URI(normalized);
        } catch (URISyntaxException e) {
            throw new IllegalArgumentException("not a URL: " + baseUrl, e);
        }
        if (!"http".equals(base.getScheme()) && !"https".equals(base.getScheme())) {
            throw new IllegalArgumentException("the coordinator URL must be http:// or https://, got " + baseUrl);
        }
        this.retry = retry;
        this.timing = timing;
        this.random = random;
    }

    public CoordinatorClient(String baseUrl, RetryPolicy retry) {
        this(baseUrl, retry, Timing.SYSTEM, new Random());
    }

    public CoordinatorClient withTimeouts(int connectMillis, int readMillis) {
        this.connectTimeoutMillis = connectMillis;
        this.readTimeoutMillis = readMillis;
        return this;
    }

    public CoordinatorClient withUserAgent(String userAgent) {
        this.userAgent = userAgent;
        return this;
    }

    public void setToken(String token) {
        this.token = token;
    }

    public String token() {
        return token;
    }

    public TransferStats transfers() {
        return transfers;
    }

    public RetryPolicy retryPolicy() {
        return retry;
    }

    Timing timing() {
        return timing;
    }

    /**
     * Answers carry paths relative to the coordinator's base URL ({@code /api/v1/blobs/...});
     * resolving them against the base keeps a coordinator behind a path-prefixing proxy working.
     */
    public URL url(String path) {
        try {
            URI target = path.startsWith("http://") || path.startsWith("https://")
                    ? new URI(path) : base.resolve(path.startsWith("/") ? path.substring(1) : path);
            return target.toURL();
        } catch (URISyntaxException | MalformedURLException | IllegalArgumentException e) {
            throw new ProtocolFormatException("bad URL path from the coordinator: " + path, e);
        }
    }

    // --- the retry loop ------------------------------------------------------------------------

    /**
     * Sends a request until it gets one of {@code okStatuses}; the exchange's body is still open
     * (the caller closes it). Raises {@link ProtocolException} on a 4xx (or a 5xx once retries
     * ran out) and {@link CoordinatorUnavailableException} if it stays unreachable.
     */
    public HttpExchange open(String method, String path, Map<String, String> extraHeaders, byte[] body,
                             String contentType, int... okStatuses) throws CoordinatorException,
            InterruptedException {
        Map<String, String> headers = new LinkedHashMap<>();
        headers.put("User-Agent", userAgent);
        headers.put("Accept", "application/json");
        if (token != null) {
            headers.put("Authorization", "Bearer " + token);
        }
        if (contentType != null) {
            headers.put("Content-Type", contentType);
        }
        headers.putAll(extraHeaders);
        URL url = url(path);
        long started = timing.monotonicMillis();
        int attempt = 0;
        while (true) {
            Exception failure;
            long serverWait = -1;
            try {
                HttpExchange exchange = HttpExchange.open(method, url, headers, body, connectTimeoutMillis,
                        readTimeoutMillis);
                if (contains(okStatuses, exchange.status)) {
                    return exchange;
                }
                ProtocolException error;
                try {
                    error = errorFrom(exchange);
                } finally {
                    exchange.close();
                }
                boolean transientStatus = exchange.status >= 500 || exchange.status == 429;
                if (!transientStatus) {
                    throw error;
                }
                failure = error;
                serverWait = RetryAfter.millis(exchange.header("Retry-After"), Instant.now());
            } catch (ProtocolException e) {
                throw e;
            } catch (IOException e) {
                failure = e;
            }
            long wait = serverWait >= 0 ? retry.serverDelay(serverWait) : retry.delayMillis(attempt, random);
            attempt++;
            if (retry.exhausted(timing.monotonicMillis() - started, wait)) {
                if (failure instanceof ProtocolException) {
                    throw (ProtocolException) failure;
                }
                throw new CoordinatorUnavailableException(method + " " + url + " failed after " + attempt
                        + " attempts: " + failure, failure);
            }
            timing.sleep(wait);
        }
    }

    private static boolean contains(int[] statuses, int status) {
        return Arrays.stream(statuses).anyMatch(s -> s == status);
    }

    /** The protocol's error body, or a generic one when a proxy answered with something else. */
    static ProtocolException errorFrom(HttpExchange exchange) {
        byte[] raw;
        try {
            raw = exchange.readBody();
        } catch (IOException e) {
            return new ProtocolException(exchange.status, "http_error", "(body unreadable: " + e + ")");
        }
        String text = new String(raw, StandardCharsets.UTF_8);
        try {
            ErrorResponse error = ErrorResponse.fromJson(Json.parseObject(text, "error body"));
            return new ProtocolException(exchange.status, error.code, error.message);
        } catch (ProtocolFormatException notProtocol) {
            String shown = text.length() > 200 ? text.substring(0, 200) : text;
            return new ProtocolException(exchange.status, "http_error", shown);
        }
    }

    private byte[] call(String method, String path, JsonModel body, int... ok)
            throws CoordinatorException, InterruptedException {
        byte[] payload = body == null ? null : body.toJsonString().getBytes(StandardCharsets.UTF_8);
        try (HttpExchange exchange = open(method, path, Collections.<String, String>emptyMap(), payload,
                body == null ? null : "application/json", ok)) {
            return exchange.status == 204 ? new byte[0] : exchange.readBody();
        } catch (CoordinatorException | InterruptedException e) {
            throw e;
        } catch (IOException e) {
            throw new CoordinatorUnavailableException(method + " " + path + ": answer cut off: " + e, e);
        }
    }

    // --- protocol calls ------------------------------------------------------------------------

    public HealthResponse health() throws CoordinatorException, InterruptedException {
        return HealthResponse.fromJson(Json.parseObject(call("GET", API + "health", null, 200), "health"));
    }

    /** Registers with the enrollment key and keeps the returned token for later calls. */
    public RegisterResponse register(RegisterRequest request) throws CoordinatorException, InterruptedException {
        String previous = token;
        token = null;   // registration authenticates with the enrollment key, not a stale token
        try {
            RegisterResponse answer = RegisterResponse.fromJson(
                    Json.parseObject(call("POST", API + "devices", request, 201), "register answer"));
            token = answer.token;
            return answer;
        } finally {
            if (token == null) {
                token = previous;
            }
        }
    }

    public HeartbeatResponse heartbeat(HeartbeatRequest request) throws CoordinatorException, InterruptedException {
        return HeartbeatResponse.fromJson(
                Json.parseObject(call("POST", API + "devices/heartbeat", request, 200), "heartbeat answer"));
    }

    /** A task, or none with the coordinator's reason and suggested wait. */
    public TaskOffer nextTask() throws CoordinatorException, InterruptedException {
        try (HttpExchange exchange = open("GET", API + "tasks/next", Collections.<String, String>emptyMap(), null, null, 200, 204)) {
            if (exchange.status == 204) {
                long wait = RetryAfter.millis(exchange.header("Retry-After"), Instant.now());
                return TaskOffer.none(exchange.header(NO_TASK_REASON_HEADER),
                        wait >= 0 ? retry.serverDelay(wait) : DEFAULT_NO_TASK_WAIT_MILLIS);
            }
            return TaskOffer.of(Task.fromJson(Json.parseObject(exchange.readBody(), "task")));
        } catch (CoordinatorException | InterruptedException e) {
            throw e;
        } catch (IOException e) {
            throw new CoordinatorUnavailableException("GET tasks/next: answer cut off: " + e, e);
        }
    }

    /**
     * Uploads a result: {@code meta} as a JSON form field and the safetensors {@code update} as a
     * file part. A 409 {@code already_submitted} (an earlier attempt landed but its answer was
     * lost) counts as accepted.
     */
    public UploadOutcome uploadResult(String uploadUrl, ResultMeta meta, byte[] update)
            throws CoordinatorException, InterruptedException {
        Multipart multipart = new Multipart()
                .field("meta", "application/json", meta.toJsonString().getBytes(StandardCharsets.UTF_8))
                .file("update", "update.safetensors", "application/octet-stream", update);
        return upload(uploadUrl, new MultipartBody(multipart.finish(), multipart.contentType()), update.length);
    }

    private UploadOutcome upload(String uploadUrl, MultipartBody body, long updateBytes)
            throws CoordinatorException, InterruptedException {
        long started = System.nanoTime();
        try (HttpExchange exchange = open("POST", uploadUrl, Collections.<String, String>emptyMap(), body.bytes, body.contentType, 201)) {
            ResultResponse answer = ResultResponse.fromJson(Json.parseObject(exchange.readBody(), "result answer"));
            double seconds = (System.nanoTime() - started) / 1e9;
            transfers.addUp(updateBytes, seconds);
            return new UploadOutcome(answer, false, updateBytes, seconds);
        } catch (ProtocolException e) {
            if (!e.is(ErrorCode.ALREADY_SUBMITTED)) {
                throw e;
            }
            double seconds = (System.nanoTime() - started) / 1e9;
            transfers.addUp(updateBytes, seconds);
            return new UploadOutcome(null, true, updateBytes, seconds);
        } catch (CoordinatorException | InterruptedException e) {
            throw e;
        } catch (IOException e) {
            throw new CoordinatorUnavailableException("POST " + uploadUrl + ": answer cut off: " + e, e);
        }
    }

    /** A finished multipart body and its content type. */
    static final class MultipartBody {
        final byte[] bytes;
        final String contentType;

        MultipartBody(byte[] bytes, String contentType) {
            this.bytes = bytes;
            this.contentType = contentType;
        }
    }
}
