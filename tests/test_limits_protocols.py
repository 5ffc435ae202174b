"""Limits in the protocol state machines (issue 13), Sans-I/O: SilenceTimeout in audio time,
run-task frames sent before task-started, the Qwen per-append and manual-mode limits."""

from __future__ import annotations

import base64
import itertools
import json

import pytest

from callscribe.errors import DecodeLimitExceeded
from callscribe.protocols.common import (AbortRecognition, AudioData, Close, CommitInput,
                                         SendFrame, StartRecognition)
from callscribe.protocols.qwen_realtime import QwenRealtimeProtocol
from callscribe.protocols.run_task import RunTaskProtocol, State
from callscribe.recognition.events import FinalSentence, Progress, SpeechStarted

TID = "634b6de6ba6f4ee3bd704bede5407196"
SID = "sess_1"
SECOND = 32000  # bytes of 16 kHz s16le


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def frames(outs) -> list[dict]:
    return [json.loads(o.text) for o in outs if isinstance(o, SendFrame)]


# --- run-task: SilenceTimeout counts audio time ----------------------------------------------


def run_task(**params) -> str:
    p = {"sample_rate": 16000, "format": "pcm", **params}
    return json.dumps({"header": {"streaming": "duplex", "task_id": TID, "action": "run-task"},
                       "payload": {"model": "fun-asr-realtime", "task_group": "audio",
                                   "task": "asr", "function": "recognition", "input": {},
                                   "parameters": p}})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rt(clock) -> RunTaskProtocol:
    p = RunTaskProtocol(clock=clock)
    p.receive_text(run_task())
    assert isinstance(p.outputs()[0], StartRecognition)
    p.recognition_started(TID)
    p.outputs()
    return p


def silence_failed(outs) -> bool:
    f = frames(outs)
    return bool(f) and f[-1]["header"].get("error_code") == "SilenceTimeout" \
        and outs[-1] == Close(1000, "SilenceTimeout")


def test_silence_timeout_fires_at_60_s_of_processed_audio_at_any_pace(rt, clock):
    clock.t += 6  # 60 s of silence sent at 10x: 6 s of wall time
    rt.recognition_event(TID, Progress(59_999))
    assert rt.outputs() == [] and rt.state is State.RUNNING
    rt.recognition_event(TID, Progress(60_000))
    outs = rt.outputs()
    assert silence_failed(outs), frames(outs)
    assert frames(outs)[-1]["header"]["error_message"] == (
        "no speech for 60 seconds of audio; set parameters.heartbeat=true to keep a silent "
        "task open")


def test_silence_is_counted_from_the_end_of_the_last_speech_in_audio_time(rt, clock):
    rt.recognition_event(TID, SpeechStarted(1, 50_000))
    rt.recognition_event(TID, Progress(200_000))  # speaking: no timeout whatever the length
    assert rt.outputs() == []
    rt.recognition_event(TID, FinalSentence(1, 50_000, 70_000, "", (), "en"))
    rt.recognition_event(TID, Progress(129_999))
    assert frames(rt.outputs()) == []
    rt.recognition_event(TID, Progress(130_000))
    assert silence_failed(rt.outputs())


def test_with_progress_wall_clock_silence_no_longer_times_out(rt, clock):
    rt.recognition_event(TID, Progress(1_000))
    for _ in range(70):  # 70 s of wall time, the client sending, recognition behind
        clock.t += 1
        rt.receive_binary(bytes(3200))
        rt.audio_consumed(TID, 0)
        rt.handle_timers()
    assert not silence_failed(rt.outputs()) and rt.state is State.RUNNING


def test_heartbeat_tasks_never_time_out_on_silence(clock):
    p = RunTaskProtocol(clock=clock)
    p.receive_text(run_task(heartbeat=True))
    p.outputs()
    p.recognition_started(TID)
    p.recognition_event(TID, Progress(600_000))
    assert not silence_failed(p.outputs()) and p.state is State.RUNNING


