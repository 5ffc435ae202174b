"""End to end: the official ``dashscope`` SDK, unchanged, against ``callscribe serve``.

One real server (one model load) runs on a free port in a background event-loop thread for
the whole module; the SDK is pointed at it exactly as the README says.  Bad input goes over a
raw ``websockets`` client while a good SDK session runs at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import audiogen
from kafka_broker import make_kafka_fixture
from serverutil import start_gateway
from callscribe.errors import ConfigurationError
from callscribe.gateway.server import Gateway
from callscribe.recognition.events import FinalSentence
from callscribe.recognition.vocabulary import VocabularyStore
from callscribe.settings import load_settings
from callscribe.telemetry import configure_telemetry

KEY = "sk-callscribe-test-key"
#: Whisper base hears LDC93S1 ("She had your dark suit in greasy wash water all year") loosely
LDC_WORDS = ["dark suit", "greasy", "wash", "year", "she had"]
OTHER_KEY = "sk-callscribe-other-key"
pytestmark = pytest.mark.shared_audio


def norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


class Srv:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.kafka = False  # serve --kafka (the recognition runs in a worker process)
        self.port = gw.port
        self.ws_url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/inference"
        self.http_url = f"http://127.0.0.1:{gw.port}/api/v1"


@pytest.fixture(scope="module")
def model_runtime(shared_audio):
    from callscribe.recognition.runtime import Runtime
    rt = Runtime.create(load_settings())
    yield rt
    rt.close()


#: its own broker for the ``[kafka]`` variant of the tests below
kafka_sdk_broker = make_kafka_fixture(scope="module")


@pytest.fixture(scope="module", params=["local", "kafka"])
def server(request, loop_thread, tmp_path_factory):
    """The gateway with the model in process (``local``), or as ``serve --kafka`` runs it
    (``kafka``): a real broker, a ``callscribe worker`` subprocess doing the recognition and
    the gateway's KafkaPipeline in place of the runtime."""
    configure_telemetry()
    keys = dict(api_keys=f"{KEY},{OTHER_KEY}",
                vocabulary_db=tmp_path_factory.mktemp("gw") / "vocab.sqlite3")
    worker = None
    if request.param == "local":
        settings = load_settings(**keys)
        runtime = request.getfixturevalue("model_runtime")
    else:
        from pipeline_helpers import WorkerProcess, pipeline_settings

        from callscribe.pipeline.kafka_stream import KafkaPipeline
        broker = request.getfixturevalue("kafka_sdk_broker")
        from callscribe.pipeline.topics import ensure_topics
        settings = pipeline_settings(broker.bootstrap, partitions=2, **keys)
        loop_thread.run(ensure_topics(None, settings))  # `callscribe topics create`
        runtime = KafkaPipeline(settings)
        loop_thread.run(runtime.start())
        worker = WorkerProcess(settings, tmp_path_factory.mktemp("worker") / "worker.log")
        worker.start().wait_assigned()
    gw = loop_thread.run(start_gateway(settings, runtime, open_timeout=2.0))
    srv = Srv(gw)
    srv.kafka = worker is not None
    srv.settings = settings
    yield srv
    loop_thread.run(gw.shutdown(0))
    if worker is not None:
        loop_thread.run(runtime.aclose())
        assert worker.stop() == 0, worker.tail()


@pytest.fixture
def sdk(server, monkeypatch):
    """The legacy SDK pointed at the server (env vars as documented, plus the module globals
    in case dashscope was imported before the env was set)."""
    import dashscope
    monkeypatch.setenv("DASHSCOPE_WEBSOCKET_BASE_URL", server.ws_url)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.http_url)
    monkeypatch.setattr(dashscope, "base_websocket_api_url", server.ws_url)
    monkeypatch.setattr(dashscope, "base_http_api_url", server.http_url)
    monkeypatch.setattr(dashscope, "api_key", KEY)
    return dashscope


def call(model: str, fmt: str, rate: int, path: Path, **kw):
    from dashscope.audio.asr import Recognition
    rec = Recognition(model=model, format=fmt, sample_rate=rate, callback=None, **kw)
    result = rec.call(str(path))
    return rec, result


