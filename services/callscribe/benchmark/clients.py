"""Load clients: run-task protocol over WebSocket, or the in-process recognizer (no service).

Every client streams the workload at real-time pace in 100 ms chunks and records, for each
sentence, when its audio was sent and when its partials and final arrived (monotonic clock).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from callscribe.benchmark.workload import CHUNK_MS, Workload


@dataclass
class SentenceTiming:
    sentence_id: int
    begin_ms: int = 0
    speech_end_ms: int | None = None  # end of the last word: where speech stopped
    partials: list[float] = field(default_factory=list)  # arrival times
    final_at: float | None = None
    text: str = ""


@dataclass
class ClientResult:
    client: int
    t0: float = 0.0  # monotonic time at which audio ms 0 was sent
    sentences: dict[int, SentenceTiming] = field(default_factory=dict)
    error: str | None = None
    first_package_ms: float | None = None
    last_package_ms: float | None = None

    def sent_at(self, audio_ms: int) -> float:
        """When the chunk holding ``audio_ms`` went out (paced sending: t0 + its end)."""
        return self.t0 + (audio_ms // CHUNK_MS + 1) * CHUNK_MS / 1000

    def text(self) -> str:
        return " ".join(s.text for _, s in sorted(self.sentences.items()) if s.text)


async def _paced(chunks: list[bytes], send) -> float:
    """Send chunks at real time; return the monotonic start."""
    t0 = time.monotonic()
    for i, chunk in enumerate(chunks):
        await send(chunk)
        delay = t0 + (i + 1) * CHUNK_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return t0


def _on_sentence(res: ClientResult, s: dict, now: float) -> None:
    sid = int(s["sentence_id"])
    st = res.sentences.setdefault(sid, SentenceTiming(sid, begin_ms=int(s.get("begin_time") or 0)))
    if s.get("heartbeat"):
        return
    if s.get("sentence_end") or s.get("end_time") is not None:
        st.final_at = now
        st.text = s.get("text", "")
        words = s.get("words") or []
        st.speech_end_ms = int(words[-1]["end_time"]) if words else int(s["end_time"])
    else:
        st.partials.append(now)


async def run_task_client(i: int, url: str, api_key: str, load: Workload,
                          max_sentence_silence: int, deadline_s: float) -> ClientResult:
    import websockets

    res = ClientResult(i)
    task_id = uuid.uuid4().hex
    header = {"streaming": "duplex", "task_id": task_id}
    try:
        auth = {"Authorization": f"Bearer {api_key}"}
        async with websockets.connect(url, additional_headers=auth,
                                      max_size=None, open_timeout=30) as ws:
            await ws.send(json.dumps({"header": {**header, "action": "run-task"}, "payload": {
                "model": "fun-asr-realtime", "task_group": "audio", "task": "asr",
                "function": "recognition", "input": {},
                "parameters": {"format": "pcm", "sample_rate": 16000,
                               "max_sentence_silence": max_sentence_silence}}}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if msg["header"]["event"] != "task-started":
                raise RuntimeError(f"task not started: {msg['header']}")
            finished = asyncio.get_running_loop().create_future()

            async def receive() -> None:
                async for raw in ws:
                    now = time.monotonic()
                    m = json.loads(raw)
                    ev = m["header"]["event"]
                    if ev == "result-generated":
                        if res.first_package_ms is None:
                            res.first_package_ms = (now - res.t0) * 1000
                        _on_sentence(res, m["payload"]["output"]["sentence"], now)
                    elif ev in ("task-finished", "task-failed"):
                        if ev == "task-failed":
                            res.error = m["header"].get("error_code")
                        finished.set_result(now)
                        return

            rx = asyncio.create_task(receive())
            res.t0 = time.monotonic()
            await _paced(load.chunks(), ws.send)
            t_finish = time.monotonic()
            await ws.send(json.dumps({"header": {**header, "action": "finish-task"},
                                      "payload": {"input": {}}}))
            done_at = await asyncio.wait_for(finished, deadline_s)
            res.last_package_ms = (done_at - t_finish) * 1000
            rx.cancel()
    except Exception as exc:  # a benchmark records errors, it does not stop on them
        res.error = res.error or f"{type(exc).__name__}: {exc}"
    return res


async def engine_client(i: int, runtime, load: Workload, max_sentence_silence: int,
                        deadline_s: float) -> ClientResult:
    """The recognizer in-process, no network or protocol: the limit the service approaches."""
    from callscribe.recognition.events import FinalSentence, Partial
    from callscribe.recognition.runtime import StreamOptions

    res = ClientResult(i)
    stream = runtime.open_stream(StreamOptions(format="pcm", sample_rate=16000,
                                               max_sentence_silence_ms=max_sentence_silence))

    async def receive() -> None:
        async for ev in stream.events():
            now = time.monotonic()
            if isinstance(ev, Partial):
                _on_sentence(res, {"sentence_id": ev.sentence_id, "begin_time": ev.begin_time,
                                   "end_time": None}, now)
            elif isinstance(ev, FinalSentence):
                _on_sentence(res, {"sentence_id": ev.sentence_id, "begin_time": ev.begin_time,
                                   "end_time": ev.end_time, "sentence_end": True, "text": ev.text,
                                   "words": [{"end_time": w.end_time} for w in ev.words]}, now)
    try:
        rx = asyncio.create_task(receive())
        res.t0 = time.monotonic()
        await _paced(load.chunks(), stream.put)
        t_finish = time.monotonic()
        await stream.finish()
        await asyncio.wait_for(rx, deadline_s)
        res.last_package_ms = (time.monotonic() - t_finish) * 1000
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        await stream.aclose()
    return res
