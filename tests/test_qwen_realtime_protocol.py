"""The Qwen-ASR realtime state machine, Sans-I/O: feed client events and recognition events,
assert the exact server events and commands."""

from __future__ import annotations

import base64
import itertools
import json

import pytest

from callscribe.errors import CorruptAudio, EngineError
from callscribe.protocols.common import (AbortRecognition, AudioData, Close, CommitInput,
                                         FinishInput, SendFrame, StartRecognition, TaskOptions,
                                         TaskReport)
from callscribe.protocols.qwen_realtime import (FINISHED_LINGER_S, MAX_APPEND_B64,
                                                QwenRealtimeProtocol, State)
from callscribe.protocols.qwen_session import vad_probability
from callscribe.recognition.events import (Committed, Emotion, FinalSentence, Partial,
                                           SpeechStarted, SpeechStopped)

MODEL = "qwen3-asr-flash-realtime"
SID = "sess_1"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(clock, model: str | None = MODEL) -> QwenRealtimeProtocol:
    counter = itertools.count(1)
    return QwenRealtimeProtocol(clock=clock, model=model, default_vad_threshold=0.5,
                                max_task_seconds=3600, ids=lambda: str(next(counter)))


def frames(outs) -> list[dict]:
    return [json.loads(o.text) for o in outs if isinstance(o, SendFrame)]


def types(outs) -> list[str]:
    return [f["type"] for f in frames(outs)]


def ev(type_: str, **kw) -> str:
    return json.dumps({"event_id": "event_c1", "type": type_, **kw})


def sdk_update(**session) -> str:
    """session.update exactly as OmniRealtimeConversation.update_session sends it with
    transcription_params (legacy top-level format and sample rate)."""
    body = {"modalities": ["text"], "voice": None, "input_audio_format": "pcm",
            "output_audio_format": "pcm16",
            "input_audio_transcription": {"language": "en", "corpus": {"text": "refund agent"}},
            "turn_detection": {"type": "server_vad", "threshold": 0.2, "prefix_padding_ms": 300,
                               "silence_duration_ms": 800},
            "sample_rate": 16000}
    body.update(session)
    return json.dumps({"event_id": "event_d497", "type": "session.update", "session": body})


def append(data: bytes = b"\x00\x01" * 1600, eid: str = "event_a") -> str:
    return json.dumps({"event_id": eid, "type": "input_audio_buffer.append",
                       "audio": base64.b64encode(data).decode()})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def p(clock) -> QwenRealtimeProtocol:
    proto = make(clock)
    assert types(proto.outputs()) == ["session.created"]
    return proto


def configure(p, **session) -> None:
    p.receive_text(sdk_update(**session))
    assert types(p.outputs()) == ["session.updated"]


def start_audio(p, data: bytes = b"\x00\x01" * 1600, audio_ms: int = 100) -> TaskOptions:
    p.receive_text(append(data))
    outs = p.outputs()
    assert isinstance(outs[0], StartRecognition) and outs[0].task_id == SID
    assert outs[1] == AudioData(SID, data)
    p.recognition_started(SID)
    p.audio_consumed(SID, audio_ms)
    assert p.outputs() == []
    return outs[0].options


def error_of(outs) -> dict:
    errs = [f for f in frames(outs) if f["type"] == "error"]
    assert len(errs) == 1, frames(outs)
    return errs[0]["error"]


def final(sid=1, begin=300, end=2100, text="Okay, I got it.", label="happy", lang="en"):
    emo = Emotion("positive", 0.8, label, "text+prosody") if label else None
    return FinalSentence(sid, begin, end, text, (), lang, emo)


# --- connect and session.update ------------------------------------------------------------


def test_session_created_exact(clock):
    p = make(clock)
    (created,) = p.outputs()
    assert created == SendFrame(
        '{"event_id":"event_2","type":"session.created","session":{"id":"sess_1",'
        '"object":"realtime.session","model":"qwen3-asr-flash-realtime","modalities":["text"],'
        '"input_audio_format":"pcm","sample_rate":16000,"input_audio_transcription":{},'
        '"turn_detection":{"type":"server_vad","threshold":0.2,"silence_duration_ms":800}}}')


@pytest.mark.parametrize("model", ["qwen3-asr-flash-realtime-2025-10-27"])
def test_dated_snapshot_accepted(clock, model):
    assert types(make(clock, model).outputs()) == ["session.created"]