def joined(result) -> str:
    return " ".join(s["text"] for s in (result.get_sentence() or []))


# --- Recognition.call(file) --------------------------------------------------------------


def test_call_file_words_usage_emotion(sdk, shared_audio):
    rec, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_jfk_16k.wav",
                       language_hints=["en"], some_unknown_knob=42)
    assert result.status_code == 200, result.message
    text = norm(joined(result))
    for w in ("fellow americans", "country", "ask"):
        assert w in text, text
    sentences = result.get_sentence()
    for s in sentences:
        assert s["sentence_end"] is True and s["end_time"] > s["begin_time"]
        assert s["words"] and all(w["end_time"] >= w["begin_time"] for w in s["words"])
        # fun-asr-realtime: no vendor emo_tag; callscribe's own emotion object instead
        assert "emo_tag" not in s and "emo_confidence" not in s
        assert s["emotion"]["polarity"] in ("positive", "negative", "neutral")
        assert 0.0 <= s["emotion"]["confidence"] <= 1.0
        assert result.get_usage(s)["duration"] >= 1
    print(f"\nRecognition.call en_jfk_16k.wav: first package delay "
          f"{rec.get_first_package_delay():.0f} ms, last package delay "
          f"{rec.get_last_package_delay():.0f} ms")


def _formats(shared_audio: Path, tmp: Path):
    """(id, model, format, rate, file, language, expected words): one real recording per
    format family; compressed ones are the real recordings re-encoded."""
    a = shared_audio
    lib70, lib80, lib90 = (a / f"en_ps_librivox_08{n}0.wav" for n in (7, 8, 9))
    return [
        ("pcm", "fun-asr-realtime", "pcm", 16000, a / "en_ps_goforward.raw", "en",
         ["forward"]),
        ("wav-8k", "paraformer-realtime-8k-v2", "wav", 8000, a / "en_ldc93s1_8k.wav", "en",
         LDC_WORDS),
        ("mp3", "paraformer-realtime-v2", "mp3", 24000, a / "en_de_multilingual.mp3", "en",
         ["permission", "software"]),
        ("opus", "fun-asr-realtime", "opus", 16000,
         audiogen.encode(a / "en_ldc93s1_16k.wav", "opus", tmp / "ldc.opus", 16000), "en",
         LDC_WORDS),
        ("speex", "fun-asr-realtime-2025-11-07", "speex", 16000,
         audiogen.encode(lib80, "speex", tmp / "l80.spx", 16000), "en", ["disposed", "young"]),
        ("aac", "paraformer-realtime-v1", "aac", 16000,
         audiogen.encode(lib90, "aac", tmp / "l90.aac", 16000), "en", ["selfish", "cold"]),
        ("amr", "paraformer-realtime-8k-v1", "amr", 8000,
         audiogen.encode(lib70, "amr", tmp / "l70.amr"), "en", ["dashwood", "leisure", "power"]),
        ("wav-zh", "fun-asr-realtime", "wav", 16000, a / "zh_funasr_sample.wav", "zh",
         ["滨海", "新区", "房"]),
    ]


@pytest.fixture(scope="module")
def format_cases(shared_audio, tmp_path_factory):
    if not audiogen.have_tools("ffmpeg", "sox"):
        pytest.skip("ffmpeg/sox not installed (needed to encode opus/speex/aac/amr)")
    return {c[0]: c for c in _formats(shared_audio, tmp_path_factory.mktemp("fmt"))}


@pytest.mark.parametrize("case", ["pcm", "wav-8k", "mp3", "opus", "speex", "aac", "amr",
                                  "wav-zh"])
def test_call_each_format_family(sdk, format_cases, case):
    _, model, fmt, rate, path, lang, words = format_cases[case]
    _, result = call(model, fmt, rate, path, language_hints=[lang])
    assert result.status_code == 200, result.message
    text = norm(joined(result))
    assert any(w in text for w in words), (case, text)


# --- streaming with callbacks at real-time pace -----------------------------------------------


