#!/usr/bin/env bash
# Install everything the tests need and run the whole suite.  Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# test audio is made with Debian's espeak-ng, sox and ffmpeg; the captions page test drives
# Debian's chromium (headless) through the playwright package's own driver
need=()
for c in espeak-ng sox ffmpeg chromium; do command -v "$c" >/dev/null || need+=("$c"); done
# the Java SDK suite (tests/java) needs a JDK 17 and Maven
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
scripts/bootstrap.sh --test
# a real single-node Kafka broker (KRaft) from Maven Central; tests start and stop it themselves
scripts/kafka.sh install >&2
scripts/helm.sh >&2        # pinned Helm from the Go module proxy, cached in ~/.cache/callscribe
# the pinned dependencies and plugins of the Java SDK suite (tests/java/pom.xml), compiled once
# here so that tests/test_java_sdk.py runs Maven offline
(cd tests/java && mvn -q -B -Dtest=NONE -Dsurefire.failIfNoSpecifiedTests=false test >&2)
# lint (pyflakes + pycodestyle, pinned ruff; rules in pyproject.toml) before the tests
.venv/bin/ruff check --quiet services/
export CALLSCRIBE_REQUIRE_KAFKA=1
export CALLSCRIBE_REQUIRE_JAVA=1
export CALLSCRIBE_REQUIRE_BROWSER=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
