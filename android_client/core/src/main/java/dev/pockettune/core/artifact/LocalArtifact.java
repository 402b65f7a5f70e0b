package dev.pockettune.core.artifact;

import java.nio.file.Path;

/** A verified artifact on this device: its directory (files at their manifest paths) and its manifest. */
public final class LocalArtifact {
    public final Path root;
    public final String manifestSha256;
    public final Manifest manifest;

    public LocalArtifact(Path root, String manifestSha256, Manifest manifest) {
        this.root = root;
        this.manifestSha256 = manifestSha256;
        this.manifest = manifest;
    }

    public Path file(String relative) {
        return ArtifactStore.safeResolve(root, relative);
    }

    public Path program() {
        return file(manifest.programFile);
    }

    /** The frozen-prefix program, or null for tiers without one. */
    public Path prefixProgram() {
        return manifest.prefixFile == null ? null : file(manifest.prefixFile);
    }

    public Path tokenizerDir() {
        return file(manifest.tokenizer.dir);
    }
}