class Collect:
    def __init__(self) -> None:
        self.interim: list[dict] = []
        self.final: list[dict] = []
        self.errors: list = []
        self.opened = self.completed = self.closed = False
        self.done = threading.Event()


def callback_for(c: Collect):
    from dashscope.audio.asr import RecognitionCallback, RecognitionResult

    class CB(RecognitionCallback):
        def on_open(self):
            c.opened = True

        def on_event(self, result):
            s = result.get_sentence()
            (c.final if RecognitionResult.is_sentence_end(s) else c.interim).append(s)

        def on_complete(self):
            c.completed = True
            c.done.set()

        def on_error(self, result):
            c.errors.append((result.status_code, result.code, result.message))
            c.done.set()

        def on_close(self):
            c.closed = True
    return CB()


def stream_realtime(path: Path, fmt="pcm", rate=16000, model="fun-asr-realtime",
                    chunk_ms=100, **kw) -> tuple[Collect, object]:
    from dashscope.audio.asr import Recognition
    c = Collect()
    rec = Recognition(model=model, format=fmt, sample_rate=rate, callback=callback_for(c), **kw)
    data = path.read_bytes()
    if path.suffix == ".wav":
        data = data[44:]
    step = rate * 2 * chunk_ms // 1000
    rec.start()
    t0 = time.monotonic()
    for i, off in enumerate(range(0, len(data), step)):
        rec.send_audio_frame(data[off:off + step])
        time.sleep(max(0.0, t0 + (i + 1) * chunk_ms / 1000 - time.monotonic()))
    rec.stop()
    return c, rec


def test_streaming_realtime_interim_final_complete(sdk, shared_audio):
    c, rec = stream_realtime(shared_audio / "en_jfk_16k.wav", language_hints=["en"],
                             heartbeat=True)
    assert not c.errors, c.errors
    assert c.opened and c.completed and c.closed
    assert c.interim, "no interim results"
    assert all(s["end_time"] is None and s["sentence_end"] is False for s in c.interim)
    assert c.final and all(s["end_time"] is not None and s["words"] for s in c.final)
    text = norm(" ".join(s["text"] for s in c.final))
    assert "fellow americans" in text and "your country" in text, text
    print(f"\nstreaming en_jfk_16k (real time): first package delay "
          f"{rec.get_first_package_delay():.0f} ms, last package delay "
          f"{rec.get_last_package_delay():.0f} ms")


# --- v2 client: three tasks on one connection --------------------------------------------------


def test_v2_three_tasks_on_one_connection(server, shared_audio):
    import dashscope
    client = dashscope.Client(api_key=KEY, base_url=server.http_url)
    conn = dashscope.WsConnection(url=server.ws_url, api_key=KEY, timeout=60)
    cases = [("en_ps_goforward.raw", "pcm", ["forward"]),
             ("en_ldc93s1_16k.wav", "wav", LDC_WORDS),
             ("en_ps_librivox_0880.wav", "wav", ["disposed", "young man"])]
    task_ids = []
    try:
        for name, fmt, words in cases:
            rec = client.audio.asr.recognize(model="fun-asr-realtime", format=fmt,
                                             sample_rate=16000, connection=conn,
                                             parameters={"language_hints": ["en"]})
            with rec:
                data = (shared_audio / name).read_bytes()
                for off in range(0, len(data), 12800):
                    rec.send_audio_frame(data[off:off + 12800])
                rec.stop()
                events = list(rec.events())
                task_ids.append(rec.request_id)
            assert events[-1]["header"]["event"] == "task-finished"
            finals = [e["payload"]["output"]["sentence"] for e in events
                      if e["header"]["event"] == "result-generated"
                      and e["payload"]["output"]["sentence"]["sentence_end"]]
            text = norm(" ".join(s["text"] for s in finals))
            assert any(w in text for w in words), (name, text)
            assert not conn.closed
    finally:
        conn.close()
    assert len(set(task_ids)) == 3


# --- vocabularies ----------------------------------------------------------------------------


