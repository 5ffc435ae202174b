"""Backpressure: the gateway stops reading a client's socket while recognition falls behind,
and nothing is dropped (no model needed: a recognizer that never catches up until released)."""

from __future__ import annotations

import asyncio
import json
import threading

from websockets.exceptions import ConnectionClosed

from sdkutil import KEY, action_msg, raw, start_task
from serverutil import start_gateway
from waiting import wait_until
from callscribe.recognition.events import FinalSentence
from callscribe.settings import load_settings



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


async def _reading(gw) -> list[bool]:
    """Whether each open connection's transport reads the socket (asked on the loop)."""
    return [c.ws.transport.is_reading() for c in gw.connections]


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
            # the gateway stopped reading the socket (its transport is paused) while
            # recognition is stuck: a condition with a deadline, not a sleep
            wait_until(lambda: loop_thread.run(_reading(gw)) == [False], 60,
                       "the server's transport paused while recognition was stuck", every=0.1)
            stalled_at = sent[0]
            assert t.is_alive(), "the client sent everything while recognition was stuck"
            assert stalled_at < 40 * 1024 * 1024
            assert rt.streams[0].received == 0 and loop_thread.run(_reading(gw)) == [False]
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
