"""The run-task state machine, Sans-I/O: feed frames and events, assert the exact output frames."""

from __future__ import annotations

import json

import pytest

from callscribe.errors import CorruptAudio, EngineError
from callscribe.protocols.common import (AbortRecognition, AudioData, Close, FinishInput,
                                         SendFrame, StartRecognition, TaskOptions, TaskReport)
from callscribe.protocols.run_task import RunTaskProtocol, State
from callscribe.recognition.events import (Emotion, FinalSentence, Partial, SpeechStarted,
                                           SpeechStopped, Word)

TID = "634b6de6ba6f4ee3bd704bede5407196"
TID2 = "7e1f0c9a2b3d4e5f60718293a4b5c6d7"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run_task(task_id: str = TID, model: str = "fun-asr-realtime", **params) -> str:
    """run-task exactly as the legacy SDK sends it."""
    p = {"sample_rate": 16000, "format": "pcm", "semantic_punctuation_enabled": False,
         "language_hints": ["zh"], "heartbeat": False, **params}
    return json.dumps({"header": {"streaming": "duplex", "task_id": task_id, "action": "run-task"},
                       "payload": {"model": model, "task_group": "audio", "task": "asr",
                                   "function": "recognition", "input": {}, "parameters": p}})


def action(name: str, task_id: str = TID) -> str:
    return json.dumps({"header": {"streaming": "duplex", "task_id": task_id, "action": name},
                       "payload": {"input": {}}})


def texts(outs) -> list[str]:
    return [o.text for o in outs if isinstance(o, SendFrame)]


def failed(task_id: str, code: str, message: str) -> str:
    return json.dumps({"header": {"task_id": task_id, "event": "task-failed", "error_code": code,
                                  "error_message": message, "attributes": {}}, "payload": {}},
                      ensure_ascii=False, separators=(",", ":"))


def started(task_id: str = TID) -> str:
    return ('{"header":{"task_id":"%s","event":"task-started","attributes":{}},"payload":{}}'
            % task_id)


