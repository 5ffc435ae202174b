"""A real ``Gateway`` on a free loopback port, run in a background event-loop thread.

Tests call it from ordinary (synchronous) code: ``lt = LoopThread(); gw = lt.run(start_gateway(
settings, runtime))`` ... ``lt.run(gw.shutdown(0)); lt.stop()``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from callscribe.gateway.server import Gateway
from callscribe.recognition.vocabulary import VocabularyStore


class StubRuntime:
    """A runtime that is ready and recognises nothing (gateway tests without the model)."""

    ready = True


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def start_gateway(settings, runtime: Any, **kw: Any) -> Gateway:
    """A started gateway on 127.0.0.1 and a free port (``gw.port``)."""
    gw = Gateway(settings, vocabulary=VocabularyStore(settings.vocabulary_db), runtime=runtime,
                 host="127.0.0.1", port=0, **kw)
    await gw.start()
    return gw
