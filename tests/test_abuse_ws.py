"""Issue 13, the WebSocket cases of the HTTP/API half (items 4, 6, 10): each hostile session
gets its specific documented error and a proper close, while a good neighbour on another key
streams the JFK recording beside it (one neighbour per case) and must finish with exactly the
idle-server finals.  A real gateway with the real model.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import threading
import urllib.error
import urllib.request
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from abuseutil import finish_task, qwen_ws, recv_json, run_task, run_task_ws
from neighbour import KEYS, GoodNeighbour, baseline_finals, pcm_of
from serverutil import start_gateway
from callscribe.settings import load_settings
from callscribe.telemetry import configure_telemetry, render_metrics

pytestmark = pytest.mark.shared_audio


def ws_url(gw) -> str:
    return f"ws://127.0.0.1:{gw.port}/api-ws/v1/inference"


@pytest.fixture(scope="module")
def jfk(shared_audio):
    return pcm_of(shared_audio / "en_jfk_16k.wav")


def make_settings(tmp_path_factory):
    return load_settings(api_keys=KEYS,
                         vocabulary_db=tmp_path_factory.mktemp("abuse-ws") / "v.sqlite3")


@pytest.fixture(scope="module")
def gw(loop_thread, runtime, tmp_path_factory):
    configure_telemetry()  # before the gateway creates its instruments
    g = loop_thread.run(start_gateway(make_settings(tmp_path_factory), runtime))
    yield g
    loop_thread.run(g.shutdown(0))


@pytest.fixture(scope="module")
def baseline(gw, jfk):
    return baseline_finals(ws_url(gw), jfk)


@pytest.fixture
def neighbour(gw, jfk, baseline):
    """A good neighbour streaming beside this case; checked at the end of the test body."""
    return GoodNeighbour(ws_url(gw), jfk).start()


def expect_close(ws, code: int) -> None:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=30)
    assert info.value.rcvd is not None, "the server dropped the connection without a close frame"
    assert info.value.rcvd.code == code, info.value.rcvd


def qwen_update(ws, turn_detection_json: str, event_id: str = "ev1") -> dict:
    """A session.update written as raw text (NaN/Infinity are not producible by json.dumps
    in a portable way); the next server event."""
    ws.send('{"type": "session.update", "event_id": "%s", "session": {"input_audio_format": '
            '"pcm", "sample_rate": 16000, "turn_detection": %s}}' % (event_id, turn_detection_json))
    return recv_json(ws)


def test_superscript_sample_rate(gw, neighbour, baseline):
    with run_task_ws(gw.port) as ws:
        tid = uuid.uuid4().hex
        ws.send(run_task(tid, sample_rate="¹⁶⁰⁰⁰"))
        msg = recv_json(ws)
        h = msg["header"]
        assert (h["event"], h["task_id"], h["error_code"]) == ("task-failed", tid,
                                                                "InvalidParameter"), msg
        assert "sample_rate" in h["error_message"]
        expect_close(ws, 1008)
    neighbour.join().check(baseline)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_qwen_silence_duration_not_finite(gw, neighbour, baseline, value):
    with qwen_ws(gw.port) as ws:
        assert recv_json(ws)["type"] == "session.created"
        err = qwen_update(ws, '{"type": "server_vad", "silence_duration_ms": %s}' % value)
        assert err["type"] == "error", err
        assert err["error"]["type"] == "invalid_request_error"
        assert err["error"]["code"] == "invalid_value"
        assert err["error"]["param"] == "session.turn_detection.silence_duration_ms"
        assert err["error"]["event_id"] == "ev1"
        # the session is kept: a good update is accepted on the same socket
        ok = qwen_update(ws, '{"type": "server_vad", "silence_duration_ms": 500}', "ev2")
        assert ok["type"] == "session.updated", ok
        assert ok["session"]["turn_detection"]["silence_duration_ms"] == 500
    neighbour.join().check(baseline)


def test_run_task_id_with_lone_surrogate(gw, neighbour, baseline):
    with run_task_ws(gw.port) as ws:
        ws.send(run_task("abc").replace('"abc"', '"\\ud800abc"'))
        msg = recv_json(ws)
        h = msg["header"]
        assert (h["event"], h["error_code"]) == ("task-failed", "InvalidMessage"), msg
        assert "lone UTF-16 surrogate" in h["error_message"]
        expect_close(ws, 1007)
    neighbour.join().check(baseline)


def test_qwen_event_id_with_lone_surrogate(gw, neighbour, baseline):
    with qwen_ws(gw.port) as ws:
        assert recv_json(ws)["type"] == "session.created"
        # an event the server answers with an error that echoes its event_id
        ws.send('{"type": "input_audio_buffer.commit", "event_id": "\\udc00x"}')
        err = recv_json(ws)
        assert err["type"] == "error" and err["error"]["code"] == "invalid_json", err
        assert "lone UTF-16 surrogate" in err["error"]["message"]
        # the session is kept (invalid_json keeps it, README)
        ok = qwen_update(ws, "null")
        assert ok["type"] == "session.updated", ok
    neighbour.join().check(baseline)


def test_model_metric_label_from_closed_set(gw, neighbour, baseline):
    rnd = random.Random(13)
    dated = [f"fun-asr-realtime-20{rnd.randrange(40, 99)}-{rnd.randrange(1, 13):02d}-"
             f"{rnd.randrange(1, 29):02d}" for _ in range(12)]
    with run_task_ws(gw.port) as ws:
        for model in dated:
            tid = uuid.uuid4().hex
            ws.send(run_task(tid, model=model))
            assert recv_json(ws)["header"]["event"] == "task-started"
            ws.send(finish_task(tid))
            while recv_json(ws)["header"]["event"] != "task-finished":
                pass
    text = render_metrics()[0].decode()
    labels = {part.split('"')[1] for line in text.splitlines() if not line.startswith("#")
              for part in line.split(",") if part.lstrip("{").startswith("model=")}
    assert "fun-asr-realtime" in labels, labels
    assert not any(re.search(r"\d{4}-\d{2}-\d{2}", label) for label in labels), labels
    assert not any(d in text for d in dated)
    neighbour.join().check(baseline)


def http_status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_drain_answers_503_and_tells_qwen_the_server_is_shutting_down(
        loop_thread, runtime, tmp_path_factory, jfk, baseline):
    """SIGTERM's drain, on a gateway of its own: new handshakes and /readyz get HTTP 503 (not
    connection refused); the neighbour, inside the grace, finishes normally; a Qwen session
    still appending when the grace ends is told the server is shutting down (not
    ``session_finishing`` "... after session.finish", which it never sent), then closed 1001."""
    grace = 25.0
    g = loop_thread.run(start_gateway(make_settings(tmp_path_factory), runtime))
    n = GoodNeighbour(ws_url(g), jfk).start()
    with qwen_ws(g.port) as qwen:
        drain = qwen_drain_case(loop_thread, g, qwen, n, jfk, baseline, grace)
    loop_thread.run(asyncio.wait_for(drain, grace + 60), timeout=grace + 90)


def qwen_drain_case(loop_thread, g, qwen, n, jfk, baseline, grace):
    base = f"http://127.0.0.1:{g.port}"
    assert recv_json(qwen)["type"] == "session.created"
    assert qwen_update(qwen, '{"type": "server_vad"}')["type"] == "session.updated"
    # speech, until the server says it hears it: the session's stream is open
    qwen.send(json.dumps({"type": "input_audio_buffer.append",
                          "audio": base64.b64encode(jfk[:16000 * 2 * 3]).decode()}))
    while recv_json(qwen)["type"] != "input_audio_buffer.speech_started":
        pass
    async def begin_drain():
        task = asyncio.ensure_future(g.shutdown(grace))
        await asyncio.sleep(0)  # the task runs to its first wait: draining is set
        return task

    drain = loop_thread.run(begin_drain())
    assert g.draining
    # the port stays open and says why
    status, body = http_status(base + "/readyz")
    assert status == 503 and b"draining" in body
    with pytest.raises(InvalidStatus) as refused:
        run_task_ws(g.port)
    assert refused.value.response.status_code == 503
    assert b"shutting down" in refused.value.response.body

    n.join().check(baseline)  # within the grace: task-finished, exact finals

    # keep appending until the server ends input at the end of the grace and closes
    events: list[dict] = []
    stop = threading.Event()

    def reader():
        try:
            while True:
                events.append(recv_json(qwen, timeout=grace + 60))
        except ConnectionClosed:
            pass
        finally:
            stop.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    # 0.6 s of speech every 0.2 s (3x real time): recognition is behind when the grace ends,
    # so appends keep arriving while the server finishes what it has
    step = 16000 * 2 * 6 // 10
    for i in range(10**6):
        if stop.is_set():
            break
        off = (i * step) % (len(jfk) - step)
        try:
            qwen.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": base64.b64encode(jfk[off:off + step]).decode()}))
        except ConnectionClosed:
            break
        stop.wait(0.2)
    t.join(60)
    codes = [e["error"]["code"] for e in events if e["type"] == "error"]
    assert "server_shutting_down" in codes, codes
    assert "session_finishing" not in codes, codes
    notice = next(e for e in events if e["type"] == "error"
                  and e["error"]["code"] == "server_shutting_down")
    assert notice["error"]["type"] == "server_error"
    assert "server is shutting down" in notice["error"]["message"]
    assert codes[-1] == "ServerShuttingDown"
    assert qwen.close_code == 1001
    return drain


def test_qwen_append_after_server_drain_exact_frame():
    """Sans-I/O: the exact frame an append gets after the drain grace ended the session's
    input (``server_shutting_down``, not ``session_finishing`` "... after session.finish"),
    the session kept until its results are out; a client's own session.finish still gets
    ``session_finishing``."""
    from callscribe.protocols.common import FinishInput, SendFrame
    from callscribe.protocols.qwen_realtime import QwenRealtimeProtocol

    ids = iter(range(1, 100))
    t = [1000.0]
    p = QwenRealtimeProtocol(clock=lambda: t[0], model="qwen3-asr-flash-realtime",
                             ids=lambda: str(next(ids)))
    p.receive_text('{"type": "session.update", "session": {}}')
    p.receive_text(json.dumps({"type": "input_audio_buffer.append",
                               "audio": base64.b64encode(b"\0\1" * 1600).decode()}))
    p.outputs()
    p.shutdown(5.0)
    t[0] += 5.0
    p.handle_timers()
    assert FinishInput("sess_1") in p.outputs()
    p.receive_text('{"type": "input_audio_buffer.append", "event_id": "ev9", "audio": "AAAA"}')
    [out] = p.outputs()
    assert isinstance(out, SendFrame)
    assert json.loads(out.text) == {"event_id": "event_4", "type": "error", "error": {
        "type": "server_error", "code": "server_shutting_down",
        "message": "input_audio_buffer.append ignored: the server is shutting down; the audio "
                   "received is being recognised, then the session closes (1001); reconnect "
                   "to continue", "param": None, "event_id": "ev9"}}

    q = QwenRealtimeProtocol(clock=lambda: t[0], model="qwen3-asr-flash-realtime")
    q.receive_text('{"type": "session.update", "session": {}}')
    q.receive_text(json.dumps({"type": "input_audio_buffer.append",
                               "audio": base64.b64encode(b"\0\1" * 1600).decode()}))
    q.receive_text('{"type": "session.finish"}')
    q.outputs()
    q.receive_text('{"type": "input_audio_buffer.append", "audio": "AAAA"}')
    [out] = q.outputs()
    assert json.loads(out.text)["error"]["code"] == "session_finishing"