@pytest.mark.parametrize("model", [None, "qwen-omni-turbo", "fun-asr-realtime"])
def test_unknown_model_is_an_error_then_close(clock, model):
    p = make(clock, model)
    outs = p.outputs()
    err = error_of(outs)
    assert (err["type"], err["code"], err["param"]) == \
        ("invalid_request_error", "ModelNotFound", "model")
    assert MODEL in err["message"]
    assert outs[-1] == Close(1008, "ModelNotFound")
    assert isinstance(outs[-2], TaskReport) and outs[-2].outcome == "failed"


def test_session_update_legacy_shape_exact(p):
    p.receive_text(sdk_update(sample_rate=8000))
    (f,) = frames(p.outputs())
    assert f == {"event_id": "event_3", "type": "session.updated", "session": {
        "id": SID, "object": "realtime.session", "model": MODEL, "modalities": ["text"],
        "input_audio_format": "pcm", "sample_rate": 8000,
        "input_audio_transcription": {"language": "en", "corpus": {"text": "refund agent"}},
        "turn_detection": {"type": "server_vad", "threshold": 0.2,
                           "silence_duration_ms": 800}}}


def test_session_update_new_shape_and_sdk_defaults(p):
    # update_session(input_audio_config=AudioFormatConfig("opus", 8000)) with no
    # transcription params: the newer audio.input.format shape, input_audio_transcription
    # {"model": None}, and extra keys the SDK always sends
    p.receive_text(json.dumps({"event_id": "e", "type": "session.update", "session": {
        "modalities": ["text"], "voice": None,
        "audio": {"input": {"format": {"type": "opus", "sample_rate": 8000}}},
        "input_audio_transcription": {"model": None},
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                           "silence_duration_ms": 1200}}}))
    (f,) = frames(p.outputs())
    s = f["session"]
    assert (s["input_audio_format"], s["sample_rate"]) == ("opus", 8000)
    assert s["turn_detection"] == {"type": "server_vad", "threshold": 0.5,
                                   "silence_duration_ms": 1200}
    opts = start_audio(p)
    assert (opts.format, opts.sample_rate, opts.max_sentence_silence_ms) == ("opus", 8000, 1200)
    assert opts.vad_threshold == vad_probability(0.5, 0.5) and opts.endpointing


def test_legacy_sdk_default_format_pcm16(p):
    # update_session() without transcription params sends input_audio_format "pcm16"
    configure(p, input_audio_format="pcm16", sample_rate=None, input_audio_transcription=None)
    opts = start_audio(p)
    assert (opts.format, opts.sample_rate, opts.language_hints, opts.context) == \
        ("pcm", 16000, (), None)


def test_stream_options_from_the_session(p):
    configure(p)
    opts = start_audio(p)
    assert opts == TaskOptions(model=MODEL, format="pcm", sample_rate=16000,
                               language_hints=("en",), max_sentence_silence_ms=800,
                               context="refund agent", vad_threshold=0.5, endpointing=True)


def test_threshold_mapping():
    assert vad_probability(0.2, 0.5) == 0.5
    assert vad_probability(1.0, 0.5) == 0.95
    assert vad_probability(-1.0, 0.5) == 0.05
    assert vad_probability(0.6, 0.5) == pytest.approx(0.725)
    assert vad_probability(0.0, 0.5) < 0.5 < vad_probability(0.4, 0.5)


# --- VAD mode --------------------------------------------------------------------------------


