"""The task that drives one (call, channel): recognition, publishing, acknowledgements.

Everything Kafka is behind :class:`Sink` (the worker's is :class:`~callscribe.pipeline.
publisher.KafkaSink`), so this runs in unit tests with an in-memory sink.

Order of effects for a final sentence -- what makes replays exact:

1. the table record is written with the new last sentence (id, end, counts) and the encoded
   event as ``pending`` (write-ahead), and its delivery awaited;
2. the event is published to the transcripts topic, delivery awaited;
3. the record is written again without ``pending``;
4. the chunks whose audio is now wholly before the session's safe point are acknowledged.

A worker that dies between 1 and 3 leaves ``pending``: before anything else the next owner
looks for its idempotency key in the call's transcripts partition (from a little before the
event was made: a few seconds of one partition) and publishes exactly those bytes only when
they are not there.  So a final is published once, and if that check itself fails (broker
unreachable for ``kafka_deadline_s``) at worst twice *with the same idempotency key* --
never twice with different keys, never not at all.  Steps 1-3 run as a shielded "critical
section": a rebalance waits for it instead of cutting it.

A decode that still fails after its retries (:class:`~callscribe.pipeline.flow.DecodeFailed`)
sends every chunk of the session not yet acknowledged to the dead-letter topic, publishes an
error event (``error`` set, no text) for that span, acknowledges the chunks and starts a new
session with the next audio: the call goes on.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import structlog
from opentelemetry import trace

from callscribe.analytics.live import CallAnalytics, category_event
from callscribe.errors import CallscribeError
from callscribe.pipeline.calls import ChannelState, HeldChunk
from callscribe.pipeline.codec import (Codec, DeadLetter, TranscriptError, TranscriptEvent,
                                       final_idempotency_key, transcript_from_final,
                                       transcript_from_partial)
from callscribe.pipeline.flow import InflightBudget, WorkerMetrics
from callscribe.recognition.events import FinalSentence, Partial
from callscribe.tracing import run_in_context, trace_headers

log = structlog.get_logger("callscribe.worker")


class Sink(Protocol):
    async def save(self, state: ChannelState) -> None:
        """Write the channel's record to the table; return once the changelog has it."""

    async def publish(self, state: ChannelState, value: bytes,
                      headers: list[tuple[str, bytes]] | None = None) -> None:
        """A final (or error) event to the transcripts topic; return once delivered."""

    def publish_partial(self, state: ChannelState, value: bytes) -> None:
        """A partial to the partials topic, best effort (not awaited)."""

    async def dead_letter(self, record: DeadLetter) -> bool:
        """To the dead-letter topic; return once delivered (True) or given up (False, logged):
        never raises."""

    async def find_published(self, call_id: str, idempotency_key: str, since_ms: int) -> bool:
        """Whether a result with this key is in the transcripts topic (written after
        ``since_ms``)."""

    def release(self, state: ChannelState, chunks: list[HeldChunk]) -> None:
        """Acknowledge chunks: their offsets may be committed."""

    async def channel_finished(self, state: ChannelState) -> None:
        """Every final of the channel is out; publish the call's summary when it is the
        last channel, and acknowledge the end-of-stream chunks after it."""

    async def publish_clear(self, state: ChannelState, value: bytes) -> None:
        """An unredacted final to the clear-text topic (only called when one is set)."""

    async def publish_category(self, state: ChannelState, value: bytes) -> None:
        """A CategoryEvent to the analytics topic; return once delivered."""


def now_ms() -> int:
    return int(time.time() * 1000)