def test_vocabulary_service_lifecycle(sdk, server, shared_audio, monkeypatch):
    from dashscope.audio.asr import VocabularyService
    from dashscope.audio.asr.vocabulary import VocabularyServiceException
    svc = VocabularyService()
    words = [{"text": "Dashwood", "weight": 4, "lang": "en"},
             {"text": "Marianne", "weight": 2, "lang": "en"}]
    vid = svc.create_vocabulary(target_model="fun-asr-realtime", prefix="sense",
                                vocabulary=words)
    assert re.fullmatch(r"vocab-sense-[0-9a-f]{32}", vid)
    assert vid in [v["vocabulary_id"] for v in svc.list_vocabularies(prefix="sense")]
    got = svc.query_vocabulary(vid)
    assert got["vocabulary"] == words and got["status"] == "OK"
    svc.update_vocabulary(vid, words[:1])
    assert svc.query_vocabulary(vid)["vocabulary"] == words[:1]

    # used in a task: the recognizer gets the hotwords
    seen = []
    real_open = server.gw.runtime.open_stream
    monkeypatch.setattr(server.gw.runtime, "open_stream",
                        lambda opts: seen.append(opts.hotwords) or real_open(opts))
    _, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_ps_librivox_0870.wav",
                     vocabulary_id=vid)
    assert result.status_code == 200, result.message
    assert "dashwood" in norm(joined(result))
    assert [h.text for h in seen[0]] == ["Dashwood"]

    # another key cannot see it
    other = VocabularyService(api_key=OTHER_KEY)
    assert vid not in [v["vocabulary_id"] for v in other.list_vocabularies()]

    svc.delete_vocabulary(vid)
    with pytest.raises(VocabularyServiceException) as err:
        svc.query_vocabulary(vid)
    assert "404" in str(err.value) and "VocabularyNotFound" in str(err.value)
    with pytest.raises(VocabularyServiceException, match="weight 9 is invalid"):
        svc.create_vocabulary(target_model="fun-asr-realtime", prefix="bad",
                              vocabulary=[{"text": "x", "weight": 9}])
    # a deleted vocabulary in a task: a specific task-failed
    _, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_ldc93s1_16k.wav",
                     vocabulary_id=vid)
    assert result.code == "VocabularyNotFound", (result.code, result.message)


# --- auth, admission, HTTP endpoints ------------------------------------------------------------


def test_bad_or_missing_key_is_401(sdk, server, shared_audio, monkeypatch):
    monkeypatch.setattr(sdk, "api_key", "sk-wrong")
    _, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_ldc93s1_16k.wav")
    assert result.status_code == 401
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY}"}):
        with pytest.raises(InvalidStatus) as err:
            connect(server.ws_url, additional_headers=headers, open_timeout=5)
        assert err.value.response.status_code == 401
    # scheme is case-insensitive
    with connect(server.ws_url, additional_headers={"Authorization": f"bearer {KEY}"}):
        pass


def test_session_limits_are_503_at_the_handshake(loop_thread, model_runtime, tmp_path):
    settings = load_settings(api_keys="k1,k2,k3", max_sessions=2, max_sessions_per_key=1,
                             vocabulary_db=tmp_path / "v.sqlite3")
    gw = loop_thread.run(start_gateway(settings, model_runtime))
    url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/inference"

    def open_(key):
        return connect(url, additional_headers={"Authorization": f"Bearer {key}"})

    def refused(key) -> bytes:
        with pytest.raises(InvalidStatus) as err:
            open_(key)
        assert err.value.response.status_code == 503
        return err.value.response.body
    try:
        with open_("k2"):
            with open_("k1"):
                assert b"too many sessions for this API key" in refused("k1")
                assert b"server busy" in refused("k3")
            for _ in range(50):  # the slot frees when the TCP connection is gone
                if gw.admission.active < 2:
                    break
                time.sleep(0.05)
            with open_("k3"):
                pass
    finally:
        loop_thread.run(gw.shutdown(0))


def test_no_keys_means_loopback_only(tmp_path):
    settings = load_settings(api_keys="", vocabulary_db=tmp_path / "v.sqlite3")
    with pytest.raises(ConfigurationError, match="refusing to listen on 0.0.0.0 without API keys"):
        Gateway(settings, vocabulary=VocabularyStore(":memory:"), host="0.0.0.0", port=0)
    Gateway(settings, vocabulary=VocabularyStore(":memory:"), host="127.0.0.1", port=0)
    Gateway(settings, vocabulary=VocabularyStore(":memory:"), host="::1", port=0)


