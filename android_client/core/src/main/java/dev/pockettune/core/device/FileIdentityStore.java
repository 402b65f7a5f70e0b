package dev.pockettune.core.device;

import dev.pockettune.core.json.Json;
import dev.pockettune.core.json.JsonOut;
import dev.pockettune.core.json.JsonWriter;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import org.json.JSONObject;

/** The identity as {@code device.json} (the Python device's file), written atomically. */
public final class FileIdentityStore implements IdentityStore {
    private final Path file;

    public FileIdentityStore(Path file) {
        this.file = file;
    }

    @Override
    public DeviceIdentity load(String coordinatorUrl) throws IOException {
        if (!Files.isRegularFile(file)) {
            return null;
        }
        JSONObject json = Json.parseObject(Files.readAllBytes(file), file.toString());
        if (!coordinatorUrl.equals(json.optString("coordinator"))) {
            return null;
        }
        return new DeviceIdentity(coordinatorUrl, json.optLong("device_id"), json.optString("token"));
    }

    @Override
    public void clear() throws IOException {
        Files.deleteIfExists(file);
    }

    @Override
    public void save(DeviceIdentity identity) throws IOException {
        String text = JsonWriter.compact(new JsonOut().put("coordinator", identity.coordinatorUrl)
                .put("device_id", identity.deviceId).put("token", identity.token).build());
        Path parent = file.toAbsolutePath().getParent();
        Files.createDirectories(parent);
        Path tmp = parent.resolve(file.getFileName() + ".tmp");
        Files.write(tmp, text.getBytes(StandardCharsets.UTF_8));
        tmp.toFile().setReadable(false, false);
        tmp.toFile().setReadable(true, true);
        Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }
}