def test_vad_mode_items_exact(p, clock):
    configure(p)
    start_audio(p)
    p.recognition_event(SID, SpeechStarted(1, 300))
    p.recognition_event(SID, Partial(1, 300, 1300, "Okay,", " I got", "en"))
    p.recognition_event(SID, final())
    p.recognition_event(SID, SpeechStopped(1, 2100))
    p.recognition_event(SID, SpeechStarted(2, 3000))
    p.recognition_event(SID, final(2, 3000, 4000, "Thanks.", None))
    p.recognition_event(SID, SpeechStopped(2, 4000))
    assert frames(p.outputs()) == [
        {"event_id": "event_5", "type": "input_audio_buffer.speech_started",
         "audio_start_ms": 300, "item_id": "item_4"},
        {"event_id": "event_6", "type": "conversation.item.input_audio_transcription.text",
         "item_id": "item_4", "content_index": 0, "language": "en", "emotion": "neutral",
         "text": "Okay,", "stash": " I got"},
        {"event_id": "event_7", "type": "input_audio_buffer.speech_stopped",
         "audio_end_ms": 2100, "item_id": "item_4"},
        {"event_id": "event_8", "type": "input_audio_buffer.committed",
         "previous_item_id": None, "item_id": "item_4"},
        {"event_id": "event_9", "type": "conversation.item.created", "previous_item_id": None,
         "item": {"id": "item_4", "object": "realtime.item", "type": "message",
                  "status": "completed", "role": "user",
                  "content": [{"type": "input_audio", "transcript": None}]}},
        {"event_id": "event_10", "type": "conversation.item.input_audio_transcription.completed",
         "item_id": "item_4", "content_index": 0, "language": "en", "emotion": "happy",
         "transcript": "Okay, I got it."},
        {"event_id": "event_12", "type": "input_audio_buffer.speech_started",
         "audio_start_ms": 3000, "item_id": "item_11"},
        {"event_id": "event_13", "type": "input_audio_buffer.speech_stopped",
         "audio_end_ms": 4000, "item_id": "item_11"},
        {"event_id": "event_14", "type": "input_audio_buffer.committed",
         "previous_item_id": "item_4", "item_id": "item_11"},
        {"event_id": "event_15", "type": "conversation.item.created",
         "previous_item_id": "item_4",
         "item": {"id": "item_11", "object": "realtime.item", "type": "message",
                  "status": "completed", "role": "user",
                  "content": [{"type": "input_audio", "transcript": None}]}},
        {"event_id": "event_16", "type": "conversation.item.input_audio_transcription.completed",
         "item_id": "item_11", "content_index": 0, "language": "en", "emotion": "neutral",
         "transcript": "Thanks."},
    ]
    clock.t += 1
    p.receive_text(ev("session.finish"))
    assert p.outputs() == [FinishInput(SID)]
    clock.t += 0.25
    p.recognition_finished(SID)
    outs = p.outputs()
    assert types(outs) == ["session.finished"]
    report = next(o for o in outs if isinstance(o, TaskReport))
    assert (report.task_id, report.outcome, report.sentences, report.last_package_delay_ms) == \
        (SID, "finished", 2, 250.0)
    # the client closes (the Java SDK's endSession() does, and throws if the server did
    # first); the server only after FINISHED_LINGER_S
    assert not any(isinstance(o, Close) for o in outs) and p.state is State.FINISHED
    assert p.next_deadline() == clock.t + FINISHED_LINGER_S
    clock.t += FINISHED_LINGER_S
    p.handle_timers()
    assert p.outputs() == [Close(1000, "session finished")]
    assert p.state is State.CLOSED


def test_speech_without_words_completes_empty(p):
    configure(p)
    start_audio(p)
    p.recognition_event(SID, SpeechStarted(1, 100))
    p.recognition_event(SID, SpeechStopped(1, 900))
    fs = frames(p.outputs())
    assert [f["type"] for f in fs] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.created",
        "conversation.item.input_audio_transcription.completed"]
    assert fs[-1]["transcript"] == ""


def test_event_ids_and_item_ids_are_unique(p):
    configure(p)
    start_audio(p)
    for i in range(1, 4):
        p.recognition_event(SID, SpeechStarted(i, i * 1000))
        p.recognition_event(SID, Partial(i, i * 1000, i * 1000 + 500, "a", "b", "en"))
        p.recognition_event(SID, final(i, i * 1000, i * 1000 + 800, "Yes."))
    fs = frames(p.outputs())
    assert len({f["event_id"] for f in fs}) == len(fs)
    items = [f["item_id"] for f in fs if f["type"].endswith("completed")]
    assert len(set(items)) == 3
    prev = [f["previous_item_id"] for f in fs if f["type"] == "input_audio_buffer.committed"]
    assert prev == [None, items[0], items[1]]


def test_commit_in_vad_mode_is_a_client_error(p):
    configure(p)
    start_audio(p)
    p.receive_text(ev("input_audio_buffer.commit"))
    err = error_of(p.outputs())
    assert (err["type"], err["code"], err["event_id"]) == \
        ("invalid_request_error", "commit_in_vad_mode", "event_c1")


