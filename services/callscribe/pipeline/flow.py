"""Flow control of the pipeline worker: decode retries, the in-flight audio bound, metrics.

:class:`RetryingEngine` wraps the shared engine for the worker's sessions: a failing decode
is retried in its decode thread with exponential backoff (``kafka_worker_retry_backoff_ms``,
doubling, at most 5 s), ``kafka_worker_decode_retries`` times; then :class:`DecodeFailed`
reaches the channel, whose chunks go to the dead-letter topic.  The backoff waits on an
event, so a stopping worker does not sit out a backoff.

:class:`InflightBudget` bounds the audio a worker holds received but not yet recognised (the
sum over its sessions of fed-but-unprocessed audio).  Levels, as fractions of the bound H:
above H/2 partials are switched off (they are the first to go); at H the audio partitions
are paused and the consumer waits; at H/2 again the partitions resume; below H/4 partials
come back.  One session may not hold more than half its own ``max_buffered_audio_ms``
either.  Waiting is on an event set after every processing step, with a deadline
that only logs (there is no polling).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from opentelemetry import metrics

from callscribe.asr.engine import DecodeRequest, DecodeResult, Engine
from callscribe.errors import DecodeFailed

log = structlog.get_logger(__name__)
MAX_BACKOFF_S = 5.0


class RetryingEngine:
    """An Engine that retries ``decode`` on failure (any exception counts as one)."""

    def __init__(self, engine: Engine, retries: int, backoff_ms: int,
                 on_retry: Callable[[BaseException], None] | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.engine = engine
        self.name = engine.name
        self.model_name = engine.model_name
        self.sample_rate = engine.sample_rate
        self.retries = retries
        self.backoff_s = backoff_ms / 1000
        self.on_retry = on_retry
        self.stopping = stopping or threading.Event()

    def decode(self, request: DecodeRequest) -> DecodeResult:
        backoff = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return self.engine.decode(request)
            except Exception as exc:  # noqa: BLE001 - every failure is retried, then reported
                last = exc
                if attempt == self.retries or self.stopping.is_set():
                    break
                if self.on_retry is not None:
                    self.on_retry(exc)
                log.warning("decode failed, retrying", attempt=attempt + 1,
                            retries=self.retries, backoff_s=backoff, error=repr(exc))
                if self.stopping.wait(backoff):
                    break
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        raise DecodeFailed(f"decode failed after {self.retries + 1} attempt(s): "
                           f"{getattr(last, 'message', None) or repr(last)}"[:900]) from last


class WorkerMetrics:
    """The worker's OpenTelemetry instruments (no-ops until telemetry is configured)."""

    def __init__(self) -> None:
        m = metrics.get_meter("callscribe")
        self.chunks = m.create_counter(
            "callscribe.worker.chunks", description="audio chunks received, by outcome "
            "(fed, duplicate, reordered, late, gap, done_before, after_end, redelivered)")
        self.dead_letters = m.create_counter(
            "callscribe.worker.dead_letters", description="records sent to the dead-letter "
            "topic, by reason")
        self.decode_retries = m.create_counter(
            "callscribe.worker.decode_retries", description="decodes retried after a failure")
        self.finals = m.create_counter("callscribe.worker.finals",
                                       description="final sentences published")
        self.partials = m.create_counter("callscribe.worker.partials",
                                         description="partial results published")
        self.summaries = m.create_counter("callscribe.worker.summaries",
                                          description="call summaries published")
        self.dead_letter_failures = m.create_counter(
            "callscribe.worker.dead_letter_failures", description="dead letters the broker "
            "would not take (logged with the original's coordinates; the record is skipped)")
        self.final_delay = m.create_histogram(
            "callscribe.worker.final_delay", unit="ms",
            description="capture of a sentence's last audio to its final being published")
        self.hop_in = m.create_histogram(
            "callscribe.kafka.hop.produce_to_worker", unit="ms",
            description="an audio record's Kafka timestamp (when it was produced) to the worker "
            "receiving it")
        self.pauses = m.create_counter("callscribe.worker.pauses",
                                       description="times the audio partitions were paused")

    def observe(self, source: Any) -> None:
        """Gauges read at collection time from ``source`` (the worker: ``paused_count()``,
        ``inflight_ms()``, ``fetch_lag()``, ``committed_lag()``, ``backlog_s()``,
        ``oldest_call_age_s()``, ``sessions_held()``).  Partition labels are the assigned
        audio partitions: a closed set bounded by the topic's partition count."""
        m = metrics.get_meter("callscribe")

        def gauge(name: str, unit: str, description: str, read: Callable[[], Any],
                  by_partition: bool = False) -> None:
            def cb(_options: Any) -> list:
                v = read()
                if by_partition:
                    return [metrics.Observation(n, {"partition": str(p)})
                            for p, n in sorted(v.items())]
                return [metrics.Observation(v)]
            m.create_observable_gauge(name, unit=unit, description=description,
                                      callbacks=[cb])

        gauge("callscribe.worker.paused_partitions", "", "audio partitions paused",
              source.paused_count)
        gauge("callscribe.worker.inflight_audio", "s", "audio received, not yet recognised",
              lambda: source.inflight_ms() / 1000)
        gauge("callscribe.worker.consumer_lag", "", "fetch lag: audio records not yet read, "
              "by assigned partition", source.fetch_lag, by_partition=True)
        gauge("callscribe.worker.committed_lag", "", "audio records after the group's "
              "committed offset, by assigned partition (held back by open sentences)",
              source.committed_lag, by_partition=True)
        gauge("callscribe.worker.backlog_audio", "s", "audio waiting for this worker: in "
              "flight plus not yet read (records x chunk length); grows only when "
              "recognition falls behind -- the autoscaling figure", source.backlog_s)
        gauge("callscribe.worker.oldest_call_age", "s", "age of the oldest unfinished "
              "(call, channel) this worker holds", source.oldest_call_age_s)
        gauge("callscribe.worker.sessions", "", "(call, channel) sessions this worker holds",
              source.sessions_held)


