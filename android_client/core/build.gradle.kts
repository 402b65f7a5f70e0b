// The protocol core: plain Java 17, no android.* imports, so the same code runs in the app and
// in JVM tests. org.json is compileOnly: on the phone the Android framework provides it.
plugins {
    `java-library`
}

java {
    toolchain {
        languageVersion.set(JavaLanguageVersion.of(17))
    }
}

dependencies {
    compileOnly(libs.android.json)
    testImplementation(libs.android.json)
    testImplementation(libs.junit)
}

tasks.withType<JavaCompile>().configureEach {
    options.encoding = "UTF-8"
    options.release.set(17)
}

tasks.test {
    // The shared protocol examples and tokenizer vectors live in the Python repository's tests/.
    systemProperty("pockettune.protocolDir", rootDir.resolve("../tests/protocol").absolutePath)
    systemProperty("pockettune.tokenizerDir", System.getenv("POCKETTUNE_TOKENIZER_DIR") ?: "")
    // Needs a running coordinator: scripts/jvm_tests.sh integration (via tests/android/test_jvm_core.py).
    exclude("**/integration/**")
}