def test_clear_drops_the_speech_in_progress(p):
    configure(p)
    start_audio(p)
    p.recognition_event(SID, SpeechStarted(1, 100))
    p.recognition_event(SID, Partial(1, 100, 900, "Hello", "", "en"))
    p.outputs()
    p.receive_text(ev("input_audio_buffer.clear"))
    outs = p.outputs()
    assert outs[0] == CommitInput(SID, discard=True)
    assert types(outs) == ["input_audio_buffer.cleared"]
    p.recognition_event(SID, Committed(900, discarded=True))
    assert p.outputs() == []
    p.recognition_event(SID, SpeechStarted(1, 1500))  # the next speech is a new item
    (f,) = frames(p.outputs())
    assert f["item_id"] != "item_4"


# --- manual mode -----------------------------------------------------------------------------


def test_manual_mode_commits_exact(p):
    configure(p, turn_detection=None)
    opts = start_audio(p)
    assert opts.endpointing is False and opts.vad_threshold is None
    p.recognition_event(SID, SpeechStarted(1, 200))  # no VAD events on the wire
    p.recognition_event(SID, Partial(1, 200, 1200, "Hello", " there", "en"))
    assert frames(p.outputs()) == [
        {"event_id": "event_5", "type": "conversation.item.input_audio_transcription.text",
         "item_id": "item_4", "content_index": 0, "language": "en", "emotion": "neutral",
         "text": "Hello", "stash": " there"}]
    p.receive_text(ev("input_audio_buffer.commit"))
    outs = p.outputs()
    assert types(outs) == ["input_audio_buffer.committed", "conversation.item.created"]
    assert frames(outs)[0] == {"event_id": "event_6", "type": "input_audio_buffer.committed",
                               "previous_item_id": None, "item_id": "item_4"}
    assert outs[-1] == CommitInput(SID, discard=False)
    # the next item's audio arrives before the first item is recognised
    p.receive_text(append())
    assert isinstance(p.outputs()[0], AudioData)
    p.audio_consumed(SID, 3000)
    p.recognition_event(SID, Partial(1, 200, 2200, "Hello there", "", "en"))
    p.recognition_event(SID, final(1, 200, 2400, "Hello there.", "neutral"))
    p.recognition_event(SID, SpeechStopped(1, 2400))
    p.recognition_event(SID, Committed(2500))
    fs = frames(p.outputs())
    assert [f["type"] for f in fs] == ["conversation.item.input_audio_transcription.text",
                                       "conversation.item.input_audio_transcription.completed"]
    assert fs[0]["item_id"] == fs[1]["item_id"] == "item_4"
    assert fs[1] == {"event_id": "event_9",
                     "type": "conversation.item.input_audio_transcription.completed",
                     "item_id": "item_4", "content_index": 0, "language": "en",
                     "emotion": "neutral", "transcript": "Hello there."}
    # second item: two finals (a cut long utterance) make one transcript
    p.recognition_event(SID, final(2, 2600, 2900, "One.", None))
    p.recognition_event(SID, Partial(3, 2900, 3000, "Two", "", "en"))
    p.receive_text(ev("input_audio_buffer.commit"))
    p.recognition_event(SID, final(3, 2900, 3000, "Two.", None))
    p.recognition_event(SID, Committed(3000))
    fs = frames(p.outputs())
    assert [f["type"] for f in fs][-1].endswith(".completed")
    assert fs[0]["text"] == "One. Two" and fs[0]["item_id"] == "item_10"
    assert fs[1]["previous_item_id"] == "item_4" and fs[1]["item_id"] == "item_10"
    assert fs[-1]["transcript"] == "One. Two."


def test_manual_commit_with_nothing_appended(p):
    configure(p, turn_detection=None)
    p.receive_text(ev("input_audio_buffer.commit"))
    err = error_of(p.outputs())
    assert err["code"] == "input_audio_buffer_commit_empty"
    start_audio(p)
    p.receive_text(ev("input_audio_buffer.commit"))
    p.outputs()
    p.receive_text(ev("input_audio_buffer.commit"))  # again, nothing new
    assert error_of(p.outputs())["code"] == "input_audio_buffer_commit_empty"


def test_manual_more_than_60_seconds_without_commit(p):
    configure(p, turn_detection=None)
    start_audio(p, audio_ms=30_000)
    p.receive_text(append(eid="event_big"))
    p.outputs()
    p.audio_consumed(SID, 60_500)
    outs = p.outputs()
    assert outs[0] == CommitInput(SID, discard=True)
    err = error_of(outs)
    assert (err["type"], err["code"], err["param"], err["event_id"]) == \
        ("invalid_request_error", "input_audio_buffer_too_long", "audio", "event_big")
    assert not any(isinstance(o, Close) for o in outs)
    p.recognition_event(SID, Committed(60_500, discarded=True))
    p.receive_text(append())
    p.outputs()
    p.audio_consumed(SID, 61_000)  # counted from the discard: fine
    assert p.outputs() == []
    p.receive_text(ev("input_audio_buffer.commit"))
    assert types(p.outputs()) == ["input_audio_buffer.committed", "conversation.item.created"]


