"""Waiting on a condition with a deadline (a helper module, not a test file).

Tests never sleep and hope: they wait for the thing they need (an event, a log line, a
counter) and fail with what they waited for when the deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    """Call ``check`` until it returns something true (returned) or the deadline (failing
    with ``what`` and the last value): a condition with a deadline, not a sleep."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not true after {timeout} s (last: {last!r})")


async def wait_until_async(check: Callable[[], Any], timeout: float, what: str,
                           every: float = 0.005) -> Any:
    """``wait_until`` for a test running on the event loop: the loop keeps running (the task
    under test makes progress) between checks."""
    import asyncio

    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"{what}: not true after {timeout} s (last: {last!r})")
