package dev.pockettune.core.artifact;

import dev.pockettune.core.http.BlobDownloader;
import dev.pockettune.core.http.CoordinatorException;
import dev.pockettune.core.http.IntegrityException;
import dev.pockettune.core.json.Json;
import dev.pockettune.core.protocol.Task;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashSet;
import java.util.Set;

/**
 * The device's content-addressed cache of artifacts and adapters, as in {@code fleet/device.py}:
 * {@code artifacts/<manifest sha256>/manifest.json} plus each device file at its manifest path,
 * and {@code adapters/<sha256>.ptd}. A file already there was verified when it arrived and is not
 * fetched again; every new file is sha256-checked by {@link BlobDownloader}.
 *
 * <p>The task and the manifest must agree: each file the task lists must be in the manifest with
 * the same sha256, and every file the manifest marks {@code device: true} must be listed (a phone
 * cannot train without, e.g., its tokenizer).
 */
public final class ArtifactStore {
    public static final String RUNTIME_FORMAT = "executorch";

    private final Path base;
    private final BlobDownloader downloader;

    public ArtifactStore(Path base, BlobDownloader downloader) {
        this.base = base;
        this.downloader = downloader;
    }

    public Path artifactDir(String manifestSha256) {
        return base.resolve("artifacts").resolve(manifestSha256);
    }

    /** Fetches (or finds) the task's artifact; returns it once every device file is verified. */
    public LocalArtifact fetch(Task.Artifact artifact) throws CoordinatorException, IOException, InterruptedException {
        if (!RUNTIME_FORMAT.equals(artifact.format)) {
            throw new IntegrityException("artifact format '" + artifact.format + "' is not " + RUNTIME_FORMAT
                    + ", the runtime this app has");
        }
        Path root = artifactDir(artifact.sha256);
        Path manifestPath = root.resolve(Manifest.FILE);
        downloader.download(artifact.url, artifact.sha256, artifact.size, manifestPath);
        Manifest manifest = Manifest.parse(Json.parseObject(Files.readAllBytes(manifestPath), "manifest"));
        Set<String> listed = new HashSet<>();
        for (Task.ArtifactFile file : artifact.files) {
            Path target = safeResolve(root, file.path);
            Manifest.FileEntry entry = manifest.files.get(file.path);
            if (entry == null || !entry.sha256.equals(file.sha256)) {
                throw new IntegrityException(file.path + ": the task's sha256 is not the manifest's");
            }
            downloader.download(file.url, file.sha256, file.size, target);
            listed.add(file.path);
        }
        for (Manifest.FileEntry entry : manifest.deviceFiles()) {
            if (!listed.contains(entry.path)) {
                throw new IntegrityException("the manifest's device file " + entry.path + " is not in the task");
            }
        }
        return new LocalArtifact(root, artifact.sha256, manifest);
    }

    /** The round's start adapter, as {@code adapters/<sha256>.ptd}. */
    public Path fetchAdapter(Task.Adapter adapter) throws CoordinatorException, IOException, InterruptedException {
        if (!"ptd".equals(adapter.format)) {
            throw new IntegrityException("adapter format '" + adapter.format + "' is not ptd");
        }
        Path target = base.resolve("adapters").resolve(adapter.sha256 + ".ptd");
        downloader.download(adapter.url, adapter.sha256, adapter.size, target);
        return target;
    }

    /** {@code root/relative}, refusing absolute paths and {@code ..}: a path from the network must stay inside. */
    static Path safeResolve(Path root, String relative) {
        if (relative.isEmpty() || relative.startsWith("/") || relative.startsWith("\\") || relative.contains("\\")) {
            throw new IllegalArgumentException("artifact path '" + relative + "' is not a relative POSIX path");
        }
        for (String part : relative.split("/")) {
            if (part.isEmpty() || part.equals("..") || part.equals(".")) {
                throw new IllegalArgumentException("artifact path '" + relative + "' escapes the artifact directory");
            }
        }
        Path resolved = root.resolve(relative).normalize();
        if (!resolved.startsWith(root.normalize())) {
            throw new IllegalArgumentException("artifact path '" + relative + "' escapes the artifact directory");
        }
        return resolved;
    }
}