def test_manual_finish_commits_what_is_left(p):
    configure(p, turn_detection=None)
    start_audio(p)
    p.receive_text(ev("session.finish"))
    assert p.outputs() == [CommitInput(SID), FinishInput(SID)]
    p.recognition_event(SID, final(1, 0, 100, "Bye."))
    p.recognition_event(SID, Committed(100))
    assert types(p.outputs()) == ["input_audio_buffer.committed", "conversation.item.created",
                                  "conversation.item.input_audio_transcription.completed"]
    p.recognition_finished(SID)
    assert types(p.outputs()) == ["session.finished"]


def test_manual_finish_with_only_silence_sends_no_item(p):
    configure(p, turn_detection=None)
    start_audio(p)
    p.receive_text(ev("session.finish"))
    p.outputs()
    p.recognition_event(SID, Committed(100))
    p.recognition_finished(SID)
    assert types(p.outputs()) == ["session.finished"]


def test_finish_without_audio(p):
    p.receive_text(ev("session.finish"))
    outs = p.outputs()
    assert types(outs) == ["session.finished"] and p.state is State.FINISHED
    p.connection_lost()  # the client closes: nothing more to report
    assert p.outputs() == [] and p.state is State.CLOSED


def test_events_after_session_finished_and_shutdown_while_lingering(p):
    p.receive_text(ev("session.finish"))
    p.outputs()
    p.receive_text(ev("input_audio_buffer.clear"))
    assert error_of(p.outputs())["code"] == "session_finishing"
    p.shutdown(10)
    assert p.outputs() == [Close(1000, "session finished")]


# --- client errors keep the session --------------------------------------------------------


@pytest.mark.parametrize("text, code, param", [
    ("not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", "type"),
    ('{"event_id": "event_c1"}', "invalid_event", "type"),
    (ev("response.create"), "unknown_event_type", "type"),
    (json.dumps({"event_id": "event_c1", "type": "input_audio_buffer.append"}),
     "invalid_value", "audio"),
    (json.dumps({"event_id": "event_c1", "type": "input_audio_buffer.append",
                 "audio": "not base64!"}), "invalid_base64", "audio"),
    (ev("session.update"), "invalid_value", "session"),
    (sdk_update(input_audio_format="mp3"), "invalid_value", "session.input_audio_format"),
    (sdk_update(sample_rate=44100), "invalid_value", "session.sample_rate"),
    (ev("session.update", session={"audio": {"input": {"format": {"type": "wav"}}}}),
     "invalid_value", "session.audio.input.format.type"),
    (sdk_update(turn_detection={"type": "semantic_vad"}), "invalid_value",
     "session.turn_detection.type"),
    (sdk_update(turn_detection={"type": "server_vad", "threshold": 1.5}), "invalid_value",
     "session.turn_detection.threshold"),
    (sdk_update(turn_detection={"type": "server_vad", "silence_duration_ms": 100}),
     "invalid_value", "session.turn_detection.silence_duration_ms"),
])
def test_client_errors_keep_the_session(p, text, code, param):
    configure(p)
    p.receive_text(text)
    outs = p.outputs()
    err = error_of(outs)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)
    assert err["message"]
    if "event_c1" in text:
        assert err["event_id"] == "event_c1"
    assert not any(isinstance(o, Close) for o in outs) and p.state is State.OPEN
    start_audio(p)  # still usable


def test_unknown_event_type_message_lists_the_supported_ones(p):
    p.receive_text(ev("conversation.item.create"))
    err = error_of(p.outputs())
    assert "'conversation.item.create'" in err["message"]
    assert "'input_audio_buffer.append'" in err["message"]


def test_append_before_session_update(p):
    p.receive_text(append())
    outs = p.outputs()
    err = error_of(outs)
    assert (err["code"], err["event_id"]) == ("session_not_configured", "event_a")
    assert not any(isinstance(o, (StartRecognition, AudioData, Close)) for o in outs)


def test_append_over_15_mib(p):
    configure(p)
    p.receive_text(json.dumps({"event_id": "event_x", "type": "input_audio_buffer.append",
                               "audio": "A" * (MAX_APPEND_B64 + 4)}))
    err = error_of(p.outputs())
    assert (err["code"], err["param"], err["event_id"]) == ("audio_too_large", "audio", "event_x")