class InflightBudget:
    """The worker-wide bound on received, unrecognised audio (see the module docstring)."""

    stall_warning_s = 60.0

    def __init__(self, high_ms: int, per_session_ms: int, *,
                 on_pause: Callable[[bool], None], on_partials: Callable[[bool], None]) -> None:
        self.high_ms = high_ms
        self.per_session_ms = per_session_ms
        self.total_ms = 0
        self.paused = False
        self.partials = True
        self._on_pause = on_pause
        self._on_partials = on_partials
        self._changed = asyncio.Event()
        self._watchers: set[asyncio.Future] = set()

    def add(self, ms: int) -> None:
        self.total_ms += ms
        self._levels()

    def settle(self, state, pending_ms: int) -> None:
        """After a processing step: the channel's unprocessed audio is now ``pending_ms``."""
        self.total_ms = max(0, self.total_ms - (state.accounted_ms - pending_ms))
        state.accounted_ms = pending_ms
        self._levels()
        self._notify()

    def forget(self, state) -> None:
        """A channel dropped (revoked, failed, finished): its audio no longer counts."""
        self.total_ms = max(0, self.total_ms - state.accounted_ms)
        state.accounted_ms = 0
        self._levels()
        self._notify()

    def _levels(self) -> None:
        h = self.high_ms
        if self.partials and self.total_ms > h // 2:
            self.partials = False
            self._on_partials(False)
        elif not self.partials and self.total_ms < h // 4:
            self.partials = True
            self._on_partials(True)
        if not self.paused and self.total_ms >= h:
            self.paused = True
            self._on_pause(True)
        elif self.paused and self.total_ms <= h // 2:
            self.paused = False
            self._on_pause(False)

    def _notify(self) -> None:
        self._changed.set()
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(None)
        self._watchers.clear()

    async def changed(self, timeout: float) -> None:
        """Wait for the next processing step or forgotten channel, at most ``timeout`` s
        (the revisions' gate re-checks the levels then)."""
        fut = asyncio.get_running_loop().create_future()
        self._watchers.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._watchers.discard(fut)

    @property
    def behind(self) -> bool:
        """Live recognition is behind: paused, partials off, or over a quarter of the bound
        in flight (where partials come back).  Revisions wait meanwhile."""
        return self.paused or not self.partials or self.total_ms > self.high_ms // 4

    def has_room(self, state) -> bool:
        return self.total_ms < self.high_ms and state.accounted_ms < self.per_session_ms

    async def wait_room(self, state, cancelled: Callable[[], bool]) -> None:
        """Wait until the worker (and this channel) may take more audio, or ``cancelled``."""
        while not (self.has_room(state) or cancelled()):
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.stall_warning_s)
            except TimeoutError:
                log.warning("recognition has not caught up", inflight_ms=self.total_ms,
                            bound_ms=self.high_ms, call_id=state.call_id,
                            channel=state.channel)

    def wake(self) -> None:
        """Re-check waiters (e.g. after a rebalance cancelled what they wait for)."""
        self._notify()


class IdleWatch:
    """One timer per channel, re-armed lazily: a channel with no chunk for ``timeout_s`` is
    checked with ``busy`` (async; True postpones by up to 5 s) and then closed by ``close``."""

    def __init__(self, timeout_s: float, busy: Callable[[Any], Awaitable[bool]],
                 close: Callable[[Any], None]) -> None:
        self.timeout_s = timeout_s
        self._busy = busy
        self._close = close
        self._tasks: set[asyncio.Task] = set()

    def touch(self, proc: Any) -> None:
        """A chunk came for ``proc`` (a ChannelProcessor: ``last_input``, ``idle_timer``)."""
        proc.last_input = asyncio.get_running_loop().time()
        self._arm(proc)

    def forget(self, proc: Any) -> None:
        if proc.idle_timer is not None:
            proc.idle_timer.cancel()
            proc.idle_timer = None

    def _arm(self, proc: Any, at: float | None = None) -> None:
        if proc.idle_timer is None and not proc.state.input_closed:
            at = at or proc.last_input + self.timeout_s
            proc.idle_timer = asyncio.get_running_loop().call_at(at, self._due, proc)

    def _due(self, proc: Any) -> None:
        proc.idle_timer = None
        if proc.state.input_closed:
            return
        if asyncio.get_running_loop().time() < proc.last_input + self.timeout_s:
            self._arm(proc)  # a chunk came meanwhile
            return
        task = asyncio.get_running_loop().create_task(self._check(proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, proc: Any) -> None:
        busy = await self._busy(proc)
        loop = asyncio.get_running_loop()
        if proc.state.input_closed:
            return
        if busy or loop.time() < proc.last_input + self.timeout_s:
            self._arm(proc, loop.time() + min(5.0, self.timeout_s))
            return
        self._close(proc)
