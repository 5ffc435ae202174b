"""Bad input over a raw ``websockets`` client while a good SDK session runs at the same time:
each gets its specific task-failed and close code, the server and the good session go on; and
the run-task timers (no data, idle) on loop deadlines."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from sdkutil import (Collect, action_msg, expect_failed, norm, raw, run_task_msg, start_task,
                     stream_realtime)
from waiting import wait_until

def client_gone_count() -> float:
    from callscribe.telemetry import render_metrics
    # summed over every series (other protocols' tests may have added their own)
    return sum(float(v) for v in re.findall(
        r'callscribe_tasks_total\{[^}]*outcome="client_gone"[^}]*\} ([0-9.]+)',
        render_metrics()[0].decode()))


def bad_inputs(server, shared_audio):
    url = server.ws_url
    pcm = (shared_audio / "en_ps_goforward.raw").read_bytes()
    yield "non-JSON text"
    with raw(url) as ws:
        ws.send("this is not json")
        assert "not valid JSON" in expect_failed(ws, "InvalidMessage", 1007)["header"][
            "error_message"]
    yield "JSON without header"
    with raw(url) as ws:
        ws.send('{"payload": {"model": "fun-asr-realtime"}}')
        expect_failed(ws, "InvalidMessage")
    yield "unknown action"
    with raw(url) as ws:
        tid = start_task(ws)
        ws.send(action_msg("pause-task", tid))
        assert expect_failed(ws, "UnknownAction")["header"]["task_id"] == tid
    yield "audio before task-started"
    with raw(url) as ws:
        ws.send(pcm[:3200])
        expect_failed(ws, "TaskNotStarted")
    yield "finish-task before run-task"
    with raw(url) as ws:
        ws.send(action_msg("finish-task", uuid.uuid4().hex))
        expect_failed(ws, "TaskNotStarted")
    yield "reused task_id"
    with raw(url) as ws:
        tid = start_task(ws)
        ws.send(pcm)
        ws.send(action_msg("finish-task", tid))
        while json.loads(ws.recv(timeout=30))["header"]["event"] != "task-finished":
            pass
        ws.send(run_task_msg(tid))
        expect_failed(ws, "DuplicateTaskId")
    yield "unsupported format"
    with raw(url) as ws:
        ws.send(run_task_msg(uuid.uuid4().hex, format="flac"))
        expect_failed(ws, "UnsupportedFormat")
    yield "unsupported sample rate"
    with raw(url) as ws:
        ws.send(run_task_msg(uuid.uuid4().hex, sample_rate=44100))
        assert "44100" in expect_failed(ws, "SampleRateMismatch")["header"]["error_message"]
    yield "unknown model"
    with raw(url) as ws:
        ws.send(run_task_msg(uuid.uuid4().hex, model="qwen-omni-turbo"))
        expect_failed(ws, "ModelNotFound")
    yield "corrupt audio mid-stream"
    with raw(url) as ws:
        start_task(ws, format="amr", sample_rate=8000, model="paraformer-realtime-8k-v2")
        ws.send(b"#!AMR\n" + bytes([0x3C]) + bytes(31))  # header and one 12.2 kbit/s frame
        ws.send(bytes([0x64]) * 64)  # frame type 12: reserved in AMR-NB
        assert "amr" in expect_failed(ws, "CorruptAudio")["header"]["error_message"]
    yield "10 MB frame"
    with raw(url) as ws:
        start_task(ws)
        try:
            ws.send(bytes(10 * 1024 * 1024))
        except (ConnectionClosed, OSError):
            pass
        with pytest.raises(ConnectionClosed) as err:
            while True:
                ws.recv(timeout=10)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1009
    yield "client vanishes mid-task"
    gone = client_gone_count()
    with raw(url) as ws:
        start_task(ws)
        during = server.gw.admission.active  # mine + the good session + any still closing
        ws.send(pcm[:32000])
        ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a WebSocket close frame
        ws.socket.close()
        wait_until(lambda: client_gone_count() == gone + 1
                   and server.gw.admission.active < during, 30,
                   "the vanished client's task abandoned and its session freed", every=0.05)
    assert client_gone_count() == gone + 1  # the server abandoned the task...
    assert server.gw.admission.active < during  # ...and freed the session
    yield "handshake that never completes"
    t0 = time.monotonic()  # before the connection: the server's open_timeout starts after it
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /api-ws/v1/inference HTTP/1.1\r\nHost: x\r\n")  # never finished
        try:  # closed (or reset) by the server after open_timeout (2 s here)
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail("the server kept a never-finished handshake open for 30 s")
        # not dropped at once: the server waited for open_timeout (it cannot be earlier)
        assert time.monotonic() - t0 > 1.0
    # the server is still healthy and serving
    with raw(url) as ws:
        start_task(ws)


def test_bad_inputs_do_not_disturb_a_concurrent_session(sdk, server, shared_audio):
    good: dict = {}
    watch = Collect()

    def good_session():
        try:
            good["c"], _ = stream_realtime(shared_audio / "en_ps_librivox_0870.wav",
                                           collect=watch, language_hints=["en"])
        except Exception as exc:  # pragma: no cover - reported below
            good["exc"] = exc
        finally:
            watch.first_result.set()  # never leave the wait below hanging

    t = threading.Thread(target=good_session)
    t.start()
    # the good session is under way (the server has recognised some of it) before the bad
    # inputs start
    assert watch.first_result.wait(60), "the good session got no result in 60 s"
    assert "exc" not in good, good.get("exc")
    done = []
    for name in bad_inputs(server, shared_audio):
        done.append(name)
    t.join(60)
    assert len(done) == 13, done
    assert "exc" not in good, good.get("exc")
    c = good["c"]
    assert not c.errors and c.completed
    text = norm(" ".join(s["text"] for s in c.final))
    assert "dashwood" in text and "leisure" in text, text


def test_timers_run_on_loop_deadlines(server, monkeypatch):
    """The 23 s / 60 s timers, shortened: the adapter arms loop timers from next_deadline()."""
    from callscribe.protocols import run_task
    monkeypatch.setattr(run_task, "NO_DATA_TIMEOUT_S", 0.4)
    monkeypatch.setattr(run_task, "IDLE_TIMEOUT_S", 0.6)
    with raw(server.ws_url) as ws:
        t0 = time.monotonic()  # before run-task: the no-data timer starts after it
        start_task(ws)
        # within 15 s, a deadline well under the unpatched 23 s: the shortened timer fired
        msg = expect_failed(ws, "CLIENT_ERROR", timeout=15)
        assert msg["header"]["error_message"].startswith("request timeout after"), msg
        assert time.monotonic() - t0 > 0.3  # not at once: after NO_DATA_TIMEOUT_S (0.4 s)
    with raw(server.ws_url) as ws:
        with pytest.raises(ConnectionClosed) as err:
            ws.recv(timeout=10)
        assert err.value.rcvd.code == 1000 and "idle" in err.value.rcvd.reason

