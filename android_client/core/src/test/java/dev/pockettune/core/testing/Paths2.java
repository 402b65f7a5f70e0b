package dev.pockettune.core.testing;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

/** Where the tests find the repository's shared files (scripts/jvm_tests.sh passes them as properties). */
public final class Paths2 {
    private Paths2() {
    }

    /** {@code tests/protocol/} of the repository. */
    public static Path protocolDir() {
        String configured = System.getProperty("pockettune.protocolDir");
        Path dir = configured != null ? Paths.get(configured) : Paths.get("tests", "protocol");
        if (!Files.isDirectory(dir)) {
            throw new AssertionError("tests/protocol not found at " + dir.toAbsolutePath()
                    + "; run through scripts/jvm_tests.sh or pass -Dpockettune.protocolDir");
        }
        return dir;
    }

    /** A file under src/test/resources (the build copies them to the test classpath). */
    public static Path resource(String relative) {
        java.net.URL url = Paths2.class.getClassLoader().getResource(relative);
        if (url == null) {
            throw new AssertionError("test resource " + relative + " is missing from the classpath");
        }
        try {
            return Paths.get(url.toURI());
        } catch (java.net.URISyntaxException e) {
            throw new AssertionError(e);
        }
    }
}
