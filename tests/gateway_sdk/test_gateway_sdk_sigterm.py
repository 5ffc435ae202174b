"""SIGTERM on ``callscribe serve`` (a real process): the open task is drained, what was sent
is recognised, then task-failed ServerShuttingDown, close 1001 and exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed

from sdkutil import KEY, norm, raw, start_task



def test_sigterm_drains_and_exits(tmp_path, shared_audio):
    env = {**os.environ, "CALLSCRIBE_API_KEYS": KEY, "CALLSCRIBE_LOG_FORMAT": "json",
           "CALLSCRIBE_VOCABULARY_DB": str(tmp_path / "v.sqlite3")}
    proc = subprocess.Popen([sys.executable, "-m", "callscribe.cli", "serve", "--host",
                             "127.0.0.1", "--port", "0", "--drain-seconds", "1"],
                            env=env, stderr=subprocess.PIPE, text=True)
    port = None
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            rec = json.loads(line) if line.startswith("{") else {}
            if rec.get("event") == "listening":
                port = rec["port"]
            if rec.get("event") == "ready":
                break
        assert port, "".join(lines)
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        pcm = (shared_audio / "en_jfk_16k.wav").read_bytes()[44:]
        with raw(f"ws://127.0.0.1:{port}/api-ws/v1/inference") as ws:
            tid = start_task(ws)
            ws.send(pcm[:16000 * 2 * 3])
            # the task is under way (the server recognised some of the 3 s) when SIGTERM comes
            events = [json.loads(ws.recv(timeout=30))]
            assert events[0]["header"]["event"] == "result-generated", events
            proc.send_signal(signal.SIGTERM)
            try:
                for off in range(16000 * 6, len(pcm), 3200):  # keep streaming in real time
                    ws.send(pcm[off:off + 3200])
                    time.sleep(0.1)  # pacing the audio, not a wait
            except ConnectionClosed:
                pass
            with pytest.raises(ConnectionClosed) as err:
                while True:
                    events.append(json.loads(ws.recv(timeout=20)))
            assert err.value.rcvd.code == 1001
            failed = events[-1]["header"]
            assert (failed["event"], failed["error_code"], failed["task_id"]) == \
                ("task-failed", "ServerShuttingDown", tid)
            finals = [e for e in events if e["header"]["event"] == "result-generated"
                      and e["payload"]["output"]["sentence"]["sentence_end"]]
            assert finals and "fellow americans" in norm(
                finals[0]["payload"]["output"]["sentence"]["text"])
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