def finished(task_id: str = TID) -> str:
    return ('{"header":{"task_id":"%s","event":"task-finished","attributes":{}},'
            '"payload":{"output":{}}}' % task_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def p(clock) -> RunTaskProtocol:
    return RunTaskProtocol(clock=clock, max_frame_bytes=1 << 20, max_task_seconds=3600)


def start(p: RunTaskProtocol, task_id: str = TID, **params) -> None:
    p.receive_text(run_task(task_id, **params))
    outs = p.outputs()
    assert isinstance(outs[0], StartRecognition), outs
    p.recognition_started(task_id)
    assert texts(p.outputs()) == [started(task_id)]


# --- the happy path ------------------------------------------------------------------------


def test_full_task_exact_frames(p, clock):
    p.receive_text(run_task(language_hints=["en"], vocabulary_id="vocab-abc-" + "0" * 32,
                            max_sentence_silence=900, some_future_knob={"x": 1}))
    assert p.outputs() == [StartRecognition(TID, TaskOptions(
        model="fun-asr-realtime", format="pcm", sample_rate=16000, language_hints=("en",),
        max_sentence_silence_ms=900, vocabulary_id="vocab-abc-" + "0" * 32, itn=True))]
    assert p.state is State.STARTING
    p.recognition_started(TID)
    assert texts(p.outputs()) == [started()]

    clock.t += 0.5
    p.receive_binary(b"\x00\x01" * 1600)
    assert p.outputs() == [AudioData(TID, b"\x00\x01" * 1600)]
    p.audio_consumed(TID, 100)
    p.recognition_event(TID, SpeechStarted(1, 170))
    assert p.outputs() == []
    clock.t += 0.3
    p.recognition_event(TID, Partial(1, 170, 600, "Okay, I", " got"), audio_ms=640)
    assert texts(p.outputs()) == [
        '{"header":{"task_id":"%s","event":"result-generated","attributes":{}},"payload":'
        '{"output":{"sentence":{"sentence_id":1,"begin_time":170,"end_time":null,'
        '"text":"Okay, I got","heartbeat":false,"sentence_begin":true,"sentence_end":false,'
        '"words":[]}},"usage":null}}' % TID]
    final = FinalSentence(1, 170, 920, "Okay, I got it.",
                          (Word(170, 295, "Okay", ","), Word(295, 503, "I", "")), "en",
                          Emotion("positive", 0.8712, "happy", "test"))
    p.recognition_event(TID, final, audio_ms=2100)
    assert texts(p.outputs()) == [
        '{"header":{"task_id":"%s","event":"result-generated","attributes":{}},"payload":'
        '{"output":{"sentence":{"sentence_id":1,"begin_time":170,"end_time":920,'
        '"text":"Okay, I got it.","heartbeat":false,"sentence_begin":false,"sentence_end":true,'
        '"words":[{"begin_time":170,"end_time":295,"text":"Okay","punctuation":","},'
        '{"begin_time":295,"end_time":503,"text":"I","punctuation":""}],'
        '"emotion":{"label":"happy","polarity":"positive","confidence":0.871},'
        '"language":"en"}},"usage":{"duration":3}}}' % TID]
    p.recognition_event(TID, SpeechStopped(1, 920))

    clock.t += 1.0
    p.receive_text(action("finish-task"))
    assert p.outputs() == [FinishInput(TID)]
    assert p.state is State.FINISHING
    clock.t += 0.25
    p.recognition_finished(TID, audio_ms=2100)
    outs = p.outputs()
    assert texts(outs) == [finished()]
    report = [o for o in outs if isinstance(o, TaskReport)][0]
    assert report.outcome == "finished" and report.sentences == 1 and report.audio_ms == 2100
    assert report.first_package_delay_ms == pytest.approx(300.0)
    assert report.last_package_delay_ms == pytest.approx(250.0)
    assert p.state is State.IDLE


def test_final_without_emotion_is_null_and_empty_partials_are_skipped(p):
    start(p)
    p.recognition_event(TID, Partial(1, 0, 300, "", ""))
    assert p.outputs() == []
    p.recognition_event(TID, FinalSentence(1, 0, 1200, "Hello.", (), "en"))
    sentence = json.loads(texts(p.outputs())[0])["payload"]["output"]["sentence"]
    assert sentence["emotion"] is None and "emo_tag" not in sentence
    # an empty final for a sentence never shown is not sent
    p.recognition_event(TID, FinalSentence(2, 1500, 1800, "", (), "en"))
    assert p.outputs() == []


def test_connection_reuse_with_new_task_ids(p):
    for tid in (TID, TID2, "third-task-id"):
        start(p, tid)
        p.receive_text(action("finish-task", tid))
        assert p.outputs() == [FinishInput(tid)]
        p.recognition_finished(tid)
        assert texts(p.outputs()) == [finished(tid)]


def test_continue_task_is_accepted(p):
    start(p)
    p.receive_text(json.dumps({"header": {"streaming": "duplex", "task_id": TID,
                                          "action": "continue-task"},
                               "payload": {"input": {"context": "refund"}}}))
    assert p.outputs() == []
    assert p.state is State.RUNNING


def test_unknown_parameters_ignored_and_flags_parsed(p):
    p.receive_text(run_task(model="paraformer-realtime-v2", sample_rate=44100, heartbeat=True,
                            disfluency_removal_enabled=True,
                            inverse_text_normalization_enabled=False, diarization_enabled=True,
                            speaker_count=2, special_word_filter="x", foo=[1, 2]))
    opts = p.outputs()[0].options
    assert (opts.sample_rate, opts.heartbeat, opts.disfluency_removal, opts.itn) == \
        (44100, True, True, False)


def test_old_style_phrase_resources(p):
    msg = json.loads(run_task())
    msg["payload"]["resources"] = [{"resource_id": "vocab-x-" + "a" * 32,
                                    "resource_type": "asr_phrase"}]
    p.receive_text(json.dumps(msg))
    assert p.outputs()[0].options.phrase_ids == ("vocab-x-" + "a" * 32,)


@pytest.mark.parametrize("model,rate", [("fun-asr-realtime", 16000),
                                        ("fun-asr-realtime-2025-11-07", 16000),
                                        ("paraformer-realtime-v2", 8000),
                                        ("paraformer-realtime-v2", 22050),
                                        ("paraformer-realtime-8k-v2", 8000),
                                        ("paraformer-realtime-v1", 16000),
                                        ("paraformer-realtime-8k-v1", 8000)])
def test_model_sample_rate_rules_accept(p, model, rate):
    p.receive_text(run_task(model=model, sample_rate=rate))
    assert isinstance(p.outputs()[0], StartRecognition)


# --- bad input: each gets a specific task-failed and a close --------------------------------


def assert_failed(p, task_id, code, message, close_code):
    outs = p.outputs()
    assert texts(outs) == [failed(task_id, code, message)]
    assert outs[-1] == Close(close_code, code)
    assert p.state is State.CLOSED


def test_non_json_text(p):
    p.receive_text("hello {")
    assert_failed(p, "", "InvalidMessage", "text frame is not valid JSON (Expecting value at "
                  'position 0); control messages are {"header": {...}, "payload": {...}}', 1007)


def test_json_without_header(p):
    p.receive_text('{"payload": {}}')
    assert_failed(p, "", "InvalidMessage", "message has no 'header' object; control messages "
                  'are {"header": {...}, "payload": {...}}', 1008)


def test_unknown_action(p):
    start(p)
    p.receive_text(action("pause-task"))
    outs = p.outputs()
    assert texts(outs) == [failed(TID, "UnknownAction", "unknown action 'pause-task'; expected "
                                  "run-task, continue-task or finish-task")]
    assert AbortRecognition(TID) in outs and outs[-1] == Close(1008, "UnknownAction")


def test_audio_before_run_task(p):
    p.receive_binary(b"\x00" * 3200)
    assert_failed(p, "", "TaskNotStarted", "audio received before run-task; send run-task and "
                  "wait for task-started", 1008)


def test_audio_before_task_started_is_accepted(p):
    # the Java SDK sends audio right after run-task; the adapter opens the stream first
    p.receive_text(run_task())
    p.outputs()
    p.receive_binary(b"\x00" * 3200)
    p.receive_text(action("finish-task"))
    assert p.outputs() == [AudioData(TID, b"\x00" * 3200)]
    p.recognition_started(TID)
    assert p.outputs() == [SendFrame(started()), FinishInput(TID)]
    assert p.state is State.FINISHING


def test_finish_task_before_run_task(p):
    p.receive_text(action("finish-task"))
    assert_failed(p, TID, "TaskNotStarted", "finish-task received before run-task", 1008)


def test_reused_task_id(p):
    start(p)
    p.receive_text(action("finish-task"))
    p.outputs()
    p.recognition_finished(TID)
    p.outputs()
    p.receive_text(run_task(TID))
    assert_failed(p, TID, "DuplicateTaskId", f"task_id {TID} was already used on this "
                  "connection; every run-task needs a new task_id", 1008)


def test_run_task_while_running(p):
    start(p)
    p.receive_text(run_task(TID2))
    assert texts(p.outputs()) == [failed(TID, "TaskAlreadyRunning", f"run-task received while "
                                         f"task {TID} is still running; send finish-task and "
                                         "wait for task-finished first")]


@pytest.mark.parametrize("model,params,code,message", [
    ("fun-asr-realtime", {"format": "flac"}, "UnsupportedFormat",
     "format 'flac' is not supported; use one of pcm, wav, mp3, opus, speex, aac, amr"),
    ("fun-asr-realtime", {"sample_rate": 44100}, "SampleRateMismatch",
     "sample_rate 44100 not supported for model fun-asr-realtime: it takes 16000 Hz"),
    ("paraformer-realtime-8k-v2", {"sample_rate": 16000}, "SampleRateMismatch",
     "sample_rate 16000 not supported for model paraformer-realtime-8k-v2: it takes 8000 Hz"),
    ("paraformer-realtime-v2", {"sample_rate": 96000}, "SampleRateMismatch",
     "sample_rate 96000 not supported for model paraformer-realtime-v2: it takes any rate "
     "from 8000 to 48000 Hz"),
    ("whisper-9000", {}, "ModelNotFound",
     "model 'whisper-9000' is not supported; supported models: fun-asr-realtime, "
     "paraformer-realtime-v2, paraformer-realtime-8k-v2, paraformer-realtime-v1, "
     "paraformer-realtime-8k-v1, fun-asr-realtime-YYYY-MM-DD"),
    ("fun-asr-realtime", {"max_sentence_silence": 50}, "InvalidParameter",
     "parameters.max_sentence_silence 50 is out of range: an integer from 200 to 6000 (ms)"),
    ("fun-asr-realtime", {"sample_rate": "fast"}, "InvalidParameter",
     "parameters.sample_rate is required and must be an integer (Hz)"),
])
def test_bad_run_task_parameters(p, model, params, code, message):
    p.receive_text(run_task(model=model, **params))
    assert_failed(p, TID, code, message, 1008)


def test_corrupt_audio_mid_stream(p):
    start(p)
    p.receive_binary(b"\xff" * 100)
    p.outputs()
    p.recognition_failed(TID, CorruptAudio("mp3 data is corrupt at byte 100"))
    outs = p.outputs()
    assert texts(outs) == [failed(TID, "CorruptAudio", "mp3 data is corrupt at byte 100")]
    assert AbortRecognition(TID) in outs and outs[-1] == Close(1008, "CorruptAudio")
    report = [o for o in outs if isinstance(o, TaskReport)][0]
    assert (report.outcome, report.error_code) == ("failed", "CorruptAudio")


def test_engine_and_unexpected_errors_close_1011(p):
    start(p)
    p.recognition_failed(TID, EngineError("decode pool shut down"))
    assert p.outputs()[-1] == Close(1011, "EngineError")
    q = RunTaskProtocol(clock=Clock())
    start(q)
    q.recognition_failed(TID, ZeroDivisionError("boom"))
    assert texts(q.outputs()) == [failed(TID, "InternalError", "internal server error "
                                         "(ZeroDivisionError); see the server log")]


def test_ten_megabyte_frame(p):
    start(p)
    p.receive_binary(bytes(10 * 1024 * 1024))
    outs = p.outputs()
    assert texts(outs) == [failed(TID, "FrameTooLarge", "binary frame of 10485760 bytes exceeds "
                                  "the limit of 1048576 bytes")]
    assert outs[-1] == Close(1009, "FrameTooLarge")
    assert not any(isinstance(o, AudioData) for o in outs)


def test_client_vanishes_mid_task(p):
    start(p)
    p.receive_binary(b"\x00" * 3200)
    p.outputs()
    p.connection_lost()
    outs = p.outputs()
    assert outs[0] == AbortRecognition(TID)
    assert outs[1].outcome == "client_gone"
    assert p.state is State.CLOSED
    p.receive_binary(b"\x00")  # nothing happens after close
    assert p.outputs() == []


def test_task_longer_than_the_limit(clock):
    p = RunTaskProtocol(clock=clock, max_task_seconds=10)
    start(p)
    p.receive_binary(b"\x00" * 3200)
    p.outputs()
    p.audio_consumed(TID, 10_001)
    assert texts(p.outputs()) == [failed(TID, "AudioTooLarge", "the task exceeds the maximum of "
                                         "10 seconds of audio")]


def test_events_for_other_tasks_are_ignored(p):
    start(p)
    p.recognition_event("stale", FinalSentence(1, 0, 100, "old", (), None))
    p.recognition_finished("stale")
    assert p.outputs() == []


# --- timers --------------------------------------------------------------------------------


def test_no_data_for_23_seconds(p, clock):
    start(p)
    assert p.next_deadline() == clock.t + 23
    clock.t += 22.9
    p.handle_timers()
    assert p.outputs() == []
    clock.t += 0.1
    p.handle_timers()
    assert texts(p.outputs()) == [failed(TID, "CLIENT_ERROR", "request timeout after 23 "
                                         "seconds.")]


def test_data_resets_the_timer_and_backpressure_suspends_it(p, clock):
    start(p)
    p.recognition_event(TID, SpeechStarted(1, 0))  # speech: only the no-data timer runs
    clock.t += 20
    p.receive_binary(b"\x00" * 3200)
    p.outputs()
    # the recognizer is behind: audio not consumed yet; not the client's fault
    assert p.next_deadline() is None
    clock.t += 30
    p.handle_timers()
    assert p.outputs() == []
    p.audio_consumed(TID, 100)
    assert p.next_deadline() == clock.t + 23


def test_sixty_seconds_of_silence_without_heartbeat(p, clock):
    start(p)
    for _ in range(61):  # real-time silent audio, consumed at once
        clock.t += 1
        p.receive_binary(b"\x00" * 32000)
        p.audio_consumed(TID, 0)
        p.handle_timers()
    outs = p.outputs()
    assert texts(outs)[-1] == failed(TID, "SilenceTimeout", "no speech for 60 seconds of audio; "
                                     "set parameters.heartbeat=true to keep a silent task open")
    assert outs[-1] == Close(1000, "SilenceTimeout")


def test_heartbeat_keeps_a_silent_task_open(p, clock):
    start(p, heartbeat=True)
    for _ in range(70):
        clock.t += 1
        p.receive_binary(b"\x00" * 32000)
        p.audio_consumed(TID, 0)
        p.handle_timers()
    frames = [json.loads(t) for t in texts(p.outputs())]
    assert len(frames) == 7 and p.state is State.RUNNING
    s = frames[0]["payload"]["output"]["sentence"]
    assert s["heartbeat"] is True and s["end_time"] is None and s["text"] == ""


def test_speech_holds_off_the_silence_timer(p, clock):
    start(p)
    p.recognition_event(TID, SpeechStarted(1, 0))
    for _ in range(90):
        clock.t += 1
        p.receive_binary(b"\x00" * 32000)
        p.audio_consumed(TID, 0)
        p.handle_timers()
    assert texts(p.outputs()) == []


def test_idle_connection_closes_after_60_seconds(p, clock):
    assert p.next_deadline() == clock.t + 60
    clock.t += 60
    p.handle_timers()
    assert p.outputs() == [Close(1000, "idle for 60 s without run-task")]


def test_idle_after_a_task(p, clock):
    start(p)
    p.receive_text(action("finish-task"))
    p.recognition_finished(TID)
    p.outputs()
    assert p.next_deadline() == clock.t + 60


# --- shutdown ------------------------------------------------------------------------------


def test_shutdown_closes_idle_connection(p):
    p.shutdown(10)
    assert p.outputs() == [Close(1001, "server shutting down")]


def test_shutdown_lets_a_task_finish_then_closes(p, clock):
    start(p)
    p.shutdown(10)
    p.receive_text(action("finish-task"))
    p.recognition_finished(TID)
    outs = p.outputs()
    assert texts(outs) == [finished()] and outs[-1] == Close(1001, "server shutting down")


def test_shutdown_ends_a_running_task_cleanly_after_the_grace(p, clock):
    start(p)
    p.receive_binary(b"\x00" * 3200)
    p.audio_consumed(TID, 2000)
    p.outputs()
    p.shutdown(10)
    assert p.next_deadline() == clock.t + 10
    clock.t += 10
    p.handle_timers()
    assert p.outputs() == [FinishInput(TID)]
    p.receive_binary(b"\x00" * 3200)  # late audio is dropped, not an error
    p.recognition_event(TID, FinalSentence(1, 0, 1900, "Bye.", (), "en"))
    p.recognition_finished(TID, audio_ms=2000)
    outs = p.outputs()
    assert json.loads(texts(outs)[0])["payload"]["output"]["sentence"]["text"] == "Bye."
    assert texts(outs)[1] == failed(TID, "ServerShuttingDown", "the server is shutting down: "
                                    "input was ended by the server and the results for all 2000 "
                                    "ms of audio received were sent")
    assert outs[-1] == Close(1001, "ServerShuttingDown")


def test_new_task_refused_while_shutting_down(p):
    start(p)
    p.shutdown(10)
    p.receive_text(action("finish-task"))
    p.recognition_finished(TID)
    p.outputs()
    assert p.state is State.CLOSED
