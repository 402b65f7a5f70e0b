#!/usr/bin/env bash
# Builds the Android client's plain-JVM core (android_client/core) with javac and runs its JUnit 4
# tests, using Debian's openjdk, junit4 and libandroid-json-java (org.json: the API Android ships).
#
#   scripts/jvm_tests.sh [unit|integration|all]      (default: unit)
#
# unit         every test class except the integration test; needs no network and no Python.
#              The tokenizer vectors test looks for SmolLM2's tokenizer.json in
#              $POCKETTUNE_TOKENIZER_DIR/<name>/tokenizer.json or the models/registry.py cache.
# integration  CoordinatorIntegrationTest against a running coordinator; needs
#              POCKETTUNE_COORDINATOR_URL, POCKETTUNE_ENROLLMENT_KEY, POCKETTUNE_IT_STATE_DIR and
#              POCKETTUNE_IT_REPORT (tests/android/test_jvm_core.py sets them after starting one).
#
# Missing Debian packages are installed (as root, or with sudo); otherwise it says what to install.
# Output classes go to android_client/core/build/jvm (ignored by git). Exits non-zero on any
# failure, on a skipped test, and when no test ran.
set -euo pipefail

MODE="${1:-unit}"
case "$MODE" in
    unit|integration|all) ;;
    *) echo "usage: $0 [unit|integration|all]" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CORE="$REPO/android_client/core"
BUILD="$CORE/build/jvm"
JSON_JAR=/usr/share/java/com.android.json.jar
JUNIT_JAR=/usr/share/java/junit4.jar
HAMCREST_JAR=/usr/share/java/hamcrest-core.jar

need=()
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
[ -f "$JUNIT_JAR" ] && [ -f "$HAMCREST_JAR" ] || need+=(junit4)
[ -f "$JSON_JAR" ] || need+=(libandroid-json-java)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "jvm_tests.sh: missing Debian packages ${need[*]} and this user cannot install them;" \
             "run as root: apt-get install ${need[*]}" >&2
        exit 1
    fi
    echo "jvm_tests.sh: installing ${need[*]} (Debian packages) for the JVM tests" >&2
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    }
fi
for jar in "$JSON_JAR" "$JUNIT_JAR" "$HAMCREST_JAR"; do
    [ -f "$jar" ] || { echo "jvm_tests.sh: $jar is still missing after installing" >&2; exit 1; }
done
javac -version >/dev/null 2>&1 || { echo "jvm_tests.sh: javac does not run" >&2; exit 1; }

# Compile only when a source or resource changed since the last build (keeps runs to seconds).
STAMP="$BUILD/.stamp"
if [ ! -f "$STAMP" ] || [ -n "$(find "$CORE/src" -newer "$STAMP" -print -quit)" ]; then
    rm -rf "$BUILD"
    mkdir -p "$BUILD/main" "$BUILD/test"
    find "$CORE/src/main/java" -name '*.java' > "$BUILD/main-sources.txt"
    find "$CORE/src/test/java" -name '*.java' > "$BUILD/test-sources.txt"
    # --release 17: the language level the app module's Gradle build compiles core/ with.
    javac --release 17 -Xlint:all,-serial -Werror -encoding UTF-8 -cp "$JSON_JAR" -d "$BUILD/main" \
        @"$BUILD/main-sources.txt"
    javac --release 17 -encoding UTF-8 -cp "$BUILD/main:$JSON_JAR:$JUNIT_JAR:$HAMCREST_JAR" -d "$BUILD/test" \
        @"$BUILD/test-sources.txt"
    cp -r "$CORE/src/test/resources/." "$BUILD/test/"
    touch "$STAMP"
fi

CLASSPATH="$BUILD/main:$BUILD/test:$JSON_JAR:$JUNIT_JAR:$HAMCREST_JAR"
INTEGRATION=dev.pockettune.core.integration.CoordinatorIntegrationTest
classes=()
if [ "$MODE" = unit ] || [ "$MODE" = all ]; then
    while IFS= read -r file; do
        name="${file#"$CORE/src/test/java/"}"
        name="${name%.java}"
        name="${name//\//.}"
        [ "$name" = "$INTEGRATION" ] || classes+=("$name")
    done < <(find "$CORE/src/test/java" -name '*Test.java' | sort)
fi
if [ "$MODE" = integration ] || [ "$MODE" = all ]; then
    classes+=("$INTEGRATION")
fi

cd "$REPO"
exec java -cp "$CLASSPATH" \
    -Dpockettune.protocolDir="$REPO/tests/protocol" \
    -Dpockettune.tokenizerDir="${POCKETTUNE_TOKENIZER_DIR:-}" \
    dev.pockettune.core.testing.JvmTestMain "${classes[@]}"
