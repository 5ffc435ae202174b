"""Issue 16 end to end on the real model: the Java microphone example's ``format("wav")`` with
headerless PCM, and where a final closed by finish-task ends.  A raw WebSocket client speaks
exactly what the SDKs send; the Java SDK itself runs in test_java_sdk.py."""

from __future__ import annotations

import json
import uuid
import wave

import numpy as np
import pytest
import structlog
from websockets.sync.client import connect

from callscribe.audio import open_decoder
from callscribe.errors import CorruptAudio
from callscribe.settings import load_settings
from serverutil import start_gateway

KEY = "sk-fidelity-test"


def _pcm(path) -> tuple[bytes, int]:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


# --- 1: "wav" without a RIFF header, decoder level (always runs) ----------------------------


def test_wav_without_riff_is_s16le_at_the_declared_rate():
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(8000) * 3000).astype("<i2").tobytes()
    dec = open_decoder("wav", 8000, target_rate=8000)
    out = np.concatenate([dec.feed(pcm[i:i + 333]) for i in range(0, len(pcm), 333)]
                         + [dec.finish()], axis=1)
    ref = open_decoder("pcm", 8000, target_rate=8000)
    assert dec.headerless and not ref.headerless
    np.testing.assert_array_equal(out, np.concatenate([ref.feed(pcm), ref.finish()], axis=1))


def test_wav_with_a_header_and_a_declared_rate_is_still_parsed(tmp_path):
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\x10\x00" * 1600)
    dec = open_decoder("wav", 16000)
    assert dec.feed(path.read_bytes()).shape == (1, 1600) and not dec.headerless


def test_wav_without_a_declared_rate_still_needs_riff():
    with pytest.raises(CorruptAudio, match="not a RIFF/WAVE header"):
        open_decoder("wav").feed(b"\x01\x02" * 100)


# --- the real service -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(loop_thread, runtime, tmp_path_factory):
    settings = load_settings(api_keys=KEY,
                             vocabulary_db=tmp_path_factory.mktemp("gw") / "v.sqlite3")
    gw = loop_thread.run(start_gateway(settings, runtime))
    yield gw
    loop_thread.run(gw.shutdown(0))


def run_task(port: int, model: str, fmt: str, rate: int, frames: list[bytes],
             auth: str = f"Bearer {KEY}") -> list[dict]:
    """One task as the SDKs run it; every server event, in order."""
    tid = uuid.uuid4().hex
    events = []
    with connect(f"ws://127.0.0.1:{port}/api-ws/v1/inference",
                 additional_headers={"Authorization": auth}, open_timeout=10) as ws:
        ws.send(json.dumps({"header": {"streaming": "duplex", "task_id": tid,
                                       "action": "run-task"},
                            "payload": {"model": model, "task_group": "audio", "task": "asr",
                                        "function": "recognition", "input": {},
                                        "parameters": {"format": fmt, "sample_rate": rate,
                                                       "language_hints": ["en"]}}}))
        events.append(json.loads(ws.recv(timeout=30)))
        assert events[-1]["header"]["event"] == "task-started", events
        for f in frames:
            ws.send(f)
        ws.send(json.dumps({"header": {"streaming": "duplex", "task_id": tid,
                                       "action": "finish-task"}, "payload": {"input": {}}}))
        while events[-1]["header"]["event"] not in ("task-finished", "task-failed"):
            events.append(json.loads(ws.recv(timeout=120)))
    return events


def finals(events) -> list[dict]:
    return [e["payload"]["output"]["sentence"] for e in events
            if e["header"]["event"] == "result-generated"
            and e["payload"]["output"]["sentence"]["sentence_end"]]


@pytest.mark.shared_audio
def test_java_microphone_example_wav_with_raw_pcm(gateway, shared_audio):
    """Item 1: format "wav", 16-bit PCM frames without a header (the Java SDK's microphone
    example): recognised, not refused; the fallback is logged once for the task."""
    pcm, rate = _pcm(shared_audio / "en_jfk_16k.wav")
    frames = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
    with structlog.testing.capture_logs() as logs:
        events = run_task(gateway.port, "paraformer-realtime-v2", "wav", rate, frames)
    assert events[-1]["header"]["event"] == "task-finished", events[-1]
    text = " ".join(s["text"] for s in finals(events)).lower()
    assert "country" in text and "fellow americans" in text, text
    notes = [r for r in logs if "without a RIFF header" in r.get("event", "")]
    assert len(notes) == 1 and notes[0]["task_id"] == events[0]["header"]["task_id"], notes


@pytest.mark.shared_audio
def test_final_closed_by_finish_task_ends_with_its_last_word(gateway, shared_audio):
    """Item 3: JFK's audio runs to 11000 ms, the speech to ~10.4 s; finish-task closes the
    last sentence (its trailing silence is shorter than max_sentence_silence)."""
    data = (shared_audio / "en_jfk_16k.wav").read_bytes()
    events = run_task(gateway.port, "fun-asr-realtime", "wav", 16000,
                      [data[i:i + 12800] for i in range(0, len(data), 12800)])
    last = finals(events)[-1]
    assert last["end_time"] == last["words"][-1]["end_time"], last
    assert last["end_time"] < 10900, last


@pytest.mark.shared_audio
def test_sentence_begin_and_bare_key_end_to_end(gateway, shared_audio):
    """Items 2 and 7 over the wire: the key without "Bearer" (dashscopego) is accepted, every
    sentence's first result says sentence_begin, no other result does."""
    pcm, rate = _pcm(shared_audio / "en_ldc93s1_8k.wav")
    events = run_task(gateway.port, "paraformer-realtime-8k-v2", "pcm", rate,
                      [pcm[i:i + 1600] for i in range(0, len(pcm), 1600)], auth=KEY)
    results = [e["payload"]["output"]["sentence"] for e in events
               if e["header"]["event"] == "result-generated"]
    assert results, events
    seen = set()
    for s in results:
        assert s["sentence_begin"] is (s["sentence_id"] not in seen), results
        seen.add(s["sentence_id"])
    for s in finals(events):  # the vendor's emotion fields on this model, ours beside them
        assert s["emo_tag"] == s["emotion"]["polarity"]
        assert s["emo_confidence"] == s["emotion"]["confidence"]