def test_continue_task_and_audio_before_task_started_are_kept_in_order(clock):
    p = RunTaskProtocol(clock=clock)
    p.receive_text(run_task())
    p.outputs()
    p.receive_binary(b"\x01" * 3200)
    p.receive_text(json.dumps({"header": {"task_id": TID, "action": "continue-task"},
                               "payload": {"input": {}}}))
    p.receive_binary(b"\x02" * 3200)
    assert p.outputs() == [AudioData(TID, b"\x01" * 3200), AudioData(TID, b"\x02" * 3200)]
    p.recognition_started(TID)
    assert frames(p.outputs())[0]["header"]["event"] == "task-started"
    assert p.state is State.RUNNING


# --- Qwen: one append, and one manual-mode item -------------------------------------------------


def qwen(clock, max_append_ms: int = 60_000) -> QwenRealtimeProtocol:
    counter = itertools.count(1)
    p = QwenRealtimeProtocol(clock=clock, model="qwen3-asr-flash-realtime",
                             max_append_ms=max_append_ms, ids=lambda: str(next(counter)))
    p.outputs()
    return p


def update(**session) -> str:
    body = {"input_audio_format": "pcm", "sample_rate": 16000, **session}
    return json.dumps({"event_id": "event_u", "type": "session.update", "session": body})


def append(data: bytes, eid: str = "event_a") -> str:
    return json.dumps({"event_id": eid, "type": "input_audio_buffer.append",
                       "audio": base64.b64encode(data).decode()})


def error_of(outs) -> dict:
    errs = [f["error"] for f in frames(outs) if f["type"] == "error"]
    assert len(errs) == 1, frames(outs)
    return errs[0]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_an_append_over_the_session_buffer_is_refused_before_decoding(clock, rate):
    p = qwen(clock)
    p.receive_text(update(sample_rate=rate))
    p.outputs()
    p.receive_text(append(bytes(2 * rate * 60 + 2), "event_big"))  # 60 s + one sample
    outs = p.outputs()
    err = error_of(outs)
    assert (err["type"], err["code"], err["param"], err["event_id"]) == \
        ("invalid_request_error", "audio_too_large", "audio", "event_big")
    assert "at most 60 s (CALLSCRIBE_MAX_BUFFERED_AUDIO_MS)" in err["message"]
    assert not any(isinstance(o, (StartRecognition, AudioData, Close)) for o in outs)
    p.receive_text(append(bytes(2 * rate * 60)))  # exactly 60 s: fine
    assert any(isinstance(o, AudioData) for o in p.outputs())


def test_manual_mode_refuses_the_append_that_would_exceed_60_s_and_keeps_the_rest(clock):
    p = qwen(clock)
    p.receive_text(update(turn_detection=None))
    p.outputs()
    for i in range(60):
        p.receive_text(append(bytes(SECOND), f"event_{i}"))
    audio = [o for o in p.outputs() if isinstance(o, AudioData)]
    assert len(audio) == 60
    p.recognition_started(SID)
    p.receive_text(append(bytes(SECOND), "event_60"))
    outs = p.outputs()
    err = error_of(outs)
    assert (err["code"], err["event_id"]) == ("input_audio_buffer_too_long", "event_60")
    assert "the audio before it is kept" in err["message"]
    assert not any(isinstance(o, (AudioData, CommitInput, Close)) for o in outs)
    p.receive_text(json.dumps({"event_id": "event_c", "type": "input_audio_buffer.commit"}))
    outs = p.outputs()
    assert CommitInput(SID, False) in outs  # the 60 s are committed, nothing was discarded
    p.receive_text(append(bytes(SECOND), "event_61"))  # a new item may take 60 s again
    assert any(isinstance(o, AudioData) for o in p.outputs())


def test_an_opus_append_stopped_by_the_decoder_limit_is_audio_too_large(clock):
    p = qwen(clock)
    p.receive_text(update(input_audio_format="opus"))
    p.outputs()
    p.receive_text(append(b"OggS" + bytes(100), "event_o"))
    p.outputs()
    p.recognition_started(SID)
    p.recognition_failed(SID, DecodeLimitExceeded("opus: one input decodes to more than "
                                                  "60000 ms of audio"))
    outs = p.outputs()
    err = error_of(outs)
    assert (err["type"], err["code"], err["event_id"]) == \
        ("invalid_request_error", "audio_too_large", "event_o")
    assert AbortRecognition(SID) in outs and not any(isinstance(o, Close) for o in outs)
    p.receive_text(append(b"OggS" + bytes(100), "event_p"))  # a fresh stream
    assert isinstance(p.outputs()[0], StartRecognition)
