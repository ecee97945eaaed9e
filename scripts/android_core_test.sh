#!/usr/bin/env bash
# Compiles the Android demo's JVM core (android_demo/core: src/main + src/test, Kotlin) with kotlinc from the
# npm package kotlin-compiler and runs its JUnit 4 tests against the golden files written by
# scripts/make_android_goldens.py. Offline; the tools come from scripts/install_kotlin_toolchain.sh.
# Prints JUnit's summary ("OK (N tests)" or "FAILURES!!!") and exits non-zero on any failure.
#   ANDROID_CORE_OUT=DIR   also let tests write cross-check files there (a task file for the Python side)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CORE="$ROOT/android_demo/core"
TOOLS="${EDGE_TOOLS_DIR:-$ROOT/.tools}"
KOTLIN_HOME="${KOTLIN_HOME:-$TOOLS/kotlin/node_modules/kotlin-compiler}"
KOTLINC="$KOTLIN_HOME/bin/kotlinc"
JUNIT="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
HAMCREST="${HAMCREST_JAR:-$(ls /usr/share/java/hamcrest-core.jar /usr/share/java/hamcrest.jar 2>/dev/null | head -1)}"
for f in "$KOTLINC" "$JUNIT" "$HAMCREST"; do
  if [ ! -e "$f" ]; then
    echo "missing ${f:-hamcrest jar}: run scripts/install_kotlin_toolchain.sh first" >&2
    exit 2
  fi
done
command -v java >/dev/null || { echo "java is missing: run scripts/install_kotlin_toolchain.sh" >&2; exit 2; }

BUILD="$CORE/build/kotlinc"
mkdir -p "$BUILD"
LIB="$KOTLIN_HOME/lib"
TEST_LIBS="$JUNIT:$HAMCREST:$LIB/kotlin-test.jar:$LIB/kotlin-test-junit.jar"
export JAVA_OPTS="${JAVA_OPTS:--Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"

# Rebuild only when a source changed (the stamp is a hash of every source file and the compiler version).
stamp() { (cat "$KOTLIN_HOME/build.txt"; find "$CORE/src/$1/kotlin" -name '*.kt' -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-64; }
start=$(date +%s)
if [ "$(cat "$BUILD/main.stamp" 2>/dev/null)" != "$(stamp main)" ] || [ ! -f "$BUILD/core.jar" ]; then
  rm -f "$BUILD/core.jar" "$BUILD/test.stamp"
  "$KOTLINC" -nowarn -jvm-target 17 -d "$BUILD/core.jar" "$CORE/src/main/kotlin"
  stamp main > "$BUILD/main.stamp"
fi
if [ "$(cat "$BUILD/test.stamp" 2>/dev/null)" != "$(stamp test)" ] || [ ! -f "$BUILD/core-test.jar" ]; then
  rm -f "$BUILD/core-test.jar"
  "$KOTLINC" -nowarn -jvm-target 17 -cp "$BUILD/core.jar:$TEST_LIBS" -d "$BUILD/core-test.jar" "$CORE/src/test/kotlin"
  stamp test > "$BUILD/test.stamp"
fi
# Type-check the app's ONNX Runtime engine (thin Android wiring) against the core and ORT Java API stubs:
# the real AAR needs Maven Central, but a wrong call into the core or the ORT API fails here.
ENGINE="$ROOT/android_demo/app/src/main/kotlin/com/edgeeigenlora/demo/OrtEngine.kt"
STUBS="$ROOT/android_demo/tools/ort-api-stubs"
engine_stamp() { (stamp main; sha256sum "$ENGINE"; find "$STUBS" -name '*.java' | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-64; }
if [ "$(cat "$BUILD/engine.stamp" 2>/dev/null)" != "$(engine_stamp)" ]; then
  rm -rf "$BUILD/ort-stubs" "$BUILD/engine-check.jar"
  javac -nowarn -d "$BUILD/ort-stubs" $(find "$STUBS" -name '*.java')
  "$KOTLINC" -nowarn -jvm-target 17 -cp "$BUILD/core.jar:$BUILD/ort-stubs" -d "$BUILD/engine-check.jar" "$ENGINE"
  engine_stamp > "$BUILD/engine.stamp"
  echo "app engine (OrtEngine.kt) type-checks against the core and the ONNX Runtime Java API"
fi
compiled=$(date +%s)

# Every top-level class whose name ends in Test (a file may hold several).
CLASSES=$(jar tf "$BUILD/core-test.jar" | grep -E '^[^$]*Test\.class$' | sed -e 's|\.class$||' -e 's|/|.|g' | LC_ALL=C sort)
set +e
java -Xmx512m -XX:+UseSerialGC -Dgolden.dir="$CORE/src/test/resources/golden" \
  ${ANDROID_CORE_OUT:+-Dcore.out.dir="$ANDROID_CORE_OUT"} \
  -cp "$BUILD/core.jar:$BUILD/core-test.jar:$LIB/kotlin-stdlib.jar:$TEST_LIBS" org.junit.runner.JUnitCore $CLASSES
rc=$?
set -e
echo "android core: compile $((compiled - start)) s, tests $(( $(date +%s) - compiled )) s"
exit $rc