def test_binary_frame(p):
    p.receive_binary(b"\x00" * 100)
    err = error_of(p.outputs())
    assert err["code"] == "binary_frame" and p.state is State.OPEN


def test_session_update_after_audio(p):
    configure(p)
    start_audio(p)
    p.receive_text(sdk_update())  # the same configuration again: fine
    assert types(p.outputs()) == ["session.updated"]
    p.receive_text(sdk_update(sample_rate=8000))
    err = error_of(p.outputs())
    assert err["code"] == "session_already_started"


def test_events_after_session_finish(p):
    configure(p)
    start_audio(p)
    p.receive_text(ev("session.finish"))
    p.outputs()
    p.receive_text(append())
    assert error_of(p.outputs())["code"] == "session_finishing"


# --- recognition failures ------------------------------------------------------------------


def test_bad_audio_fails_the_item_and_restarts_the_stream(p):
    configure(p)
    start_audio(p, audio_ms=5000)
    p.recognition_event(SID, SpeechStarted(1, 4000))
    p.outputs()
    p.recognition_failed(SID, CorruptAudio("opus: not an Ogg stream"))
    outs = p.outputs()
    fs = frames(outs)
    assert fs[0] == {"event_id": "event_6",
                     "type": "conversation.item.input_audio_transcription.failed",
                     "item_id": "item_4", "content_index": 0,
                     "error": {"code": "CorruptAudio", "message": "opus: not an Ogg stream",
                               "param": None}}
    assert fs[1]["error"] == {"type": "invalid_request_error", "code": "CorruptAudio",
                              "message": "opus: not an Ogg stream", "param": "audio",
                              "event_id": "event_a"}
    assert AbortRecognition(SID) in outs and not any(isinstance(o, Close) for o in outs)
    p.receive_text(append())
    outs = p.outputs()
    assert isinstance(outs[0], StartRecognition) and outs[0].task_id == SID + "-2"
    p.recognition_event(SID, SpeechStarted(1, 0))  # the old stream: ignored
    p.recognition_event(SID + "-2", SpeechStarted(1, 300))
    (f,) = frames(p.outputs())
    assert f["audio_start_ms"] == 5300  # session time continues


def test_engine_error_is_a_server_error_and_closes(p):
    configure(p)
    start_audio(p)
    p.recognition_failed(SID, EngineError("decode failed: out of memory"))
    outs = p.outputs()
    err = error_of(outs)
    assert (err["type"], err["code"]) == ("server_error", "EngineError")
    assert AbortRecognition(SID) in outs and outs[-1] == Close(1011, "EngineError")


def test_client_vanishes(p):
    configure(p)
    start_audio(p)
    p.connection_lost()
    outs = p.outputs()
    assert outs[0] == AbortRecognition(SID)
    assert isinstance(outs[1], TaskReport) and outs[1].outcome == "client_gone"
    assert p.state is State.CLOSED and p.next_deadline() is None


# --- timers and shutdown -------------------------------------------------------------------


def test_idle_timeout(p, clock):
    assert p.next_deadline() == clock.t + 60
    clock.t += 60
    p.handle_timers()
    outs = p.outputs()
    assert error_of(outs)["code"] == "idle_timeout" and outs[-1] == Close(1000, "idle_timeout")


def test_shutdown_of_an_idle_session(p):
    p.shutdown(10)
    outs = p.outputs()
    err = error_of(outs)
    assert (err["type"], err["code"]) == ("server_error", "ServerShuttingDown")
    assert outs[-1] == Close(1001, "ServerShuttingDown")


def test_shutdown_recognises_what_was_received_then_closes(p, clock):
    configure(p)
    start_audio(p)
    p.shutdown(5)
    assert p.outputs() == [] and p.next_deadline() == clock.t + 5
    clock.t += 5
    p.handle_timers()
    assert p.outputs() == [FinishInput(SID)]
    p.recognition_event(SID, SpeechStarted(1, 0))
    p.recognition_event(SID, final(1, 0, 100, "Last words."))
    p.recognition_finished(SID)
    outs = p.outputs()
    assert types(outs)[-2:] == ["conversation.item.input_audio_transcription.completed",
                                "error"]
    assert error_of(outs)["code"] == "ServerShuttingDown" and outs[-1].code == 1001
