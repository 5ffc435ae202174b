"""Revised transcripts: each channel of an ended call decoded again as a whole.

Once a call's CallSummary is published (:class:`~callscribe.pipeline.publisher.KafkaSink`),
its channels are queued here.  One at a time, for a channel:

1. its audio is read back from the audio topic: the call's partition from the record's
   ``first_offset`` to ``last_offset`` (a plain consumer outside the group, bounded by that
   range and ``kafka_deadline_s`` per fetch), the channel's chunks kept, in ``seq`` order,
   duplicates dropped;
2. in this module's single thread, the chunks are decoded with the audio decoders the live
   path uses and laid on the same stream timeline (holes filled with silence, overlaps
   trimmed, exactly as :meth:`~callscribe.pipeline.calls.ChannelState.feed` does), and the
   channel is decoded whole by :func:`callscribe.transcribe.transcribe_pcm` (what
   ``callscribe transcribe FILE`` runs: VAD clips, beam ``file_beam_size``, hotwords, ITN,
   emotion, language); the sentences are redacted as live finals are
   (:meth:`CallAnalytics.redact` with the call's options) and encoded as
   ``revised_transcript`` records (``sentence_id`` 1..N, ``sentence_count`` N; a channel
   with no speech: one record with sentence 0 of 0);
3. publishing is written ahead (``revising`` in the table record), the records go to the
   transcripts topic (and, unredacted, to the clear-text topic when one is set), then the
   record is marked ``revised`` (kept by ``ChannelRecord.retired``).

Priority: one revision at a time, on the revisions' own copy of the model (loaded at start:
loading holds the GIL, which mid-traffic delayed live finals by seconds), in a thread niced to
19 whose compute threads inherit that, so the kernel runs live decodes first and no live
decode waits for a model worker.  The decode also waits before every 30 s window while live
recognition is behind (:attr:`~callscribe.pipeline.flow.InflightBudget.behind`).  The queue is
bounded (``kafka_worker_revisions_queue``); a channel that finds it full stays in the table (summary
out, not revised) and is queued from there when the queue has drained: never dropped.  The
backlog gauge ``callscribe.worker.revisions_backlog`` counts both.

Exactly once: ``revised`` is set only after the records are delivered.  A worker that dies
before that leaves the record unrevised; the partition's next owner queues every such record
of its partitions once the table is recovered and redoes the revision.  If the record says
``revising`` (the previous owner died while publishing), the redo first reads the call's
transcripts partition from a little before that time: a complete set already there is only
marked; otherwise only the sentences whose idempotency keys are not there are published.
When that check fails (broker unreachable for ``kafka_deadline_s``) the set is published
again with the same keys: consumers dedupe on ``idempotency_key``.  A revoked partition's
running revision is abandoned (its next owner redoes it); a publish in progress is waited
for, like a channel's critical section.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry import metrics

from callscribe.audio import open_decoder
from callscribe.pipeline.calls import MAX_GAP_FILL_MS, MS, SAMPLE_RATE, ChannelRecord
from callscribe.pipeline.codec import (AudioChunk, CodecError, RevisedTranscript,
                                       transcript_from_final)
from callscribe.pipeline.topics import client_kwargs

if TYPE_CHECKING:
    from callscribe.pipeline.worker import PipelineWorker

log = structlog.get_logger("callscribe.worker")
#: the revision number of the whole-channel decode made when a call ends
REVISION = 1
#: how far before its write-ahead time a redo looks for what was published
LOOK_BACK_MS = 10000
#: a failed revision is tried again this many times (then left for the next owner/restart)
ATTEMPTS = 3


class Abandoned(Exception):
    """The revision's partition went away, or the worker stops."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Revisions:
    """The worker's revision queue and its one thread (see the module docstring)."""

    def __init__(self, worker: PipelineWorker) -> None:
        self.worker = worker
        s = worker.settings
        self.enabled = s.kafka_worker_revisions
        if self.enabled and "revised_transcript" not in worker.codec.schemas:
            log.warning("revised transcripts are off: the schema directory has no "
                        "revised_transcript.schema.json", schema_dir=str(worker.codec.schema_dir))
            self.enabled = False
        self.bound = s.kafka_worker_revisions_queue
        self.delay_s = s.kafka_worker_revision_delay_s
        self.queue: deque[tuple[str, int, float]] = deque()  # key, partition, due (loop time)
        self.queued: set[str] = set()
        #: channels not queued because the queue was full (they wait in the table)
        self.spilled = 0
        self.running: tuple[str, int] | None = None
        self.publishing: asyncio.Task | None = None
        self.attempts: dict[str, int] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._whisper: Any = None  # the revisions' own model, loaded in their thread
        if self.enabled:  # at start, not mid-traffic: loading holds the GIL for a while
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="revise")
            self._whisper = self._executor.submit(self._load_model).result()
        self._go = threading.Event()  # set: live recognition keeps up, decode on
        self._cancel = threading.Event()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        m = metrics.get_meter("callscribe")
        self.outcomes = m.create_counter(
            "callscribe.worker.revisions", description="channel revisions by outcome "
            "(published, found_published, too_long, failed)")
        self.sentences = m.create_counter("callscribe.worker.revised_sentences",
                                          description="revised_transcript records published")
        m.create_observable_gauge(
            "callscribe.worker.revisions_backlog", description="ended channels waiting for "
            "(or in) their revised transcript on this worker",
            callbacks=[lambda _o: [metrics.Observation(self.backlog())]])

    def backlog(self) -> int:
        return len(self.queue) + self.spilled + (self.running is not None)

    # --- queueing -----------------------------------------------------------------------------
    def add(self, key: str, rec: ChannelRecord, partition: int) -> None:
        """An ended channel (its call's summary is out): queue its revision unless done."""
        if not self.enabled or not rec.summary or rec.revised or key in self.queued:
            return
        if self.running and self.running[0] == key and not self._cancel.is_set():
            return  # being revised (an abandoned one is queued again)
        if len(self.queue) >= self.bound:
            self.spilled += 1
            return
        loop = asyncio.get_running_loop()
        self.queue.append((key, partition, loop.time() + self.delay_s))
        self.queued.add(key)
        log.info("revision queued", call_id=key.rsplit(":", 1)[0],
                 channel=int(key.rsplit(":", 1)[1]), partition=partition,
                 backlog=self.backlog())
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="revisions")
        assert self._wake is not None
        self._wake.set()

    async def on_recovered(self) -> None:
        """After the table's recovery (a new assignment): queue every ended, unrevised
        channel of my partitions -- how the next owner redoes a revision after a crash."""
        if not self.enabled:
            return
        w = self.worker
        mine = self._mine()
        self.spilled = 0
        for i, key in enumerate(list(w.table.data.keys())):
            proc = w.channels.get(key)
            rec = proc.state.record if proc is not None else w.sink.get_record(key)
            if rec is not None and rec.partition in mine:
                self.add(key, rec, rec.partition)  # counted as spilled when full
            if i % 1000 == 999:
                await asyncio.sleep(0)

    def _mine(self) -> set[int]:
        w = self.worker
        return {tp.partition for tp in w.app.consumer.assignment()
                if tp.topic == w.audio_topic}

    async def revoked(self, lost: set[int], wait_s: float) -> None:
        """Partitions lost: forget their queued channels, abandon a running decode of one,
        wait (at most ``wait_s``) for a publish in progress."""
        for key, p, due in list(self.queue):
            if p in lost:
                self.queue.remove((key, p, due))
                self.queued.discard(key)
        if self.running is not None and self.running[1] in lost:
            self._cancel.set()
            if self.publishing is not None:
                await asyncio.wait({self.publishing}, timeout=wait_s)

    def stop(self) -> None:
        self._cancel.set()
        if self._task is not None:
            self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self.queue:
                if self.spilled:  # the queue drained: take the rest from the table
                    await self.on_recovered()
                    continue
                self._wake.clear()
                await self._wake.wait()
                continue
            key, p, due = self.queue[0]
            if due > loop.time():
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), due - loop.time())
                except TimeoutError:
                    pass
                continue
            self.queue.popleft()
            self.queued.discard(key)
            if p not in self._mine():
                continue
            self.running = (key, p)
            self._cancel.clear()
            try:
                await self._revise(key, p)
                self.attempts.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Abandoned:
                log.info("revision abandoned (partition revoked)", key=key)
            except Exception as exc:
                n = self.attempts[key] = self.attempts.get(key, 0) + 1
                log.warning("revision failed", key=key, attempt=n, error=repr(exc),
                            exc_info=n >= ATTEMPTS)
                if n < ATTEMPTS:
                    self.queue.append((key, p, loop.time() + 5.0 * n))
                    self.queued.add(key)
                else:
                    self.attempts.pop(key, None)
                    self.outcomes.add(1, {"outcome": "failed"})
            finally:
                self.running = None

    def _record(self, key: str) -> ChannelRecord | None:
        proc = self.worker.channels.get(key)
        return proc.state.record if proc is not None else self.worker.sink.get_record(key)

    async def _revise(self, key: str, p: int) -> None:
        w = self.worker
        rec = self._record(key)
        if rec is None or rec.revised or not rec.summary:
            return
        call_id, ch = key.rsplit(":", 1)[0], int(key.rsplit(":", 1)[1])
        lg = log.bind(call_id=call_id, channel=ch, partition=p)
        prefix = f"{call_id}:{ch}:r{REVISION}:"
        out: dict[str, RevisedTranscript] = {}
        if rec.revising is not None:  # the previous owner died while publishing
            try:
                found = await w.sink.published(
                    call_id, rec.revising - LOOK_BACK_MS,
                    lambda r: isinstance(r, RevisedTranscript)
                    and r.idempotency_key.startswith(prefix))
            except Exception as exc:  # unknown: publish all (same keys)
                lg.warning("could not check the transcripts topic", error=repr(exc))
                found = []
            out = {r.idempotency_key: r for r in found}
            if found and len(out) == max(1, found[0].sentence_count):
                lg.info("the previous owner published the revision", sentences=len(out))
                await self._publish(key, p, [], set(out), lg, outcome="found_published")
                return
        lg.info("revision started", first_offset=rec.first_offset,
                last_offset=rec.last_offset, duration_ms=rec.duration_ms)
        chunks = await self._read_audio(call_id, ch, p, rec)
        if chunks is None:
            lg.warning("channel too long to revise; no revised transcript",
                       max_audio_s=w.settings.kafka_worker_revision_max_audio_s)
            await self._publish(key, p, [], set(), lg, outcome="too_long")
            return
        loop = asyncio.get_running_loop()
        gate = loop.create_task(self._gate())
        try:
            values = await loop.run_in_executor(self._executor, self._decode, call_id, ch,
                                                rec, chunks)
        finally:
            gate.cancel()
        if p not in self._mine() or self._cancel.is_set():
            raise Abandoned
        await self._publish(key, p, values, set(out), lg, outcome="published")

    async def _gate(self) -> None:
        """Open the decode's gate while live recognition keeps up (re-checked after every
        live processing step, and at least every second)."""
        budget = self.worker.budget
        while True:
            if budget.behind:
                self._go.clear()
            else:
                self._go.set()
            await budget.changed(1.0)

    def _pace(self) -> None:
        """In the revision thread, before each window: wait while live is behind."""
        while True:
            if self._cancel.is_set():
                raise Abandoned
            if self._go.wait(0.5):
                return

    # --- reading the audio back ------------------------------------------------------------
    async def _read_audio(self, call_id: str, ch: int, p: int, rec: ChannelRecord
                          ) -> list[AudioChunk] | None:
        """The channel's chunks at offsets first..last of the call's partition, in seq order
        (None: longer than ``kafka_worker_revision_max_audio_s``)."""
        w, s = self.worker, self.worker.settings
        tp = TopicPartition(w.audio_topic, p)
        first, last = max(0, rec.first_offset), rec.last_offset
        limit_ms = s.kafka_worker_revision_max_audio_s * 1000
        consumer = AIOKafkaConsumer(**client_kwargs(s, w.bootstrap), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="none",
                                    client_id=f"{s.kafka_client_id}-revise")
        chunks: dict[int, AudioChunk] = {}
        key = call_id.encode()
        try:
            await asyncio.wait_for(consumer.start(), s.kafka_deadline_s)
            consumer.assign([tp])
            consumer.seek(tp, first)
            while await consumer.position(tp) <= last:
                if self._cancel.is_set() or p not in self._mine():
                    raise Abandoned
                batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000),
                                               s.kafka_deadline_s)
                for i, r in enumerate(batch.get(tp, [])):
                    if r.offset > last:
                        break
                    if r.key != key:
                        continue
                    try:
                        c = w.codec.decode(r.value, expect=AudioChunk)
                    except CodecError:
                        continue  # dead-lettered when it came in
                    if c.channel == ch and c.call_id == call_id:
                        chunks.setdefault(c.seq, c)
                        if c.offset_ms > limit_ms:
                            return None
                    if i % 100 == 99:
                        await asyncio.sleep(0)
        finally:
            await consumer.stop()
        return [chunks[q] for q in sorted(chunks)]

    # --- in the revision thread ------------------------------------------------------------
    def _decode(self, call_id: str, ch: int, rec: ChannelRecord,
                chunks: list[AudioChunk]) -> list[tuple[str, bytes, bytes | None]]:
        """Chunks -> audio -> whole decode -> encoded records (key, redacted, clear)."""
        from callscribe.transcribe import transcribe_pcm

        w = self.worker
        audio, base = assemble(chunks)
        finals = transcribe_pcm(w.runtime, audio, rec.stream_options(), pace=self._pace,
                                whisper=self._whisper)
        now = now_ms()
        n = len(finals)
        out = []
        for i, f in enumerate(finals, 1):
            f = replace(f, sentence_id=i, begin_time=f.begin_time + base,
                        end_time=f.end_time + base,
                        words=tuple(replace(x, begin_time=x.begin_time + base,
                                            end_time=x.end_time + base) for x in f.words))
            clear = transcript_from_final(call_id, ch, rec.role, f, w.engine_name, w.model_name,
                                          created_at_ms=now)
            out.append(self._records(clear, w.analytics.redact(clear, rec.options), i, n))
        if not out:  # nothing heard: an empty revision, so the set is still complete
            empty = transcript_from_final(call_id, ch, rec.role, _nothing(rec), w.engine_name,
                                          w.model_name, created_at_ms=now)
            out.append(self._records(empty, empty, 0, 0))
        return out

    def _load_model(self) -> Any:
        """A copy of the model for revisions alone, at the lowest CPU priority: this thread
        is niced to 19 first (on Linux a thread's nice value is its own) and the model's
        compute threads, created by it, inherit that; so the kernel runs live decodes first
        and a revision never takes one of the live model's workers."""
        from faster_whisper import WhisperModel

        from callscribe.asr.models import resolve_model_dir

        s = self.worker.settings
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError) as exc:  # not Linux: same priority as live
            log.warning("revisions run at normal CPU priority", error=repr(exc))
        model_dir = resolve_model_dir(s.model_dir, s.cache_dir)
        model = WhisperModel(str(model_dir), device="cpu", compute_type=s.compute_type,
                             cpu_threads=s.cpu_threads, num_workers=1, local_files_only=True)
        log.info("revision model loaded", model=model_dir.name,
                 nice=os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return model

    def _records(self, clear: Any, redacted: Any, sid: int, n: int
                 ) -> tuple[str, bytes, bytes | None]:
        key = f"{clear.call_id}:{clear.channel}:r{REVISION}:{sid}"

        def revised(ev: Any) -> RevisedTranscript:
            return RevisedTranscript(
                call_id=ev.call_id, channel=ev.channel, role=ev.role, revision=REVISION,
                sentence_id=sid, sentence_count=n, begin_ms=ev.begin_ms, end_ms=ev.end_ms,
                text=ev.text, words=ev.words, language=ev.language, emotion=ev.emotion,
                engine=ev.engine, model=ev.model, idempotency_key=key,
                created_at_ms=ev.created_at_ms, redaction=ev.redaction)
        codec = self.worker.codec
        return (key, codec.encode(revised(redacted)),
                codec.encode(revised(clear)) if self.worker.analytics.clear_topic else None)

    # --- publishing ------------------------------------------------------------------------
    async def _publish(self, key: str, p: int, values: list[tuple[str, bytes, bytes | None]],
                       skip: set[str], lg: Any, *, outcome: str) -> None:
        """Write ahead, publish what is not out yet, mark revised: a critical section (a
        revocation waits for it; cancelling the loop does not cut it)."""
        self.publishing = asyncio.ensure_future(self._publish_now(key, p, values, skip))
        try:
            n = await asyncio.shield(self.publishing)
        finally:
            self.publishing = None
        self.outcomes.add(1, {"outcome": outcome})
        self.sentences.add(n)
        lg.info("revision published" if outcome == "published" else "revision done",
                outcome=outcome, sentences=len(values), published=n)

    async def _publish_now(self, key: str, p: int,
                           values: list[tuple[str, bytes, bytes | None]], skip: set[str]) -> int:
        w = self.worker
        rec = self._record(key)  # again: the live record may have been retired meanwhile
        if rec is None or rec.revised:
            return 0
        call = key.rsplit(":", 1)[0].encode()
        sent = 0
        if values:
            if rec.revising is None:
                rec.revising = now_ms()
                await w.sink.put_record(key, p, rec)
            for k, value, clear in values:
                if k in skip:
                    continue
                await w.producer.send(w.settings.kafka_topic_transcripts, value, key=call)
                if clear is not None:
                    await w.producer.send(w.settings.kafka_topic_clear_transcripts, clear,
                                          key=call)
                sent += 1
        rec = self._record(key) or rec
        rec.revised, rec.revising = True, None
        if key not in w.channels:  # retired: the options are no longer needed
            rec.options = None
        await w.sink.put_record(key, p, rec)
        return sent


def _nothing(rec: ChannelRecord) -> Any:
    from callscribe.recognition.events import FinalSentence

    return FinalSentence(0, 0, max(0, rec.duration_ms), "", (), None)


def assemble(chunks: list[AudioChunk]) -> tuple[np.ndarray, int]:
    """A channel's chunks (in seq order) as one float PCM array at 16 kHz and the stream time
    (ms) of its first sample: holes filled with silence (at most ``MAX_GAP_FILL_MS``) and
    overlaps trimmed, as the live path feeds them, so revised times match live times."""
    parts: list[np.ndarray] = []
    decoder: Any = None
    fmt: tuple[str, int] | None = None
    fed: int | None = None
    base = 0
    for c in chunks:
        if c.format == "pcm" and c.sample_rate == SAMPLE_RATE:
            pcm = np.frombuffer(c.payload, "<i2").astype(np.float32) / np.float32(32768.0)
        else:
            if fmt != (c.format, c.sample_rate):
                decoder = open_decoder(c.format, c.sample_rate, target_rate=SAMPLE_RATE)
                fmt = (c.format, c.sample_rate)
            pcm = np.asarray(decoder.feed(c.payload), np.float32).reshape(-1)
        if not len(pcm):
            continue
        start = c.offset_ms if fed is None else max(c.offset_ms, fed)
        pcm = pcm[(start - c.offset_ms) * MS:]
        if fed is not None and start > fed:
            gap = min(start - fed, MAX_GAP_FILL_MS)
            pcm = np.concatenate([np.zeros(gap * MS, np.float32), pcm])
            start -= gap
        if fed is None:
            base = start
        if len(pcm):
            parts.append(pcm)
            fed = start + len(pcm) // MS
    if decoder is not None:
        tail = decoder.finish()
        if tail is not None and np.size(tail):
            parts.append(np.asarray(tail, np.float32).reshape(-1))
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), base
