"""``callscribe worker``: the faust-streaming app (aiokafka transport) that recognises calls.

One faust agent reads the audio topic (``stream.noack()``, the topic subscribed with
``acks=False``: see :class:`~callscribe.pipeline.calls.OffsetTracker` for why the worker
commits its own offsets).  An unreadable record goes to the dead-letter topic with its reason.
A chunk finds (or opens) the state of its (call, channel), waits for room under the in-flight
bound (:class:`~callscribe.pipeline.flow.InflightBudget`: partials degrade first, then the
audio partitions are paused), goes through the reorder buffer into the channel's
RecognitionSession; a :class:`~callscribe.pipeline.channel.ChannelProcessor` task per channel
runs the decodes in the runtime's thread pool and publishes finals, partials and, through
:class:`~callscribe.pipeline.publisher.KafkaSink`, the call's summary.

What a record must be: an AudioChunk (else a dead letter with the codec's reason) whose Kafka
key is its call_id (``KeyMismatch``), on the partition its call is open on
(``PartitionMismatch``), for a call that is not over (``CallEnded``, see
:mod:`~callscribe.pipeline.ended`).  A dead-lettered record is acknowledged once its dead letter
is written or given up (:meth:`KafkaSink.dead_letter` never raises), so no partition's commits
wait on it.

Acknowledging and committing: a chunk is acknowledged once every sentence that overlaps its
audio is final and published (the session's safe point); every
``kafka_worker_commit_interval_s`` each partition's first unacknowledged offset is committed.
A long open sentence holds back its partition's commit, by design: after a crash or rebalance
the new owner replays from there, skips the audio the table says is published and continues
the sentence ids (:mod:`~callscribe.pipeline.channel` has the exactly-once argument).

The table (faust, in memory, changelog ``<group>-calls-changelog`` with as many partitions as
the audio topic) is keyed ``call_id:channel``; records go to the call's partition, so faust's
co-partitioned assignment recovers them on whichever worker gets the call.

Rebalances: on revocation the worker waits briefly for the channels' critical sections and
commits what is safe; on assignment it drops the channels of partitions it lost and keeps the
rest (faust re-seeks to the committed offsets; the trackers ignore what they already had).
A channel with no chunk for ``kafka_worker_idle_timeout_s`` is closed once the broker says
its partition has nothing unread.  Ended calls get revised transcripts:
:mod:`~callscribe.pipeline.revisions`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import structlog
from faust.types import TP

from callscribe.analytics.live import CallAnalytics
from callscribe.errors import ConfigurationError
from callscribe.pipeline.calls import (ChannelRecord, ChannelState, HeldChunk, OffsetTracker,
                                       chunk_duration_ms)
from callscribe.pipeline.channel import ChannelProcessor
from callscribe.pipeline.codec import AudioChunk, Codec, DeadLetter, dead_letter_for
from callscribe.pipeline.dead_letters import KeyMismatch, PartitionMismatch
from callscribe.pipeline.ended import EndedCallKeeper
from callscribe.pipeline.flow import IdleWatch, InflightBudget, RetryingEngine, WorkerMetrics
from callscribe.pipeline.gauges import WorkerGauges
from callscribe.pipeline.publisher import (MAX_CHANNELS, KafkaSink, ResultsProducer,
                                           faust_credentials)
from callscribe.pipeline.revisions import Revisions
from callscribe.recognition.session import RecognitionSession
from callscribe.settings import Settings
from callscribe.tracing import context_from_headers

log = structlog.get_logger("callscribe.worker")
#: at most this long a revocation waits for critical sections, then for its commit
REVOKE_WAIT_S = 3.0


def _show_key(key: bytes | None) -> str:
    if key is None:
        return "(none)"
    text = key[:64].decode("utf-8", "replace")
    return repr(text + ("..." if len(key) > 64 else ""))


class PipelineWorker:
    """The worker's state and its faust app (built here, one per process; no globals)."""

    def __init__(self, settings: Settings, runtime: Any, *, partitions: int,
                 bootstrap: str | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.bootstrap = bootstrap or settings.kafka_bootstrap
        self.audio_topic = settings.kafka_topic_audio
        self.codec = Codec.from_settings(settings)
        #: PII redaction, characteristics, categories (the rules file is read here)
        self.analytics = CallAnalytics.from_settings(settings)
        self.metrics = WorkerMetrics()
        self.engine = RetryingEngine(
            runtime.engine, settings.kafka_worker_decode_retries,
            settings.kafka_worker_retry_backoff_ms,
            on_retry=lambda _exc: self.metrics.decode_retries.add(1))
        self.engine_name = runtime.engine.name
        self.model_name = runtime.engine.model_name
        self.budget = InflightBudget(settings.kafka_worker_max_inflight_audio_ms,
                                     max(1000, settings.max_buffered_audio_ms // 2),
                                     on_pause=self._pause, on_partials=self._partials)
        self.idle = IdleWatch(settings.kafka_worker_idle_timeout_s, self._idle_busy,
                              self._close_idle)
        self.trackers: dict[int, OffsetTracker] = {}
        self.channels: dict[str, ChannelProcessor] = {}
        self.generation = 0
        self.paused: set[TP] = set()
        #: the broker's end of each paused partition (refreshed every 5 s while paused)
        self.paused_ends: dict[int, int] = {}
        self.stopping = False
        self._retiring: dict[int, list[tuple[int, str]]] = {}
        self._bg: set[asyncio.Task] = set()
        self.producer = ResultsProducer(settings, bootstrap)
        self.sink = KafkaSink(self)
        self.app = self._build_app(partitions)
        self.chunk_ms = float(settings.kafka_chunk_ms)  # running mean of the chunks' audio
        self.ended = EndedCallKeeper(self)  # after the app: it reads the table
        self.revisions = Revisions(self)  # revised transcripts of ended calls
        self.metrics.observe(WorkerGauges(self))

    # --- the faust app ------------------------------------------------------------------------
    def _build_app(self, partitions: int) -> faust.App:
        s = self.settings
        servers = [b.strip() for b in self.bootstrap.split(",") if b.strip()]
        try:
            s.kafka_worker_data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"CALLSCRIBE_KAFKA_WORKER_DATA_DIR: cannot create "
                                     f"{s.kafka_worker_data_dir}: {exc}") from None
        app = faust.App(
            s.kafka_worker_group, broker=[f"aiokafka://{b}" for b in servers],
            broker_credentials=faust_credentials(s, self.bootstrap),
            broker_client_id=f"{s.kafka_client_id}-worker", store="memory://",
            topic_partitions=partitions, topic_replication_factor=s.kafka_replication_factor,
            consumer_auto_offset_reset="earliest", web_enabled=False,
            datadir=str(s.kafka_worker_data_dir / f"{s.kafka_worker_group}-data"),
            broker_session_timeout=s.kafka_worker_session_timeout_s,
            broker_heartbeat_interval=max(1.0, s.kafka_worker_session_timeout_s / 5),
            broker_max_poll_records=200, stream_buffer_maxsize=400, stream_wait_empty=False,
            broker_request_timeout=max(30.0, s.kafka_deadline_s),
            producer_request_timeout=max(30.0, s.kafka_deadline_s))
        audio = app.topic(self.audio_topic, key_serializer="raw", value_serializer="raw",
                          acks=False, partitions=partitions)
        self.table = app.Table("calls", default=None, partitions=partitions,
                               schema=faust.Schema(key_serializer="json",
                                                   value_serializer="json"),
                               help="published sentences per call:channel")
        self.changelog_topic = self.table.changelog_topic_name
        self.table.on_recover(lambda: self.ended.on_recovered())
        self.table.on_recover(lambda: self.revisions.on_recovered())

        @app.agent(audio, name="audio")
        async def consume(stream: faust.StreamT) -> None:
            async for event in stream.noack().events():
                await self.on_event(event)

        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_before_shutdown.connect(self._on_shutdown)

        @app.timer(min(60.0, s.kafka_worker_ended_retention_s / 4))
        async def sweep() -> None:
            try:
                await self.ended.sweep()
            except Exception as exc:  # the next round sweeps it
                log.warning("sweep of ended calls failed", error=repr(exc))

        @app.timer(5.0)
        async def paused_ends() -> None:
            """A paused partition is not fetched, so its highwater goes stale: ask the broker
            for its end (the lag and backlog gauges read it)."""
            if not self.paused:
                return
            try:
                ends = await asyncio.wait_for(self.app.consumer.highwaters(*self.paused), 10)
            except Exception as exc:  # the next round asks again
                log.info("could not read the paused partitions' ends", error=repr(exc))
                return
            self.paused_ends = {tp.partition: int(n) for tp, n in ends.items()}

        @app.timer(self.settings.kafka_worker_commit_interval_s)
        async def commit() -> None:
            try:
                await self.commit(set(self.trackers))
            except Exception as exc:  # the next round commits it (positions only grow)
                log.warning("commit failed", error=repr(exc))
        return app

    # --- records in -----------------------------------------------------------------------------
    async def on_event(self, event: Any) -> None:
        msg = event.message
        if self.stopping or msg.topic != self.audio_topic:
            return
        p, offset = msg.partition, msg.offset
        if msg.timestamp:  # faust gives seconds
            self.metrics.hop_in.record(max(0.0, (time.time() - msg.timestamp) * 1000))
        tracker = self.trackers.setdefault(p, OffsetTracker())
        if not tracker.register(offset):
            self.metrics.chunks.add(1, {"outcome": "redelivered"})
            return
        raw = event.value if isinstance(event.value, bytes) else msg.value
        rec = self.codec.decode_or_dead_letter(raw, key=msg.key, topic=msg.topic, partition=p,
                                               offset=offset, expect=AudioChunk)
        if not isinstance(rec, DeadLetter) and msg.key != rec.call_id.encode():
            rec = dead_letter_for(KeyMismatch(
                f"the record's Kafka key {_show_key(msg.key)} is not its call_id "
                f"{rec.call_id!r}: key every audio record by its call_id, so that a call's "
                "records meet in one partition"), raw, key=msg.key, topic=msg.topic,
                partition=p, offset=offset)
        if isinstance(rec, DeadLetter):
            log.warning("record dead-lettered", partition=p, offset=offset,
                        error_code=rec.error_code, reason=rec.reason, call_id=rec.call_id)
            self._spawn(self._dead_letter(rec, p, offset))
            return
        try:
            await self._route(rec, p, offset, raw, context_from_headers(event.headers))
        except Exception as exc:  # a bug must not stop the partition: dead-letter the record
            log.exception("chunk could not be processed", partition=p, offset=offset,
                          call_id=rec.call_id, channel=rec.channel)
            self._spawn(self._dead_letter(DeadLetter(
                "InternalError", f"worker failed on this chunk: {exc!r}"[:3900], msg.topic, p,
                offset, msg.key, raw, int(time.time() * 1000), "worker", rec.call_id), p, offset))

    async def _dead_letter(self, rec: DeadLetter, partition: int, offset: int) -> None:
        """Write it and acknowledge the record, whether or not the write succeeded (the sink
        logs a failure with the record's coordinates): a partition's commits never wait on a
        dead letter the broker will not take."""
        try:
            if await self.sink.dead_letter(rec):
                self.metrics.dead_letters.add(1, {"reason": rec.error_code})
        finally:
            self.release(partition, [offset])

    def reject(self, exc: Exception, chunk: AudioChunk, p: int, offset: int,
               raw: bytes) -> None:
        """Dead-letter a readable chunk the worker will not use (key, partition, late)."""
        dl = dead_letter_for(exc, raw, key=chunk.call_id.encode(), topic=self.audio_topic,
                             partition=p, offset=offset)
        log.warning("record dead-lettered", partition=p, offset=offset, error_code=dl.error_code,
                    reason=dl.reason, call_id=chunk.call_id, channel=chunk.channel,
                    seq=chunk.seq)
        self._spawn(self._dead_letter(dl, p, offset))

    async def _route(self, chunk: AudioChunk, p: int, offset: int, raw: bytes,
                     trace_context: Any = None) -> None:
        key = f"{chunk.call_id}:{chunk.channel}"
        proc = self.channels.get(key)
        if proc is not None and proc.state.partition != p:
            return self._wrong_partition(chunk, proc.state.partition, p, offset, raw)
        if proc is not None and proc.state.input_closed and not (
                chunk.end_of_stream and not proc.state.record.summary):
            # over (or summarised): late audio, a duplicate end, a seq after the end; only
            # an end of stream may still come (held until the summary is out)
            return self.ended.after_end(chunk, proc.state.record, p, offset, raw)
        if proc is None:
            if (ended := self.ended.record_of(chunk.call_id)) is not None:
                return self.ended.after_end(chunk, ended, p, offset, raw)
            for ch in range(MAX_CHANNELS):
                other = self.channels.get(f"{chunk.call_id}:{ch}")
                if other is not None and other.state.partition != p:
                    return self._wrong_partition(chunk, other.state.partition, p, offset, raw)
            proc = self._open(chunk, p)
        st = proc.state
        if trace_context is not None:
            st.trace_context = trace_context
        gen = self.generation
        await self.budget.wait_room(st, lambda: self.generation != gen or self.stopping)
        if self.generation != gen and self.channels.get(key) is not proc or self.stopping:
            return  # the partition went away while waiting: its new owner replays this
        begin = chunk.offset_ms
        if not chunk.end_of_stream:
            self.chunk_ms += (chunk_duration_ms(chunk) - self.chunk_ms) / 100
        held = HeldChunk(offset, chunk.seq, begin, begin + chunk_duration_ms(chunk), raw,
                         chunk.end_of_stream)
        if chunk.seq == 0 and chunk.options is not None and st.record.options is None \
                and st.session is None:
            st.record.options = chunk.options.to_dict()
        before = dict(st.reorder.counts)
        ready, dropped = st.take(chunk, held)
        for name, n in st.reorder.counts.items():
            if n > before[name]:
                self.metrics.chunks.add(n - before[name], {"outcome": name})
        self.release(p, [h.offset for h in dropped])
        for c, h in ready:
            fed, kept = st.feed(c, h, self._make_session)
            self.budget.add(fed)
            st.accounted_ms += fed
            self.metrics.chunks.add(1, {"outcome": "fed" if kept else "done_before"})
            if not kept:
                self.release(p, [h.offset])
        self.idle.touch(proc)
        proc.wake()

    def _wrong_partition(self, chunk: AudioChunk, open_on: int, p: int, offset: int,
                         raw: bytes) -> None:
        self.reject(PartitionMismatch(
            f"call {chunk.call_id!r} is open on partition {open_on}, this record came on "
            f"partition {p}: produce all of a call's records with the same partitioner "
            "(the key is the call_id)"), chunk, p, offset, raw)

    def _open(self, chunk: AudioChunk, p: int) -> ChannelProcessor:
        key = f"{chunk.call_id}:{chunk.channel}"
        record = ChannelRecord.from_json(self.table.data.get(key))
        st = ChannelState(chunk.call_id, chunk.channel, p, role=chunk.role, record=record,
                          reorder_window=self.settings.kafka_worker_reorder_window)
        if record is not None:
            log.info("call resumed from the table", call_id=chunk.call_id,
                     channel=chunk.channel, partition=p, sentence_id=record.sid,
                     resume_ms=record.end_ms, ended=record.ended)
        elif chunk.seq != 0:
            log.warning("channel starts mid-stream without a record; default options",
                        call_id=chunk.call_id, channel=chunk.channel, seq=chunk.seq)
        opts = chunk.options if chunk.seq == 0 else None
        wants = opts.partials if opts is not None and opts.partials is not None else True
        proc = ChannelProcessor(
            st, self.sink, executor=self.runtime.executor, codec=self.codec, budget=self.budget,
            metrics=self.metrics, engine=self.engine_name, model=self.model_name,
            audio_topic=self.audio_topic, runtime=self.runtime, analytics=self.analytics,
            partials=self.settings.kafka_partials_enabled and wants)
        self.channels[key] = proc
        proc.start()
        return proc

    def _make_session(self, st: ChannelState) -> RecognitionSession:
        session = self.runtime.new_session(st.record.stream_options(), engine=self.engine)
        session.partials_enabled = self.budget.partials
        session.pool_busy = getattr(self.runtime, "pool_busy", None)  # load shedding
        return session

    def release(self, partition: int, offsets: list[int]) -> None:
        tracker = self.trackers.get(partition)
        if tracker is not None:
            for o in offsets:
                tracker.done(o)

    # --- idle channels (timers in flow.IdleWatch) ---------------------------------------------
    async def _idle_busy(self, proc: ChannelProcessor) -> bool:
        """Not idle unless the broker says the channel's partition has nothing unread (the
        silence is the producer's, not a backlog, a pause, a rebalance or an outage)."""
        st = proc.state
        tp = TP(self.audio_topic, st.partition)
        try:
            end = (await asyncio.wait_for(self.app.consumer.highwaters(tp), 10.0))[tp]
        except Exception:  # broker unreachable: not a reason to end a call
            return True
        tracker = self.trackers.get(st.partition)
        return tracker is None or (tracker.received or 0) < end or self.budget.paused \
            or bool(self.app.rebalancing)

    def _close_idle(self, proc: ChannelProcessor) -> None:
        st = proc.state
        if st.input_closed or self.channels.get(st.key) is not proc:
            return
        log.info("channel idle; closing it", call_id=st.call_id, channel=st.channel,
                 idle_s=self.idle.timeout_s)
        for c, h in st.reorder.flush():
            fed, kept = st.feed(c, h, self._make_session)
            self.budget.add(fed)
            st.accounted_ms += fed
            if not kept:
                self.release(st.partition, [h.offset])
        st.close_input("idle_timeout")
        proc.wake()

    # --- flow control ------------------------------------------------------------------------
    def _pause(self, on: bool) -> None:
        consumer = self.app.consumer
        if on:
            self.paused = {tp for tp in consumer.assignment() if tp.topic == self.audio_topic}
            consumer.pause_partitions(self.paused)
            self.metrics.pauses.add(1)
            log.warning("recognition is behind: audio partitions paused",
                        inflight_ms=self.budget.total_ms,
                        partitions=sorted(tp.partition for tp in self.paused))
        else:
            tps, self.paused = self.paused, set()
            self.paused_ends = {}
            self._spawn(self._resume(tps))

    async def _resume(self, tps: set[TP]) -> None:
        """Resume, first seeking each partition back to what the agent last received: faust
        drops records of a partition fetched while it was paused (its own pauses are always
        followed by a seek).  Also mid-rebalance: faust skips what comes before its recovery
        is done and seeks to the committed offsets afterwards."""
        consumer = self.app.consumer
        tps = tps & consumer.assignment()
        for tp in tps:
            t = self.trackers.get(tp.partition)
            if t is not None and t.received is not None:
                await consumer.seek(tp, t.received)
        consumer.resume_partitions(tps)
        log.info("recognition caught up: audio partitions resumed",
                 inflight_ms=self.budget.total_ms, partitions=sorted(t.partition for t in tps))

    def _partials(self, on: bool) -> None:
        log.info("partials " + ("back on" if on else "off: recognition is behind"),
                 inflight_ms=self.budget.total_ms)
        for proc in self.channels.values():
            if proc.state.session is not None:
                proc.state.session.partials_enabled = on

    # --- commits, rebalances, shutdown --------------------------------------------------------
    async def commit(self, partitions: set[int]) -> bool:
        offsets: dict[TP, int] = {}
        for p in partitions:
            t = self.trackers.get(p)
            pos = t.position() if t is not None else None
            if pos is not None and pos != t.committed:
                offsets[TP(self.audio_topic, p)] = pos
        if not offsets:
            return True
        # faust's Consumer._commit: commit exactly these positions (see the module docstring)
        ok = await self.app.consumer._commit(offsets)
        if ok:
            for tp, pos in offsets.items():
                if (t := self.trackers.get(tp.partition)) is not None:
                    t.committed = pos
                    await self._retire(tp.partition, pos)
        return bool(ok)

    def retire_later(self, st: ChannelState) -> None:
        """A finished call's records go (tombstones) once the commit passes its chunks."""
        self._retiring.setdefault(st.partition, []).append((st.record.last_offset, st.key))

    async def _retire(self, partition: int, position: int) -> None:
        keep = []
        for last, key in self._retiring.get(partition, []):
            if last >= position:
                keep.append((last, key))
                continue
            proc = self.channels.pop(key, None)
            if proc is not None:
                self.idle.forget(proc)
            rec = proc.state.record if proc is not None else self.sink.get_record(key)
            if rec is None:
                continue
            # the call stays known as ended (late records are dead-lettered) until the
            # sweep forgets it (kafka_worker_ended_retention_s / _max; pipeline/ended.py)
            await self.ended.retire(key, partition, rec)
        self._retiring[partition] = keep

    async def _on_revoked(self, app: Any, revoked: set, **_: Any) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == self.audio_topic}
        self.generation += 1
        self.budget.wake()
        criticals = {t for proc in self.channels.values() if proc.state.partition in lost
                     for t in proc.criticals}
        if criticals:
            await asyncio.wait(criticals, timeout=REVOKE_WAIT_S)
        await self.revisions.revoked(lost, REVOKE_WAIT_S)
        try:
            await asyncio.wait_for(self.commit(lost), REVOKE_WAIT_S)
        except Exception as exc:  # the new owner replays from the last commit instead
            log.warning("commit on revocation failed", error=repr(exc))

    async def _on_assigned(self, app: Any, assigned: set, **_: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.audio_topic}
        for p in [p for p in self.trackers if p not in mine]:
            self._drop_partition(p)
        self.ended.forget_partitions(mine)
        log.info("audio partitions assigned", partitions=sorted(mine))

    def _drop_partition(self, p: int) -> None:
        for key, proc in [(k, v) for k, v in self.channels.items() if v.state.partition == p]:
            if proc.task is not None:
                proc.task.cancel()
            self.idle.forget(proc)
            self.budget.forget(proc.state)
            del self.channels[key]
        self.trackers.pop(p, None)
        self._retiring.pop(p, None)
        self.paused.discard(TP(self.audio_topic, p))

    async def _on_shutdown(self, app: Any, **_: Any) -> None:
        self.stopping = True
        self.engine.stopping.set()
        self.revisions.stop()
        self.budget.wake()
        criticals = {t for proc in self.channels.values() for t in proc.criticals}
        if criticals:
            await asyncio.wait(criticals, timeout=REVOKE_WAIT_S)
        try:
            await asyncio.wait_for(self.commit(set(self.trackers)), REVOKE_WAIT_S)
        except Exception as exc:
            log.warning("final commit failed", error=repr(exc))
        for proc in self.channels.values():
            if proc.task is not None:
                proc.task.cancel()
        await self.producer.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
