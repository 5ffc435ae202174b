"""End to end: the official SDK's ``OmniRealtimeConversation``, unchanged, against the Qwen-ASR
realtime endpoint of ``callscribe serve`` (``/api-ws/v1/realtime``).

One real server (on the session-wide model) runs on a free port in a background event-loop
thread for the whole module.  Bad input goes over raw ``websockets`` while a good SDK session
runs at the same time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import audiogen
from callscribe.settings import load_settings
from callscribe.telemetry import configure_telemetry, render_metrics
from serverutil import start_gateway
from waiting import wait_until
from sdkutil import KEY, LDC_WORDS, norm

MODEL = "qwen3-asr-flash-realtime"
COMPLETED = "conversation.item.input_audio_transcription.completed"
TEXT = "conversation.item.input_audio_transcription.text"
EMOTIONS = {"surprised", "neutral", "happy", "sad", "disgusted", "angry", "fearful"}
#: en_jfk_16k.wav: "And so my fellow Americans, | ask not | what your country can do for you,
#: ask what you can do for your country." (pauses of 1.1 s, 1.1 s and 0.6 s): at the default
#: 800 ms of silence the VAD makes three items (Whisper base hears the short second one as
#: "ask not" or "is not")
JFK = ["fellow americans", "not", "what you can do for your country"]
pytestmark = pytest.mark.shared_audio


@pytest.fixture(scope="module")
def server(loop_thread, runtime, tmp_path_factory):
    configure_telemetry()
    settings = load_settings(api_keys=KEY,
                             vocabulary_db=tmp_path_factory.mktemp("q") / "vocab.sqlite3")
    gw = loop_thread.run(start_gateway(settings, runtime, open_timeout=2.0))
    gw.realtime_url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/realtime"
    yield gw
    loop_thread.run(gw.shutdown(0))


def pcm_of(path: Path) -> bytes:
    return path.read_bytes()[44:]  # the shared WAVs have a plain 44-byte header


# --- the SDK -----------------------------------------------------------------------------------


@dataclass
class Run:
    events: list[dict] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)  # audio ms -> when sent
    closed: tuple | None = None
    finish_at: float = 0.0
    end_session_s: float = 0.0
    #: set on the first speech_started (the server is hearing the audio) and on close
    heard: threading.Event = field(default_factory=threading.Event)
    closed_event: threading.Event = field(default_factory=threading.Event)

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]

    def at(self, event: dict) -> float:
        return self.times[next(i for i, e in enumerate(self.events) if e is event)]


def sdk_session(url: str, chunks: list[tuple[bytes, int]], *, rate: int = 16000,
                fmt: str = "pcm", vad: bool = True, pace: float = 1.0,
                commit_after: tuple[int, ...] = (), new_shape: bool = False,
                corpus: str | None = None, run: Run | None = None) -> Run:
    """Drive OmniRealtimeConversation as its documentation shows: connect, update_session,
    append_audio per chunk (each ``(bytes, audio ms at its end)``) at ``pace`` x real time,
    ``commit()`` after the chunks whose index is in ``commit_after``, end_session, close."""
    from dashscope.audio.qwen_omni import (AudioFormatConfig, MultiModality,
                                           OmniRealtimeCallback, OmniRealtimeConversation)
    from dashscope.audio.qwen_omni.omni_realtime import TranscriptionParams
    run = run or Run()
    lock = threading.Lock()

    class Callback(OmniRealtimeCallback):
        def on_event(self, message) -> None:
            with lock:
                run.events.append(message)
                run.times.append(time.monotonic())
            if message.get("type") == "input_audio_buffer.speech_started":
                run.heard.set()

        def on_close(self, code, msg) -> None:
            run.closed = (code, msg)
            run.closed_event.set()

    conv = OmniRealtimeConversation(model=MODEL, callback=Callback(), url=url, api_key=KEY)
    conv.connect()
    conv.update_session(
        output_modalities=[MultiModality.TEXT], enable_turn_detection=vad,
        turn_detection_threshold=0.2, turn_detection_silence_duration_ms=800,
        transcription_params=TranscriptionParams(language="en", sample_rate=rate,
                                                 input_audio_format=fmt, corpus_text=corpus),
        input_audio_config=AudioFormatConfig(type=fmt, sample_rate=rate) if new_shape else None)
    t0 = time.monotonic()
    for i, (data, end_ms) in enumerate(chunks):
        conv.append_audio(base64.b64encode(data).decode())
        run.sent_at[end_ms] = time.monotonic()
        if i in commit_after:
            conv.commit()
        time.sleep(max(0.0, t0 + end_ms / 1000 / pace - time.monotonic()))
    run.finish_at = time.monotonic()
    conv.end_session(timeout=60)
    run.end_session_s = time.monotonic() - run.finish_at
    # the server closes after session.finished (the tests that care assert run.closed)
    run.closed_event.wait(30)
    conv.close()
    return run


def pcm_chunks(pcm: bytes, rate: int, chunk_ms: int = 100) -> list[tuple[bytes, int]]:
    step = rate * 2 * chunk_ms // 1000
    return [(pcm[o:o + step], (o + len(pcm[o:o + step])) * 1000 // (rate * 2))
            for o in range(0, len(pcm), step)]


def check_items(run: Run, expected: list[str]) -> list[dict]:
    """Completed items in order, each with the expected words, interim text before it, a
    documented emotion; the event ids unique; session.finished last."""
    assert [e["type"] for e in run.events[:2]] == ["session.created", "session.updated"]
    assert run.events[-1]["type"] == "session.finished", run.events[-3:]
    assert not run.of("error"), run.of("error")
    assert len({e["event_id"] for e in run.events}) == len(run.events)
    done = run.of(COMPLETED)
    assert len(done) == len(expected), [d["transcript"] for d in done]
    previous = None
    for item, words in zip(done, expected, strict=True):
        assert words in norm(item["transcript"]), (words, item["transcript"])
        assert item["emotion"] in EMOTIONS and item["language"] == "en"
        assert item["content_index"] == 0
        idx = run.events.index(item)
        interim = [e for e in run.events[:idx] if e["type"] == TEXT
                   and e["item_id"] == item["item_id"]]
        assert interim, f"no interim text before {item['transcript']!r}"
        assert all(set(e) >= {"text", "stash", "language", "emotion"} for e in interim)
        (committed,) = [e for e in run.of("input_audio_buffer.committed")
                        if e["item_id"] == item["item_id"]]
        assert committed["previous_item_id"] == previous
        previous = item["item_id"]
    return done


# --- VAD mode, manual mode, 8 kHz, opus -----------------------------------------------------


@pytest.fixture
def stream_options(server, monkeypatch) -> list:
    """The StreamOptions each recognition stream is opened with."""
    seen = []
    real_open = server.runtime.open_stream
    monkeypatch.setattr(server.runtime, "open_stream",
                        lambda opts: seen.append(opts) or real_open(opts))
    return seen


def test_vad_mode_multi_sentence_recording(server, shared_audio, stream_options):
    pcm = pcm_of(shared_audio / "en_jfk_16k.wav")
    run = sdk_session(server.realtime_url, pcm_chunks(pcm, 16000), corpus="fellow Americans")
    (opts,) = stream_options
    assert (opts.format, opts.sample_rate, opts.language_hints, opts.context, opts.endpointing,
            opts.vad_threshold, opts.max_sentence_silence_ms) == \
        ("pcm", 16000, ("en",), "fellow Americans", True, 0.5, 800)
    done = check_items(run, JFK)
    starts = run.of("input_audio_buffer.speech_started")
    stops = run.of("input_audio_buffer.speech_stopped")
    assert len(starts) == len(stops) == 3
    assert [s["item_id"] for s in starts] == [d["item_id"] for d in done]
    for a, b in zip(starts, stops, strict=True):
        assert 0 <= a["audio_start_ms"] < b["audio_end_ms"] <= len(pcm) // 32
    # end_session returned on the server's session.finished, not on the SDK's own timeout
    assert run.of("session.finished") and run.closed == (1000, "session finished")
    # delays.  audio_end_ms includes 200 ms of padding after the last voiced frame; the VAD
    # ends an utterance once 800 ms of silence follow that frame, i.e. at audio_end_ms + 600
    # (or at session.finish for the last one): from the moment that audio was sent, what is
    # left is ours
    print("\nqwen VAD en_jfk_16k (real time):")
    last_ms = max(run.sent_at)
    for stop, item in zip(stops, done, strict=True):
        decided = stop["audio_end_ms"] + 600
        sent = run.finish_at if decided >= last_ms else \
            min(t for ms, t in run.sent_at.items() if ms >= decided)
        print(f"  {item['transcript']!r}: speech_stopped -> completed "
              f"{(run.at(item) - run.at(stop)) * 1000:.0f} ms; endpoint audio sent -> "
              f"speech_stopped {(run.at(stop) - sent) * 1000:.0f} ms")
    print(f"  end_session returned {run.end_session_s * 1000:.0f} ms after session.finish")


def test_manual_mode_commits(server, shared_audio, stream_options):
    # commit in the two long pauses (at 3.0 s and 5.2 s), the rest at end_session; sent at
    # twice real time: manual mode does not depend on the pace
    chunks = pcm_chunks(pcm_of(shared_audio / "en_jfk_16k.wav"), 16000)
    run = sdk_session(server.realtime_url, chunks, vad=False, pace=2.0, commit_after=(29, 51))
    assert [o.endpointing for o in stream_options] == [False]
    check_items(run, JFK)
    assert not run.of("input_audio_buffer.speech_started")  # no VAD events in manual mode


def test_manual_mode_one_commit_is_one_utterance(server, shared_audio):
    chunks = pcm_chunks(pcm_of(shared_audio / "en_jfk_16k.wav"), 16000)
    run = sdk_session(server.realtime_url, chunks, vad=False, pace=4.0,
                      commit_after=(len(chunks) - 1,))
    (item,) = check_items(run, ["fellow americans"])
    text = norm(item["transcript"])
    assert "your country can do for you" in text and "for your country" in text, text


def test_8khz_input(server, shared_audio):
    run = sdk_session(server.realtime_url,
                      pcm_chunks(pcm_of(shared_audio / "en_ldc93s1_8k.wav"), 8000), rate=8000)
    (item,) = run.of(COMPLETED)
    assert sum(w in norm(item["transcript"]) for w in LDC_WORDS) >= 2, item["transcript"]
    assert run.events[-1]["type"] == "session.finished"


def test_opus_input_with_the_newer_session_shape(server, shared_audio, tmp_path):
    if not audiogen.have_tools("ffmpeg"):
        pytest.skip("ffmpeg not installed (needed to encode opus)")
    src = shared_audio / "en_ps_librivox_0870.wav"
    data = audiogen.encode(src, "opus", tmp_path / "a.opus", rate=16000).read_bytes()
    total_ms = 7100
    step = 1500  # bytes: Ogg pages split anywhere
    chunks = [(data[o:o + step], min(total_ms, (o + step) * total_ms // len(data)))
              for o in range(0, len(data), step)]
    run = sdk_session(server.realtime_url, chunks, fmt="opus", new_shape=True, pace=2.0)
    assert run.events[1]["session"]["input_audio_format"] == "opus"
    text = norm(" ".join(d["transcript"] for d in run.of(COMPLETED)))
    assert "dashwood" in text and "leisure" in text, text
    assert run.events[-1]["type"] == "session.finished"


# --- bad input, with a good session running at the same time ------------------------------


def raw(url: str, model: str = MODEL, **kw):
    return connect(f"{url}?model={model}", additional_headers={"Authorization": f"Bearer {KEY}"},
                   open_timeout=5, max_size=None, **kw)


def send(ws, type_: str, eid: str = "event_t", **fields) -> None:
    ws.send(json.dumps({"event_id": eid, "type": type_, **fields}))


def recv_until(ws, *types: str, timeout: float = 30) -> list[dict]:
    out = []
    while not out or out[-1]["type"] not in types:
        out.append(json.loads(ws.recv(timeout=timeout)))
    return out


def expect_error(ws, code: str, param: str | None = "audio", eid: str | None = "event_t") -> dict:
    err = recv_until(ws, "error")[-1]["error"]
    assert (err["type"], err["code"], err["param"], err["event_id"]) == \
        ("invalid_request_error", code, param, eid), err
    assert err["message"]
    return err


@contextlib.contextmanager
def open_session(url: str, **session):
    with raw(url) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        body = {"input_audio_format": "pcm", "sample_rate": 16000,
                "input_audio_transcription": {"language": "en"},
                "turn_detection": {"type": "server_vad", "threshold": 0.2,
                                   "silence_duration_ms": 800}, **session}
        send(ws, "session.update", session=body)
        assert recv_until(ws, "session.updated")[-1]["session"]["input_audio_format"] == \
            body["input_audio_format"]
        yield ws


def append(ws, data: bytes, eid: str = "event_a") -> None:
    send(ws, "input_audio_buffer.append", eid, audio=base64.b64encode(data).decode())


def alive(ws) -> None:
    """The session still answers."""
    send(ws, "session.update", "event_ok", session={})
    assert recv_until(ws, "session.updated", "error")[-1]["type"] == "session.updated"


def client_gone_count() -> float:
    for line in render_metrics()[0].decode().splitlines():
        if line.startswith("callscribe_tasks_total{") and 'outcome="client_gone"' in line \
                and 'protocol="qwen-realtime"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def bad_inputs(server, shared_audio):
    url = server.realtime_url
    pcm = pcm_of(shared_audio / "en_ldc93s1_16k.wav")
    yield "unknown event type"
    with open_session(url) as ws:
        send(ws, "response.create")
        assert "'response.create'" in expect_error(ws, "unknown_event_type", "type")["message"]
        alive(ws)
    yield "append before session.update"
    with raw(url) as ws:
        append(ws, pcm[:3200])
        expect_error(ws, "session_not_configured", "type", "event_a")
        alive(ws)
    yield "invalid base64"
    with open_session(url) as ws:
        send(ws, "input_audio_buffer.append", audio="this is not base64!")
        expect_error(ws, "invalid_base64")
        alive(ws)
    yield "16 MiB append"
    with open_session(url) as ws:
        send(ws, "input_audio_buffer.append", audio="A" * (16 * 1024 * 1024))
        assert "15 MiB" in expect_error(ws, "audio_too_large")["message"]
        alive(ws)
    yield "wrong audio format"
    with raw(url) as ws:
        send(ws, "session.update", session={"input_audio_format": "mp3"})
        expect_error(ws, "invalid_value", "session.input_audio_format")
        send(ws, "session.update", session={"audio": {"input": {"format": {
            "type": "pcm", "sample_rate": 44100}}}})
        assert "44100" in expect_error(ws, "invalid_value",
                                       "session.audio.input.format.sample_rate")["message"]
        alive(ws)
    yield "audio that is not the declared format"
    with open_session(url, input_audio_format="opus") as ws:
        append(ws, pcm[:32000])
        events = recv_until(ws, "error")
        err = events[-1]["error"]
        assert (err["type"], err["code"], err["event_id"]) == \
            ("invalid_request_error", "CorruptAudio", "event_a"), err
        alive(ws)
    yield "more than 60 s without commit in manual mode"
    with open_session(url, turn_detection=None) as ws:
        append(ws, bytes(16000 * 2 * 61), "event_long")  # 61 s of silence in one event
        expect_error(ws, "input_audio_buffer_too_long", "audio", "event_long")
        send(ws, "input_audio_buffer.commit")  # the long audio was discarded
        expect_error(ws, "input_audio_buffer_commit_empty", None)
        append(ws, pcm)
        send(ws, "input_audio_buffer.commit")
        events = recv_until(ws, COMPLETED, timeout=60)
        assert [e["type"] for e in events][:2] == ["input_audio_buffer.committed",
                                                    "conversation.item.created"]
        assert any(w in norm(events[-1]["transcript"]) for w in LDC_WORDS)
        send(ws, "session.finish")
        assert recv_until(ws, "session.finished")[-1]["type"] == "session.finished"
    yield "a client that vanishes"
    gone = client_gone_count()
    with open_session(url) as ws:
        during = server.admission.active
        append(ws, pcm[:32000])
        ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a WebSocket close frame
        ws.socket.close()
        wait_until(lambda: client_gone_count() == gone + 1 and server.admission.active < during,
                   30, "the vanished client's session abandoned and freed", every=0.05)
    assert client_gone_count() == gone + 1
    assert server.admission.active < during
    yield "unknown model, no key"
    with raw(url, model="qwen-omni-turbo") as ws:
        err = json.loads(ws.recv(timeout=10))["error"]
        assert err["code"] == "ModelNotFound" and err["param"] == "model"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1008
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{url}?model={MODEL}", open_timeout=5)
    assert refused.value.response.status_code == 401


def test_bad_inputs_do_not_disturb_a_concurrent_session(server, shared_audio):
    good: dict = {}
    watch = Run()

    def good_session():
        try:
            good["run"] = sdk_session(server.realtime_url,
                                      pcm_chunks(pcm_of(shared_audio / "en_jfk_16k.wav"), 16000),
                                      run=watch)
        except Exception as exc:  # pragma: no cover - reported below
            good["exc"] = exc
        finally:
            watch.heard.set()  # never leave the wait below hanging

    t = threading.Thread(target=good_session)
    t.start()
    # the good session is under way (the server hears its speech) before the bad inputs start
    assert watch.heard.wait(60), "the good session's speech was not heard in 60 s"
    assert "exc" not in good, good.get("exc")
    done = list(bad_inputs(server, shared_audio))
    t.join(60)
    assert len(done) == 9, done
    assert "exc" not in good, good.get("exc")
    check_items(good["run"], JFK)


def test_drain_on_shutdown(loop_thread, runtime, tmp_path, shared_audio):
    """SIGTERM's path (Gateway.shutdown): a realtime session gets the grace, then what it sent
    is recognised, then server_error ServerShuttingDown and close 1001."""
    settings = load_settings(api_keys=KEY, vocabulary_db=tmp_path / "v.sqlite3")
    gw = loop_thread.run(start_gateway(settings, runtime))
    url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/realtime"
    pcm = pcm_of(shared_audio / "en_jfk_16k.wav")
    with open_session(url) as ws:
        for off in range(0, 16000 * 2 * 3, 3200):  # the first 3 s, in real time
            append(ws, pcm[off:off + 3200])
            time.sleep(0.1)  # pacing the audio, not a wait
        stopping = threading.Thread(target=lambda: loop_thread.run(gw.shutdown(0.5)))
        stopping.start()
        events = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                events.append(json.loads(ws.recv(timeout=30)))
        stopping.join(30)
    assert closed.value.rcvd.code == 1001
    err = events[-1]["error"]
    assert (err["type"], err["code"]) == ("server_error", "ServerShuttingDown")
    assert "fellow americans" in norm(" ".join(e["transcript"] for e in events
                                               if e["type"] == COMPLETED))
