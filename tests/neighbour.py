"""A well-behaved session running beside a hostile client.

Every abuse test starts a :class:`GoodNeighbour` on its own API key before the hostile client
acts, and afterwards checks that the neighbour was not disturbed: its task ended with
``task-finished`` (not a timeout or a failure), and its finals are exactly those of the same
recording streamed on an idle server (:func:`baseline_finals`).

The neighbour is a raw WebSocket run-task client (no SDK in between), streaming 16 kHz s16le
PCM at real-time pace in 100 ms frames, from a thread of its own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import connect

GOOD_KEY = "sk-callscribe-good-neighbour"
HOSTILE_KEY = "sk-callscribe-hostile-client"
KEYS = f"{GOOD_KEY},{HOSTILE_KEY}"
CHUNK_MS = 100


def pcm_of(path: Path) -> bytes:
    """16 kHz mono s16le samples of a shared recording (.wav with a 44-byte header, or .raw)."""
    data = path.read_bytes()
    return data[44:] if path.suffix == ".wav" else data


def _run_task(task_id: str) -> str:
    return json.dumps({
        "header": {"streaming": "duplex", "task_id": task_id, "action": "run-task"},
        "payload": {"model": "fun-asr-realtime", "task_group": "audio", "task": "asr",
                    "function": "recognition", "input": {},
                    "parameters": {"format": "pcm", "sample_rate": 16000,
                                   "language_hints": ["en"]}}})


def _finish(task_id: str) -> str:
    return json.dumps({"header": {"streaming": "duplex", "task_id": task_id,
                                  "action": "finish-task"}, "payload": {"input": {}}})


@dataclass
class Outcome:
    finals: list[str] = field(default_factory=list)
    ended: str | None = None          # "task-finished" or "task-failed:<error_code>"
    error: BaseException | None = None
    finish_to_end_s: float | None = None  # finish-task sent -> task-finished received

    def check(self, expected: list[str]) -> None:
        """Assert the task finished normally with exactly the expected finals."""
        assert self.error is None, f"good neighbour raised {self.error!r}"
        assert self.ended == "task-finished", f"good neighbour ended with {self.ended}"
        assert self.finals == expected, (self.finals, expected)


class GoodNeighbour:
    """Streams ``pcm`` at real-time pace on ``url`` with ``key``; ``start()``, then ``join()``.

    ``realtime=False`` sends as fast as the server reads (for computing a baseline quickly).
    """

    def __init__(self, url: str, pcm: bytes, key: str = GOOD_KEY, realtime: bool = True,
                 timeout: float = 120.0) -> None:
        self.url, self.pcm, self.key = url, pcm, key
        self.realtime, self.timeout = realtime, timeout
        self.outcome = Outcome()
        self.streaming = threading.Event()  # set once task-started arrived and audio flows
        self._thread = threading.Thread(target=self._main, daemon=True, name="good-neighbour")

    def start(self) -> GoodNeighbour:
        self._thread.start()
        if not self.streaming.wait(60):
            raise AssertionError(f"good neighbour never started: {self.outcome}")
        return self

    def join(self) -> Outcome:
        self._thread.join(self.timeout + 30)
        assert not self._thread.is_alive(), "good neighbour still running after its deadline"
        return self.outcome

    def _main(self) -> None:
        o = self.outcome
        try:
            with connect(self.url, additional_headers={"Authorization": f"Bearer {self.key}"},
                         open_timeout=30, max_size=None) as ws:
                tid = uuid.uuid4().hex
                ws.send(_run_task(tid))
                first = json.loads(ws.recv(timeout=30))
                if first["header"].get("event") != "task-started":
                    o.ended = f"{first['header'].get('event')}:{first['header'].get('error_code')}"
                    return
                reader = threading.Thread(target=self._read, args=(ws,), daemon=True)
                reader.start()
                self.streaming.set()
                step = 16000 * 2 * CHUNK_MS // 1000
                t0 = time.monotonic()
                for i, off in enumerate(range(0, len(self.pcm), step)):
                    ws.send(self.pcm[off:off + step])
                    if self.realtime:
                        time.sleep(max(0.0, t0 + (i + 1) * CHUNK_MS / 1000 - time.monotonic()))
                self._finish_sent = time.monotonic()
                ws.send(_finish(tid))
                reader.join(self.timeout)
        except BaseException as exc:  # reported through Outcome.check
            o.error = exc
        finally:
            self.streaming.set()

    def _read(self, ws) -> None:
        o = self.outcome
        try:
            while True:
                msg = json.loads(ws.recv(timeout=self.timeout))
                h = msg["header"]
                if h["event"] == "result-generated":
                    s = msg["payload"]["output"]["sentence"]
                    if s.get("sentence_end") and not s.get("heartbeat"):
                        o.finals.append(s["text"])
                elif h["event"] == "task-finished":
                    o.ended = "task-finished"
                    o.finish_to_end_s = time.monotonic() - getattr(self, "_finish_sent", 0.0)
                    return
                elif h["event"] == "task-failed":
                    o.ended = f"task-failed:{h.get('error_code')}"
                    return
        except BaseException as exc:
            o.error = exc


def baseline_finals(url: str, pcm: bytes, key: str = GOOD_KEY) -> list[str]:
    """The finals of ``pcm`` streamed at real-time pace with nothing else running."""
    out = GoodNeighbour(url, pcm, key).start().join()
    assert out.error is None and out.ended == "task-finished", out
    return out.finals
