"""Helpers for the ``dashscope`` SDK end-to-end tests (tests/gateway_sdk/, a helper module, not
a test file): the test key, text normalisation, the SDK's ``Recognition`` driven from a file or
at real-time pace, and raw ``websockets`` run-task frames for the bad-input tests."""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
import uuid
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from callscribe.gateway.server import Gateway

KEY = "sk-callscribe-test-key"
#: Whisper base hears LDC93S1 ("She had your dark suit in greasy wash water all year") loosely
LDC_WORDS = ["dark suit", "greasy", "wash", "year", "she had"]
OTHER_KEY = "sk-callscribe-other-key"
#: the two variants of the ``server`` fixture: the model in process, or ``serve --kafka`` (a
#: broker and a worker subprocess); each marked with what it needs (see tests/conftest.py)
LOCAL = pytest.param("local", marks=pytest.mark.model)
KAFKA = pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.model])



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


def call(model: str, fmt: str, rate: int, path: Path, **kw):
    from dashscope.audio.asr import Recognition
    rec = Recognition(model=model, format=fmt, sample_rate=rate, callback=None, **kw)
    result = rec.call(str(path))
    return rec, result


def joined(result) -> str:
    return " ".join(s["text"] for s in (result.get_sentence() or []))


class Collect:
    def __init__(self) -> None:
        self.interim: list[dict] = []
        self.final: list[dict] = []
        self.errors: list = []
        self.opened = self.completed = self.closed = False
        self.done = threading.Event()
        self.first_result = threading.Event()  # the server recognised some of the audio


def callback_for(c: Collect):
    from dashscope.audio.asr import RecognitionCallback, RecognitionResult

    class CB(RecognitionCallback):
        def on_open(self):
            c.opened = True

        def on_event(self, result):
            s = result.get_sentence()
            (c.final if RecognitionResult.is_sentence_end(s) else c.interim).append(s)
            c.first_result.set()

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
                    chunk_ms=100, collect: Collect | None = None, **kw
                    ) -> tuple[Collect, object]:
    """The SDK streaming ``path`` at real-time pace (the sleep paces the audio, it waits for
    nothing); ``collect`` lets a caller in another thread watch the session as it runs."""
    from dashscope.audio.asr import Recognition
    c = collect or Collect()
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


def expect_failed(ws, code: str, close_code: int | None = 1008, timeout: float = 30) -> dict:
    """Read to task-failed (each frame within ``timeout``); assert its code, then that the
    server closes the connection."""
    while True:
        msg = json.loads(ws.recv(timeout=timeout))
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