def test_health_ready_metrics(sdk, server, shared_audio):
    import requests
    base = f"http://127.0.0.1:{server.port}"
    assert requests.get(base + "/healthz", timeout=5).text == "ok\n"
    assert requests.get(base + "/readyz", timeout=5).status_code == 200
    assert requests.get(base + "/nope", timeout=5).status_code == 404
    call("fun-asr-realtime", "pcm", 16000, shared_audio / "en_ps_goforward.raw")
    m = requests.get(base + "/metrics", timeout=5)
    assert m.status_code == 200 and m.headers["Content-Type"].startswith("text/plain")
    assert "callscribe_task_first_package_delay_milliseconds_bucket" in m.text
    assert "callscribe_task_last_package_delay_milliseconds_count" in m.text
    assert re.search(r'callscribe_tasks_total\{[^}]*outcome="finished"', m.text)
    # the recognition layer's histograms are filled by the same real session (in the worker
    # process with --kafka: its own /metrics, see test_worker.py)
    for name in () if server.kafka else ("callscribe_final_latency_milliseconds_count",
                 'callscribe_decode_duration_milliseconds_count{kind="final"',
                 "callscribe_realtime_factor_count"):
        found = re.search(re.escape(name) + r'[^\n]* (\d+(\.\d+)?)\n', m.text)
        assert found and float(found.group(1)) > 0, name
    assert server.kafka or "callscribe_recognition_queue_depth_milliseconds" in m.text
    # the gateway's Kafka hop (worker -> gateway) in 1 ms buckets at the low end, where hops
    # fall (the latency buckets would put every hop in 0-25 ms)
    if server.kafka:
        found = re.search(r'callscribe_kafka_hop_worker_to_gateway_milliseconds_bucket'
                          r'\{le="5"[^}]*\} (\d+(\.\d+)?)\n', m.text)
        assert found, "no 5 ms bucket on the worker -> gateway hop histogram"


# --- bad input, with a good session running at the same time ------------------------------------


def raw(url: str, **kw):
    return connect(url, additional_headers={"Authorization": f"Bearer {KEY}"},
                   open_timeout=5, max_size=None, **kw)


def run_task_msg(task_id: str, **params) -> str:
    p = {"format": "pcm", "sample_rate": 16000, **params}
    return json.dumps({"header": {"streaming": "duplex", "task_id": task_id,
                                  "action": "run-task"},
                       "payload": {"model": params.pop("model", "fun-asr-realtime"),
                                   "task_group": "audio", "task": "asr",
                                   "function": "recognition", "input": {}, "parameters": p}})


def action_msg(name: str, task_id: str) -> str:
    return json.dumps({"header": {"streaming": "duplex", "task_id": task_id, "action": name},
                       "payload": {"input": {}}})


def expect_failed(ws, code: str, close_code: int | None = 1008) -> dict:
    """Read to task-failed; assert its code, then that the server closes the connection."""
    while True:
        msg = json.loads(ws.recv(timeout=30))
        if msg["header"]["event"] == "task-failed":
            break
    assert msg["header"]["error_code"] == code, msg
    assert msg["header"]["error_message"]
    with pytest.raises(ConnectionClosed) as err:
        ws.recv(timeout=10)
    if close_code is not None:
        assert err.value.rcvd.code == close_code
    return msg


def start_task(ws, task_id=None, **params) -> str:
    task_id = task_id or uuid.uuid4().hex
    ws.send(run_task_msg(task_id, **params))
    msg = json.loads(ws.recv(timeout=30))
    assert msg["header"] == {"task_id": task_id, "event": "task-started", "attributes": {}}
    return task_id


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
        deadline = time.monotonic() + 30  # generous: the machine may be loaded
        while time.monotonic() < deadline:
            if client_gone_count() == gone + 1 and server.gw.admission.active < during:
                break
            time.sleep(0.05)
    assert client_gone_count() == gone + 1  # the server abandoned the task...
    assert server.gw.admission.active < during  # ...and freed the session
    yield "handshake that never completes"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /api-ws/v1/inference HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        try:  # closed (or reset) by the server after open_timeout (2 s here)
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
        assert 1.0 < time.monotonic() - t0 < 8
    # the server is still healthy and serving
    with raw(url) as ws:
        start_task(ws)


