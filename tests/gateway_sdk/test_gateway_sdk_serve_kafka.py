"""``callscribe serve --kafka BOOTSTRAP`` as a process, on the ``[kafka]`` server's broker and
worker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from sdkutil import KAFKA, KEY, action_msg, norm, raw, start_task



@pytest.mark.parametrize("server", [KAFKA], indirect=True)
def test_serve_kafka_command_line(server, shared_audio, tmp_path):
    """``callscribe serve --kafka BOOTSTRAP`` as a process, on the [kafka] variant's broker and
    worker: a task goes through the pipeline; SIGTERM stops it cleanly."""
    from pipeline_helpers import worker_env
    env = {**worker_env(server.settings), "CALLSCRIBE_API_KEYS": KEY,
           "CALLSCRIBE_VOCABULARY_DB": str(tmp_path / "v.sqlite3")}
    proc = subprocess.Popen([sys.executable, "-m", "callscribe.cli", "serve", "--port", "0",
                             "--kafka", server.settings.kafka_bootstrap],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        port, lines = None, []
        for line in proc.stderr:
            lines.append(line)
            rec = json.loads(line) if line.startswith("{") else {}
            port = rec.get("port", port) if rec.get("event") == "listening" else port
            if rec.get("event") == "ready" or len(lines) > 200:
                break
        assert port and any('"kafka pipeline ready"' in x for x in lines), "".join(lines)
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        pcm = (shared_audio / "en_ps_goforward.raw").read_bytes()
        with raw(f"ws://127.0.0.1:{port}/api-ws/v1/inference") as ws:
            tid = start_task(ws, language_hints=["en"])
            ws.send(pcm)
            ws.send(action_msg("finish-task", tid))
            events = []
            while not events or events[-1]["header"]["event"] != "task-finished":
                events.append(json.loads(ws.recv(timeout=60)))
        text = norm(" ".join(e["payload"]["output"]["sentence"]["text"] for e in events
                             if e["header"]["event"] == "result-generated"
                             and e["payload"]["output"]["sentence"]["sentence_end"]))
        assert "forward" in text, (text, "".join(lines[-20:]))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

