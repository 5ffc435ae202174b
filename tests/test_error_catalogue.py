"""The error catalogue (callscribe.errors): one class per wire code, the code, retriable flag and
whose fault it is set on the class, and the close code the protocols derive from it.

The Overloaded regression: ``serve --kafka`` refused a task while its pipeline was not
connected with ``CallscribeError(code="Overloaded")``, a non-retriable root error, so the client
was told the failure was its own fault (close 1008) instead of the server's (1011).
"""

from __future__ import annotations

import json

import pytest

from callscribe.errors import (CODES, CallscribeError, CorruptAudio, DecodeFailed, EngineError,
                               Overloaded, RecognitionEndedEarly, ServerShuttingDown,
                               SessionError, for_code)
from callscribe.pipeline.kafka_stream import KafkaPipeline
from callscribe.protocols.common import (CLOSE_INTERNAL, CLOSE_POLICY, Close, SendFrame,
                                         StartRecognition, wire_error)
from callscribe.protocols.qwen_realtime import QwenRealtimeProtocol
from callscribe.protocols.run_task import RunTaskProtocol
from callscribe.recognition.runtime import StreamOptions
from callscribe.settings import Settings

TID = "634b6de6ba6f4ee3bd704bede5407196"


def _not_connected_error() -> BaseException:
    """What ``serve --kafka`` raises for a task while its Kafka pipeline is not connected
    (a real KafkaPipeline, never started: no broker is needed to reach this path)."""
    pipeline = KafkaPipeline(Settings())
    assert not pipeline.ready
    with pytest.raises(CallscribeError) as info:
        pipeline.open_stream(StreamOptions())
    return info.value


def test_kafka_pipeline_not_connected_raises_the_retriable_overloaded():
    exc = _not_connected_error()
    assert type(exc) is Overloaded
    assert (exc.code, exc.retriable, exc.client_fault) == ("Overloaded", True, False)


def test_overloaded_from_recognition_fails_the_run_task_with_1011():
    p = RunTaskProtocol(clock=lambda: 1000.0)
    p.receive_text(json.dumps({
        "header": {"streaming": "duplex", "task_id": TID, "action": "run-task"},
        "payload": {"model": "fun-asr-realtime", "task_group": "audio", "task": "asr",
                    "function": "recognition", "input": {},
                    "parameters": {"sample_rate": 16000, "format": "pcm"}}}))
    assert isinstance(p.outputs()[0], StartRecognition)
    p.recognition_failed(TID, _not_connected_error())
    outs = p.outputs()
    assert [o.text for o in outs if isinstance(o, SendFrame)] == [json.dumps(
        {"header": {"task_id": TID, "event": "task-failed", "error_code": "Overloaded",
                    "error_message": "the Kafka pipeline is not connected", "attributes": {}},
         "payload": {}}, separators=(",", ":"))]
    assert outs[-1] == Close(CLOSE_INTERNAL, "Overloaded")


def test_overloaded_from_recognition_is_a_qwen_server_error_with_1011():
    p = QwenRealtimeProtocol(clock=lambda: 1000.0, model="qwen3-asr-flash-realtime",
                             default_vad_threshold=0.5, max_task_seconds=3600,
                             ids=lambda: "1")
    p.receive_text(json.dumps({"event_id": "e1", "type": "session.update",
                               "session": {"input_audio_format": "pcm", "sample_rate": 16000}}))
    p.receive_text(json.dumps({"event_id": "e2", "type": "input_audio_buffer.append",
                               "audio": "AAEAAQ=="}))
    start = [o for o in p.outputs() if isinstance(o, StartRecognition)]
    assert len(start) == 1
    p.recognition_failed(start[0].task_id, _not_connected_error())
    outs = p.outputs()
    errors = [json.loads(o.text)["error"] for o in outs if isinstance(o, SendFrame)
              and json.loads(o.text)["type"] == "error"]
    assert [(e["type"], e["code"]) for e in errors] == [("server_error", "Overloaded")]
    assert outs[-1] == Close(CLOSE_INTERNAL, "Overloaded")


def test_the_root_takes_no_code_override():
    with pytest.raises(TypeError):
        CallscribeError("x", code="Overloaded")  # type: ignore[call-arg]


def test_every_catalogued_class_carries_its_code_and_a_consistent_fault():
    assert CODES["Overloaded"] is Overloaded and CODES["InternalError"] is CallscribeError
    for code, cls in CODES.items():
        assert cls.code == code
        if cls.retriable and not issubclass(cls, (SessionError,)):
            assert not cls.client_fault, cls  # a transient fault is never the client's


@pytest.mark.parametrize("code, cls, close", [
    ("Overloaded", Overloaded, CLOSE_INTERNAL),
    ("EngineError", EngineError, CLOSE_INTERNAL),
    ("DecodeFailed", DecodeFailed, CLOSE_INTERNAL),
    ("CorruptAudio", CorruptAudio, CLOSE_POLICY),
    ("NoSuchCode", CallscribeError, CLOSE_INTERNAL),
])
def test_a_worker_error_code_is_rebuilt_as_its_class(code, cls, close):
    """KafkaStream rebuilds a worker's transcript error from its code (for_code): the class,
    hence the close code, is the one the worker raised, not a root error with a code."""
    exc = for_code(code, "recognition failed: x")
    assert type(exc) is cls
    assert wire_error(exc)[2] == close


def test_internal_errors_are_the_servers_fault():
    """README: ``InternalError`` is a server-side failure, close 1011 (an engine crash wrapped
    by the runtime, recognition ending before finish-task, an unexpected exception)."""
    for exc in (CallscribeError("recognition failed: boom"),
                RecognitionEndedEarly("recognition ended before finish-task"),
                ZeroDivisionError("boom")):
        assert wire_error(exc)[0::2] == ("InternalError", CLOSE_INTERNAL), exc


def test_server_shutting_down_is_retriable_and_the_servers_fault():
    assert (ServerShuttingDown.retriable, ServerShuttingDown.client_fault) == (True, False)