def test_bad_inputs_do_not_disturb_a_concurrent_session(sdk, server, shared_audio):
    good: dict = {}

    def good_session():
        try:
            good["c"], _ = stream_realtime(shared_audio / "en_ps_librivox_0870.wav",
                                           language_hints=["en"])
        except Exception as exc:  # pragma: no cover - reported below
            good["exc"] = exc

    t = threading.Thread(target=good_session)
    t.start()
    time.sleep(0.5)
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
        start_task(ws)
        t0 = time.monotonic()
        msg = expect_failed(ws, "CLIENT_ERROR")
        assert msg["header"]["error_message"].startswith("request timeout after")
        assert 0.3 < time.monotonic() - t0 < 5
    with raw(server.ws_url) as ws:
        with pytest.raises(ConnectionClosed) as err:
            ws.recv(timeout=10)
        assert err.value.rcvd.code == 1000 and "idle" in err.value.rcvd.reason


# --- serve --kafka from the command line ---------------------------------------------------------


@pytest.mark.parametrize("server", ["kafka"], indirect=True)
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


# --- SIGTERM ------------------------------------------------------------------------------------


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
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            events = []
            try:
                for off in range(16000 * 6, len(pcm), 3200):  # keep streaming in real time
                    ws.send(pcm[off:off + 3200])
                    time.sleep(0.1)
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


# --- backpressure (no model needed: a recognizer that never catches up) -------------------------


class _StuckStream:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.received = 0
        self.done = asyncio.Event()
        self.audio_ms = 0

    async def put(self, data: bytes) -> None:
        await self.gate.wait()
        self.received += len(data)
        self.audio_ms = self.received // 32

    async def finish(self) -> None:
        self.done.set()

    async def events(self):
        await self.done.wait()
        yield FinalSentence(1, 0, self.audio_ms, f"{self.received} bytes", (), "en")

    async def aclose(self) -> None:
        self.done.set()


class _StuckRuntime:
    ready = True

    def __init__(self) -> None:
        self.streams: list[_StuckStream] = []

    def open_stream(self, opts):
        self.streams.append(_StuckStream())
        return self.streams[-1]


def test_socket_reading_pauses_when_recognition_falls_behind(loop_thread, tmp_path):
    rt = _StuckRuntime()
    settings = load_settings(api_keys=KEY, vocabulary_db=tmp_path / "v.sqlite3")
    gw = loop_thread.run(start_gateway(settings, rt))
    url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/inference"
    chunk = bytes(256 * 1024)
    sent = [0]
    try:
        with raw(url) as ws:
            tid = start_task(ws)

            def sender():
                try:
                    for _ in range(400):  # 100 MB if nothing pushed back
                        ws.send(chunk)
                        sent[0] += len(chunk)
                except ConnectionClosed:
                    pass
            t = threading.Thread(target=sender, daemon=True)
            t.start()
            time.sleep(2.0)
            stalled_at = sent[0]
            time.sleep(1.0)
            assert sent[0] == stalled_at, "the server kept reading while recognition was stuck"
            assert stalled_at < 40 * 1024 * 1024
            loop_thread.loop.call_soon_threadsafe(rt.streams[0].gate.set)
            t.join(30)
            assert sent[0] == 400 * len(chunk)
            ws.send(action_msg("finish-task", tid))
            events = []
            while not events or events[-1]["header"]["event"] != "task-finished":
                events.append(json.loads(ws.recv(timeout=30)))
            text = events[-2]["payload"]["output"]["sentence"]["text"]
            assert text == f"{400 * len(chunk)} bytes"  # nothing dropped
    finally:
        loop_thread.run(gw.shutdown(0))
