"""The DashScope Java SDK (``com.alibaba:dashscope-sdk-java``, pinned in tests/java/pom.xml),
unchanged, against a real ``callscribe serve`` subprocess with the real model.

The JUnit 5 suite in tests/java uses the SDK as its documentation shows (Recognition.call on
a file, call + sendAudioFrame with format "wav" and raw PCM and with "pcm", streamCall with a
Flowable, an 8 kHz model, VocabularyService, OmniRealtimeConversation in VAD and manual mode).
This test starts the server on a free port, points the SDK at it through the environment
variables the SDK reads (DASHSCOPE_WEBSOCKET_BASE_URL, DASHSCOPE_HTTP_BASE_URL,
DASHSCOPE_API_KEY), passes the recordings folder (-Dcallscribe.audio; the Java tests skip
with a reason without it) and runs ``mvn -q -B -o test``: Surefire's result decides.

Maven must have resolved the pinned dependencies before (scripts/test.sh does; the run is
offline so it never downloads mid-test).  Without ``mvn`` this test is skipped with a reason,
unless ``CALLSCRIBE_REQUIRE_JAVA=1`` (set by scripts/test.sh): then it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO_ROOT, _shared_audio_dir

JAVA_DIR = REPO_ROOT / "tests" / "java"
KEY = "sk-java-sdk-suite"
#: the whole Java run (all tests, one model on a loaded machine) must end within this
MAVEN_DEADLINE_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"callscribe serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling an HTTP endpoint of another process; bounded by ``end``
    raise AssertionError(f"callscribe serve not ready at {url} within {deadline_s:.0f} s")


@pytest.fixture(scope="module")
def mvn() -> str:
    path = shutil.which("mvn")
    if path is None:
        if os.environ.get("CALLSCRIBE_REQUIRE_JAVA") == "1":
            pytest.fail("Maven required (CALLSCRIBE_REQUIRE_JAVA=1) but mvn is not on PATH")
        pytest.skip("mvn not found: the Java SDK suite needs Maven and Java 17 "
                    "(scripts/test.sh installs them)")
    return path


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """``callscribe serve`` as a user starts it, on a free port, with one API key."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("java-serve")
    env = {**os.environ, "CALLSCRIBE_API_KEYS": KEY,
           "CALLSCRIBE_VOCABULARY_DB": str(tmp / "vocabulary.sqlite3")}
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "callscribe.cli", "serve", "--port", str(port),
                             "--drain-seconds", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/readyz", 180)
        yield port, tmp / "serve.log"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _surefire_totals() -> dict[str, int]:
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for report in (JAVA_DIR / "target" / "surefire-reports").glob("TEST-*.xml"):
        root = ET.parse(report).getroot()
        for k in totals:
            totals[k] += int(root.get(k, "0"))
    return totals


def test_java_sdk_suite(mvn, serve):
    port, serve_log = serve
    audio = _shared_audio_dir()
    env = {**os.environ,
           "DASHSCOPE_WEBSOCKET_BASE_URL": f"ws://127.0.0.1:{port}/api-ws/v1/inference",
           "DASHSCOPE_HTTP_BASE_URL": f"http://127.0.0.1:{port}/api/v1",
           "DASHSCOPE_API_KEY": KEY,
           "CALLSCRIBE_REALTIME_URL": f"ws://127.0.0.1:{port}/api-ws/v1/realtime"}
    shutil.rmtree(JAVA_DIR / "target" / "surefire-reports", ignore_errors=True)
    t0 = time.monotonic()
    run = subprocess.run([mvn, "-q", "-B", "-o", "test", f"-Dcallscribe.audio={audio}"],
                         cwd=JAVA_DIR, env=env, capture_output=True, text=True,
                         timeout=MAVEN_DEADLINE_S)
    took = time.monotonic() - t0
    totals = _surefire_totals()
    print(f"\nJava SDK suite: {totals} in {took:.0f} s\n{run.stdout[-3000:]}")
    assert run.returncode == 0, (
        f"mvn test failed ({totals}):\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}\n"
        f"server log tail:\n{serve_log.read_text(errors='replace')[-3000:]}")
    assert totals["tests"] >= 9 and totals["failures"] == totals["errors"] == 0, totals
    if (audio / "MANIFEST.tsv").is_file():
        assert totals["skipped"] == 0, totals  # with the recordings present, everything runs
