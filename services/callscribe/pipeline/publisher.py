"""What the pipeline worker writes to Kafka, and the call summaries.

:class:`ResultsProducer` is one idempotent producer (``acks=all``, ``enable_idempotence``) for
everything the worker writes: finals, error events and summaries (transcripts topic),
partials, dead letters, and the records of its faust table (written to the table's changelog
partition of the call, serialised with faust's JSON codec exactly as the table would, so
faust's recovery reads them back).  The table is written through this producer rather than
faust's (which is not idempotent) so that every write the worker waits for survives broker
retries and restarts without duplicates.  A write that must land is retried until it does:
a broker outage stalls the channel (and, through the in-flight bound, consumption) instead
of losing anything; every ``kafka_deadline_s`` without success is logged.

:class:`KafkaSink` is the :class:`~callscribe.pipeline.channel.Sink` of the worker's
channels.  The CallSummary: when a channel finishes, the records of every channel of the
call (live ones, and the table's for channels that finished before a crash or rebalance; a
call has at most 8 channels) are looked at; when all have ended the summary is published
once (a per-call lock; ``summary`` in the records stops a replay from publishing it again,
and a call resumed from the table first looks for the summary's idempotency key in its
transcripts partition, in case the last owner died between publishing it and noting that),
and only then are the end-of-stream chunks acknowledged, and the call's channels queued for
their revised transcripts (:mod:`~callscribe.pipeline.revisions`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import faust
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.serializers import codecs

from callscribe.analytics.live import category_event
from callscribe.errors import KafkaFailure
from callscribe.pipeline.calls import ChannelRecord, ChannelState, HeldChunk
from callscribe.pipeline.codec import CallSummary, ChannelSummary, DeadLetter
from callscribe.pipeline.dead_letters import fit_dead_letter
from callscribe.pipeline.topics import (MAX_BACKOFF_S, BrokerUnavailable, client_kwargs,
                                        close_quietly, describe_bootstrap, is_retriable,
                                        mark_seen)
from callscribe.settings import Settings

if TYPE_CHECKING:
    from callscribe.pipeline.worker import PipelineWorker

log = structlog.get_logger("callscribe.worker")
MAX_CHANNELS = 8
#: how far before its own clock reading a takeover looks for what the last owner published
LOOK_BACK_MS = 10000
#: partials waiting for the producer at most (more are dropped)
MAX_PARTIALS = 1000
#: the record headers of category events (as the producer's on audio chunks)
CATEGORY_HEADERS = [("record-type", b"category_event"), ("schema-version", b"1")]


def faust_credentials(settings: Settings, bootstrap: str | None) -> Any:
    """The TLS/SASL settings as faust broker credentials (None for PLAINTEXT)."""
    kw = client_kwargs(settings, bootstrap)
    proto, ctx = kw["security_protocol"], kw.get("ssl_context")
    if proto.startswith("SASL_"):
        return faust.SASLCredentials(username=kw["sasl_plain_username"],
                                     password=kw["sasl_plain_password"], ssl_context=ctx,
                                     mechanism=kw["sasl_mechanism"])
    return faust.SSLCredentials(ctx) if proto == "SSL" else None


class ResultsProducer:
    def __init__(self, settings: Settings, bootstrap: str | None = None) -> None:
        self.settings = settings
        self.deadline_s = settings.kafka_deadline_s
        self._kw = client_kwargs(settings, bootstrap)
        self.bootstrap = describe_bootstrap(self._kw)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline_s
        backoff = self.settings.kafka_retry_backoff_ms / 1000
        last: BaseException | None = None
        while loop.time() < end:
            producer = AIOKafkaProducer(
                **self._kw, client_id=f"{self.settings.kafka_client_id}-worker",
                acks="all", enable_idempotence=True, linger_ms=self.settings.kafka_linger_ms,
                request_timeout_ms=max(1000, int(self.deadline_s * 1000)),
                retry_backoff_ms=self.settings.kafka_retry_backoff_ms)
            try:
                await asyncio.wait_for(producer.start(), max(0.1, end - loop.time()))
                self._producer = producer
                return
            except (KafkaError, OSError) as exc:
                await close_quietly(producer)
                if not is_retriable(exc):
                    raise KafkaFailure(f"Kafka at {self.bootstrap} refused the worker's "
                                       f"producer: {exc!r}") from None
                last = exc
            await asyncio.sleep(min(backoff, max(0.0, end - loop.time())))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        raise BrokerUnavailable(f"Kafka at {self.bootstrap} did not answer within "
                                f"{self.deadline_s:g} s (last error: {last!r})")

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await close_quietly(producer, timeout=10)

    async def send(self, topic: str, value: bytes | None, *, key: bytes,
                   partition: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> Any:
        """Deliver one record; retried (with backoff) until the broker acknowledges it."""
        assert self._producer is not None, "ResultsProducer used before start()"
        loop = asyncio.get_running_loop()
        backoff = self.settings.kafka_retry_backoff_ms / 1000
        warn_at = loop.time() + self.deadline_s
        while True:
            try:
                fut = await self._producer.send(topic, value, key=key, partition=partition,
                                                headers=headers or None)
                return await fut
            except (KafkaError, OSError) as exc:
                if isinstance(exc, KafkaError) and not is_retriable(exc):
                    raise KafkaFailure(f"Kafka at {self.bootstrap} rejected a record for "
                                       f"{topic}: {exc!r}") from exc
                if loop.time() >= warn_at:
                    log.warning("kafka does not acknowledge; still retrying", topic=topic,
                                bootstrap=self.bootstrap, error=repr(exc))
                    warn_at = loop.time() + self.deadline_s
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def partitions_for(self, topic: str) -> set[int]:
        assert self._producer is not None, "ResultsProducer used before start()"
        return set(await self._producer.partitions_for(topic))

    async def send_soon(self, topic: str, value: bytes, *, key: bytes) -> None:
        """Best effort: queue it and do not wait for the acknowledgement."""
        if self._producer is None:
            return
        try:
            fut = await self._producer.send(topic, value, key=key)
            fut.add_done_callback(mark_seen)
        except (KafkaError, OSError) as exc:
            log.info("partial dropped", topic=topic, error=repr(exc))


class KafkaSink:
    """The worker's Sink: table records, results, dead letters, acknowledgements."""

    def __init__(self, worker: PipelineWorker) -> None:
        self.worker = worker
        s = worker.settings
        self.transcripts = s.kafka_topic_transcripts
        self.partials = s.kafka_topic_partials
        self.dead_letters = s.kafka_topic_dead_letters
        self._locks: dict[str, asyncio.Lock] = {}
        self._bg: set[asyncio.Task] = set()
        #: call -> the CategoryEvents its summary decided (published just before it)
        self._end_categories: dict[str, list] = {}

    @property
    def producer(self) -> ResultsProducer:
        return self.worker.producer

    # --- the table --------------------------------------------------------------------------
    async def save(self, state: ChannelState) -> None:
        await self.put_record(state.key, state.partition, state.record)

    async def put_record(self, key: str, partition: int, record: ChannelRecord | None) -> None:
        if record is not None:
            record.updated_at_ms = int(time.time() * 1000)
        value = None if record is None else record.to_json()
        table = self.worker.table
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
        await self.producer.send(
            self.worker.changelog_topic, None if value is None else codecs.dumps("json", value),
            key=codecs.dumps("json", key), partition=partition)

    def get_record(self, key: str) -> ChannelRecord | None:
        return ChannelRecord.from_json(self.worker.table.data.get(key))

    # --- results ------------------------------------------------------------------------------
    async def publish(self, state: ChannelState, value: bytes,
                      headers: list[tuple[str, bytes]] | None = None) -> None:
        await self.producer.send(self.transcripts, value, key=state.call_id.encode(),
                                 headers=headers)

    async def publish_clear(self, state: ChannelState, value: bytes) -> None:
        await self.producer.send(self.worker.settings.kafka_topic_clear_transcripts, value,
                                 key=state.call_id.encode())

    async def publish_category(self, state: ChannelState, value: bytes) -> None:
        await self.producer.send(self.worker.settings.kafka_topic_analytics, value,
                                 key=state.call_id.encode(), headers=CATEGORY_HEADERS)

    def publish_partial(self, state: ChannelState, value: bytes) -> None:
        if not self.worker.settings.kafka_partials_enabled or len(self._bg) >= MAX_PARTIALS:
            return  # off, or the broker is not taking them (bounded: partials are expendable)
        self._spawn(self.producer.send_soon(self.partials, value, key=state.call_id.encode()))

    async def dead_letter(self, record: DeadLetter) -> bool:
        """Write a dead letter, cut to fit under ``kafka_max_message_bytes``; if the broker
        still refuses it (a topic with a smaller ``max.message.bytes``), again with the value
        cut to nothing but its digest.  Never raises (but CancelledError): a dead letter that
        cannot be written is logged with the original's coordinates and counted, and the
        caller acknowledges the record all the same (commits must go on)."""
        limit = self.worker.settings.kafka_max_message_bytes
        attempts = [fit_dead_letter(record, limit), fit_dead_letter(record, limit, value_bytes=0)]
        error: BaseException | None = None
        for i, rec in enumerate(attempts):
            if i and rec == attempts[0]:
                break  # nothing left to cut
            try:
                await self.producer.send(self.dead_letters, self.worker.codec.encode(rec),
                                         key=rec.key or b"")
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused (too large, not authorised, ...), or a bug
                error = exc
        value = record.source_value
        log.error("dead letter could not be written; the record is skipped",
                  error=repr(error), error_code=record.error_code,
                  source_topic=record.source_topic, source_partition=record.source_partition,
                  source_offset=record.source_offset, call_id=record.call_id,
                  source_value_size=len(value),
                  source_value_sha256=hashlib.sha256(value).hexdigest())
        self.worker.metrics.dead_letter_failures.add(1)
        return False

    async def find_published(self, call_id: str, idempotency_key: str, since_ms: int) -> bool:
        """Whether the call's transcripts partition has a record with this idempotency key
        written at or after ``since_ms``: what a new owner checks before it publishes again
        what the previous one may have published (a few seconds of one partition)."""
        try:
            return await asyncio.wait_for(
                self._find(call_id, idempotency_key, since_ms),
                self.worker.settings.kafka_deadline_s)
        except Exception as exc:  # not known: publish (at worst a repeat with the same key)
            log.warning("could not check the transcripts topic", call_id=call_id,
                        error=repr(exc))
            return False

    async def published(self, call_id: str, since_ms: int, want: Callable[[Any], bool]
                        ) -> list[Any]:
        """The records of the call in its transcripts partition, written at or after
        ``since_ms``, for which ``want`` holds (within ``kafka_deadline_s``, else raises)."""
        return await asyncio.wait_for(self._scan(call_id, since_ms, want),
                                      self.worker.settings.kafka_deadline_s)

    async def _find(self, call_id: str, idempotency_key: str, since_ms: int) -> bool:
        return bool(await self._scan(
            call_id, since_ms,
            lambda rec: getattr(rec, "idempotency_key", None) == idempotency_key, first=True))

    async def _scan(self, call_id: str, since_ms: int, want: Callable[[Any], bool], *,
                    first: bool = False) -> list[Any]:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.partitioner import DefaultPartitioner

        parts = sorted(await self.producer.partitions_for(self.transcripts))
        tp = TopicPartition(self.transcripts,
                            DefaultPartitioner()(call_id.encode(), parts, parts))
        consumer = AIOKafkaConsumer(**client_kwargs(self.worker.settings,
                                                    self.worker.bootstrap),
                                    group_id=None, enable_auto_commit=False,
                                    client_id=f"{self.worker.settings.kafka_client_id}-check")
        await consumer.start()
        out: list[Any] = []
        try:
            consumer.assign([tp])
            found = (await consumer.offsets_for_times({tp: max(0, since_ms)}))[tp]
            if found is None:
                return out
            end = (await consumer.end_offsets([tp]))[tp]
            consumer.seek(tp, found.offset)
            key = call_id.encode()
            while await consumer.position(tp) < end:
                for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    if r.key == key and r.offset < end:
                        rec = self.worker.codec.decode_or_dead_letter(r.value)
                        if want(rec):
                            out.append(rec)
                            if first:
                                return out
            return out
        finally:
            await consumer.stop()

    def release(self, state: ChannelState, chunks: list[HeldChunk]) -> None:
        self.worker.release(state.partition, [h.offset for h in chunks])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # --- the end of a call ----------------------------------------------------------------------
    async def channel_finished(self, state: ChannelState) -> None:
        call = state.call_id
        lock = self._locks.setdefault(call, asyncio.Lock())
        async with lock:
            await self._maybe_summarise(state)
        if not lock.locked() and self._locks.get(call) is lock:
            del self._locks[call]

    async def _maybe_summarise(self, state: ChannelState) -> None:
        call = state.call_id
        channels: dict[int, tuple[ChannelRecord, ChannelState | None]] = {}
        for ch in range(MAX_CHANNELS):
            proc = self.worker.channels.get(f"{call}:{ch}")
            if proc is not None:
                channels[ch] = (proc.state.record, proc.state)
            elif (rec := self.get_record(f"{call}:{ch}")) is not None:
                channels[ch] = (rec, None)
        if any(rec.ended is None for rec, _ in channels.values()):
            return  # another channel is still running: its end publishes the summary
        if not all(rec.summary for rec, _ in channels.values()):
            summary = self._summary(call, channels)
            ends = self._end_categories.pop(call, [])  # categories decided at the end
            # resumed from the table: the previous owner may have published it just before
            # it died (before it could note that in the records)
            resumed = any(st is None or st.resumed for _, st in channels.values())
            since = max(rec.updated_at_ms for rec, _ in channels.values()) - LOOK_BACK_MS
            if resumed and await self.find_published(call, summary.idempotency_key, since):
                log.info("call summary was published already", call_id=call)
            else:
                for ev in ends:  # before the summary, which lists them
                    await self.producer.send(self.worker.settings.kafka_topic_analytics,
                                             self.worker.codec.encode(ev), key=call.encode(),
                                             headers=CATEGORY_HEADERS)
                await self.producer.send(self.transcripts, self.worker.codec.encode(summary),
                                         key=call.encode())
                self.worker.metrics.summaries.add(1)
                log.info("call summary published", call_id=call, channels=len(channels),
                         sentences=summary.sentence_count, duration_ms=summary.duration_ms,
                         end_reason=summary.end_reason)
            for ch, (rec, st) in channels.items():
                rec.summary = True
                await self.put_record(f"{call}:{ch}", st.partition if st else state.partition,
                                      rec)
        for ch, (rec, st) in channels.items():  # the call is over: revise its channels
            self.worker.revisions.add(f"{call}:{ch}", rec,
                                      st.partition if st else state.partition)
        for _rec, st in channels.values():
            if st is not None:
                eos, st.eos_chunks = st.eos_chunks, []
                self.release(st, eos)
                self.worker.retire_later(st)

    def _summary(self, call: str,
                 channels: dict[int, tuple[ChannelRecord, ChannelState | None]]) -> CallSummary:
        parts = []
        for ch in sorted(channels):
            rec = channels[ch][0]
            talk = min(rec.talk_ms, rec.duration_ms) if rec.duration_ms else rec.talk_ms
            parts.append(ChannelSummary(
                channel=ch, role=rec.role, duration_ms=rec.duration_ms, talk_ms=talk,
                silence_ms=max(0, rec.duration_ms - talk), sentence_count=rec.count,
                polarity=rec.majority_polarity()))
        reasons = {channels[ch][0].ended for ch in channels}
        duration = max(p.duration_ms for p in parts)
        per, whole, now, cats = self.worker.analytics.summarise(
            {ch: channels[ch][0] for ch in channels}, duration)
        self._end_categories[call] = [category_event(call, m, int(time.time() * 1000))
                                      for m in now]
        if per is not None:
            parts = [replace(p, analytics=per[p.channel]) for p in parts]
        return CallSummary(
            call_id=call, duration_ms=duration, analytics=whole, categories=cats,
            sentence_count=sum(p.sentence_count for p in parts), channels=tuple(parts),
            end_reason="idle_timeout" if "idle_timeout" in reasons else "end_of_stream",
            engine=self.worker.engine_name, model=self.worker.model_name,
            created_at_ms=int(time.time() * 1000))