class ChannelProcessor:
    """One asyncio task per (call, channel); ``wake()`` after feeding audio."""

    def __init__(self, state: ChannelState, sink: Sink, *, executor: Any, codec: Codec,
                 budget: InflightBudget, metrics: WorkerMetrics, engine: str, model: str,
                 audio_topic: str, partials: bool, runtime: Any = None,
                 analytics: CallAnalytics | None = None) -> None:
        self.state = state
        #: redaction, characteristics, live categories (default: redact every entity type)
        self.analytics = analytics or CallAnalytics.default()
        self.runtime = runtime  # its ``inflight`` count drives the sessions' load shedding
        self.sink = sink
        self.executor = executor
        self.codec = codec
        self.budget = budget
        self.metrics = metrics
        self.engine = engine
        self.model = model
        self.audio_topic = audio_topic
        self.partials = partials
        self.criticals: set[asyncio.Task] = set()
        self.partial_sids: set[int] = set()
        self._wake = asyncio.Event()
        self.log = log.bind(call_id=state.call_id, channel=state.channel,
                            partition=state.partition)
        self.task: asyncio.Task | None = None
        #: monotonic time the worker opened this channel (the oldest-call gauge)
        self.opened_at = time.monotonic()
        #: loop time of the last chunk, and the idle timer (the worker's)
        self.last_input = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    def start(self) -> asyncio.Task:
        self.task = asyncio.get_running_loop().create_task(self.run(),
                                                          name=f"channel {self.state.key}")
        self._wake.set()
        return self.task

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        st = self.state
        try:
            if st.is_new:
                await self._critical(self.sink.save(st))
                st.is_new = False
            if st.record.pending:
                await self._critical(self._republish())
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    while st.session is not None and st.session.has_work():
                        await self._step()
                    self._release(st.releasable())
                    if st.finished:
                        await self._finish()
                        return
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # e.g. Kafka refused a record: as a failed decode
                    self.log.exception("channel processing failed")
                    self.budget.forget(st)
                    await self._critical(self._fail(exc))
                    self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # even the failure could not be reported: a replay will redo it
            self.log.exception("channel processing stopped")

    async def _critical(self, coro: Awaitable[Any]) -> Any:
        """Run to completion even if this task is cancelled (a rebalance waits for it)."""
        task = asyncio.ensure_future(coro)
        self.criticals.add(task)
        task.add_done_callback(self.criticals.discard)
        return await asyncio.shield(task)

    def _release(self, chunks: list[HeldChunk]) -> None:
        if chunks:
            self.sink.release(self.state, chunks)

    # --- recognition ----------------------------------------------------------------------
    async def _step(self) -> None:
        st = self.state
        session = st.session
        assert session is not None
        loop = asyncio.get_running_loop()
        rt = self.runtime if hasattr(self.runtime, "inflight") else None
        try:
            if rt is not None:
                rt.inflight += 1
            events = await loop.run_in_executor(self.executor, run_in_context,
                                                st.trace_context, session.process)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # DecodeFailed after the retries, or a session error
            self.budget.forget(st)
            await self._critical(self._fail(exc))
            return
        finally:
            if rt is not None:
                rt.inflight -= 1
        self.budget.settle(st, session.pending_ms)
        for ev in events:
            if isinstance(ev, Partial):
                self._partial(st.to_stream(ev))
            elif isinstance(ev, FinalSentence):
                await self._critical(self._final(st.to_stream(ev)))
        self._release(st.releasable())

    def _partial(self, ev: Partial) -> None:
        if not (self.partials and self.budget.partials and ev.text):
            return
        st = self.state
        rec = transcript_from_partial(st.call_id, st.channel, st.role, ev, self.engine,
                                      self.model, created_at_ms=now_ms())
        rec = self.analytics.redact(rec, st.record.options)
        self.partial_sids.add(ev.sentence_id)
        self.sink.publish_partial(st, self.codec.encode(rec))
        self.metrics.partials.add(1)

    async def _final(self, ev: FinalSentence) -> None:
        st, rec = self.state, self.state.record
        event = transcript_from_final(st.call_id, st.channel, st.role, ev, self.engine,
                                      self.model, created_at_ms=now_ms())
        rec.sid = max(rec.sid, ev.sentence_id)
        rec.end_ms = max(rec.end_ms, event.end_ms)
        if not ev.text and ev.sentence_id not in self.partial_sids:
            await self.sink.save(st)  # nothing to say; only the progress is recorded
            return
        self.partial_sids.discard(ev.sentence_id)
        clear, event = event, self.analytics.redact(event, rec.options)
        matches = self.analytics.note_final(rec, clear, event)
        rec.count += 1
        rec.talk_ms += event.end_ms - event.begin_ms
        if event.emotion is not None:
            rec.polarity[event.emotion.polarity] = rec.polarity.get(event.emotion.polarity,
                                                                    0) + 1
        with trace.get_tracer("callscribe.worker").start_as_current_span(
                "transcript.publish", context=st.trace_context, kind=trace.SpanKind.PRODUCER,
                attributes={"call_id": st.call_id, "channel": st.channel,
                            "sentence_id": event.sentence_id,
                            "messaging.system": "kafka"}):
            await self._publish(self.codec.encode(event), trace_headers())
        if self.analytics.clear_topic:
            await self.sink.publish_clear(st, self.codec.encode(clear))
        for m in matches:
            await self.sink.publish_category(st, self.codec.encode(category_event(
                st.call_id, m, now_ms())))
        self.metrics.finals.add(1)
        if rec.capture_base_ms is not None:
            self.metrics.final_delay.record(max(0, event.created_at_ms
                                                - (rec.capture_base_ms + event.end_ms)))
        self.log.info("final published", sentence_id=ev.sentence_id, begin_ms=event.begin_ms,
                      end_ms=event.end_ms, chars=len(event.text))

    async def _publish(self, value: bytes, headers: list[tuple[str, bytes]] | None = None
                       ) -> None:
        """Write-ahead, publish, confirm (the module docstring's steps 1-3)."""
        st = self.state
        st.record.pending = base64.b64encode(value).decode()
        await self.sink.save(st)
        await self.sink.publish(st, value, headers)
        st.record.pending = None
        await self.sink.save(st)

    async def _republish(self) -> None:
        """The previous owner died between steps 1 and 3: publish the pending event unless
        it made it to the transcripts topic."""
        st = self.state
        value = base64.b64decode(st.record.pending or "")
        event = self.codec.decode(value)
        key = getattr(event, "idempotency_key", "")
        since = (getattr(event, "created_at_ms", None) or st.record.updated_at_ms) - 10000
        if await self.sink.find_published(st.call_id, key, since):
            self.log.info("the previous owner's last final was published", key=key)
        else:
            self.log.info("publishing the previous owner's last final", key=key)
            await self.sink.publish(st, value)
        st.record.pending = None
        await self.sink.save(st)

    async def _fail(self, exc: BaseException) -> None:
        st, rec = self.state, self.state.record
        chunks = st.release_all()
        begin = chunks[0].begin_ms if chunks else rec.end_ms
        end = max(begin, st.fed_ms or begin)
        code = exc.code if isinstance(exc, CallscribeError) else "DecodeFailed"
        message = exc.message if isinstance(exc, CallscribeError) else repr(exc)
        seqs = f"seq {chunks[0].seq}..{chunks[-1].seq}" if chunks else "no chunks"
        reason = (f"{message}; call {st.call_id} channel {st.channel}: {seqs}, audio "
                  f"{begin}..{end} ms")[:3900]
        self.log.error("recognition failed; chunks dead-lettered", error_code=code,
                       error=message, chunks=len(chunks), begin_ms=begin, end_ms=end)
        for h in chunks:
            written = await self.sink.dead_letter(DeadLetter(
                error_code=code, reason=reason, source_topic=self.audio_topic,
                source_partition=st.partition, source_offset=h.offset,
                source_key=st.call_id.encode(), source_value=h.value, failed_at_ms=now_ms(),
                component="worker", call_id=st.call_id))
            if written is not False:  # False: refused by the broker (logged by the sink)
                self.metrics.dead_letters.add(1, {"reason": code})
        rec.sid += 1
        rec.end_ms = max(rec.end_ms, end)
        event = TranscriptEvent(
            call_id=st.call_id, channel=st.channel, role=st.role, sentence_id=rec.sid,
            begin_ms=begin, end_ms=end, text="", words=(), language=None, emotion=None,
            final=True, engine=self.engine, model=self.model,
            idempotency_key=final_idempotency_key(st.call_id, st.channel, rec.sid, begin),
            created_at_ms=now_ms(), error=TranscriptError(code, message[:3900]))
        await self._publish(self.codec.encode(event), trace_headers(st.trace_context))
        self._release(chunks)
        st.restart_session()

    async def _finish(self) -> None:
        st, rec = self.state, self.state.record
        if rec.ended is None:
            rec.ended = st.end_reason or "end_of_stream"
            end = st.audio_end_ms or max((h.begin_ms for h in st.eos_chunks), default=0)
            rec.duration_ms = max(rec.duration_ms, end, rec.end_ms)
            await self._critical(self.sink.save(st))
            self.log.info("channel finished", reason=rec.ended, sentences=rec.count,
                          duration_ms=rec.duration_ms)
        self._release(st.release_all())
        self.budget.forget(st)
        await self._critical(self.sink.channel_finished(st))
