"""The gateway side of ``callscribe serve --kafka``: WebSocket sessions over the pipeline.

:class:`KafkaPipeline` stands in for the recognition runtime of the gateway (``open_stream``,
``ready``); its :class:`KafkaStream` has the interface of
:class:`~callscribe.recognition.runtime.AsyncStream` (``put``, ``finish``, ``events``,
``aclose``, ``audio_ms``), so the protocols and the gateway do not know the difference.
The gateway decodes the client's audio (any format, so a corrupt frame still fails the task
at once), sends it as 100 ms 16 kHz PCM AudioChunks keyed by the stream's call id, and the
workers' results come back as recognition events.

How results find their gateway.  A task's call id is ``<task_id>.<random>`` (unique even when
a client reuses a task id).  Every gateway process runs one consumer *without a group*,
assigned every partition of the transcripts and partials topics from their end (positions
pinned before the first task starts), and hands each record to the stream whose call id is
the record key; records of other gateways' calls are skipped on the key, before decoding.
No reply topic per gateway, no routing state, nothing to clean up when a gateway dies.

What that costs.  Every gateway reads every result.  A final is ~900 bytes of msgpack (ten
words with their times), a partial ~380.  A call-centre channel says a sentence every ~4 s
and, while talking (~half the time), gets a partial every second: ~0.25 finals/s and ~0.5
partials/s, about 0.75 records/s and 0.4 kB/s per connection.  At 1,000 connections that is
~750 records/s and ~0.4 MB/s into each gateway: negligible.  At 10,000 connections it is
~7,500 records/s and ~4 MB/s into *each* gateway; with G gateways of 500 connections
(G = 20) the brokers serve ~80 MB/s of fetches and each gateway throws away 95% of what it
reads (a dict lookup on the key, ~1 us a record, ~1% of a core).  Fine up to a few thousand
connections per cluster; beyond, give each gateway its own slice: pick call ids whose
partition (murmur2 of the key, as the producer computes it) is one of the gateway's
partitions and assign only those -- the same code with a filtered assignment -- which brings
the fan-out back to one.

Backpressure: ``put`` waits while the producer has ``kafka_max_pending`` records
unacknowledged (Kafka is the buffer; the worker bounds its own memory).  After ``finish`` the
stream waits ``kafka_result_timeout_s`` for the call's summary, then fails with
``PipelineTimeout`` (no worker running, say).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import structlog
from opentelemetry import metrics
from aiokafka import AIOKafkaConsumer, TopicPartition

from callscribe.audio import open_decoder, select_channel
from callscribe.errors import (KafkaFailure, Overloaded, PipelineTimeout,
                               SessionError, for_code)
from callscribe.pipeline.codec import (AudioChunk, AudioOptions, CallSummary, Codec,
                                       CodecError, HotwordOption, TranscriptEvent)
from callscribe.pipeline.producer import AudioProducer
from callscribe.pipeline.topics import check_topics, client_kwargs
from callscribe.recognition.events import Emotion, FinalSentence, Partial, Word
from callscribe.settings import Settings

log = structlog.get_logger("callscribe.gateway.kafka")
_END = object()
RATE = 16000


class KafkaPipeline:
    """One per gateway process: the audio producer and the results consumer."""

    def __init__(self, settings: Settings, bootstrap: str | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.codec = Codec.from_settings(settings)
        self.producer = AudioProducer(settings, bootstrap=bootstrap, codec=self.codec)
        self.streams: dict[bytes, KafkaStream] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self.ready = False
        self._hop_out = metrics.get_meter("callscribe").create_histogram(
            "callscribe.kafka.hop.worker_to_gateway", unit="ms",
            description="a result record's Kafka timestamp (worker published) to this gateway "
                        "receiving it")

    async def start(self) -> None:
        s = self.settings
        roles = ("audio", "transcripts", "partials") if s.kafka_partials_enabled else \
            ("audio", "transcripts")
        await check_topics(self.bootstrap, s, roles=roles)  # `callscribe topics create` makes them
        await self.producer.start()
        topics = [s.kafka_topic_transcripts]
        if s.kafka_partials_enabled:
            topics.append(s.kafka_topic_partials)
        consumer = AIOKafkaConsumer(**client_kwargs(s, self.bootstrap), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="latest",
                                    client_id=f"{s.kafka_client_id}-gateway")
        counts = await topic_partitions(s, self.bootstrap, topics)
        tps = [TopicPartition(t, p) for t in topics for p in range(counts[t])]
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:  # pin the positions: no result of a later task can be missed
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.get_running_loop().create_task(self._dispatch())
        self.ready = True
        log.info("kafka pipeline ready", bootstrap=self.producer.bootstrap, results=topics,
                 partitions=len(tps))

    async def aclose(self) -> None:
        self.ready = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        await self.producer.stop(abort=True)

    def close(self) -> None:
        """The runtime's synchronous close (serve calls ``aclose`` instead)."""
        self.ready = False

    def open_stream(self, opts: Any) -> KafkaStream:
        if not self.ready:
            raise Overloaded("the Kafka pipeline is not connected")
        if not opts.endpointing:
            raise SessionError("manual commits (turn_detection null) are not supported by "
                               "the Kafka pipeline; use server VAD")
        stream = KafkaStream(self, opts)
        self.streams[stream.key] = stream
        return stream

    async def _dispatch(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker outage: aiokafka reconnects on its own
                log.warning("results consumer error", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for r in records:
                    stream = self.streams.get(r.key)
                    if stream is None:
                        continue  # another gateway's call, or one that has ended
                    if r.timestamp:  # aiokafka gives ms: the worker published it then
                        self._hop_out.record(max(0.0, time.time() * 1000 - r.timestamp))
                    try:
                        stream.deliver(self.codec.decode(r.value))
                    except CodecError as exc:
                        log.warning("unreadable result skipped", call_id=stream.call_id,
                                    error=exc.reason)


async def topic_partitions(settings: Settings, bootstrap: str | None,
                           topics: list[str]) -> dict[str, int]:
    """The partition count of each topic (they must exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_kwargs(settings, bootstrap),
                                client_id=f"{settings.kafka_client_id}-admin")
    await admin.start()
    try:
        meta = await admin.describe_topics(topics)
    finally:
        await admin.close()
    out = {m["topic"]: len(m.get("partitions") or ()) for m in meta}
    missing = [t for t in topics if not out.get(t)]
    if missing:
        raise KafkaFailure(f"Kafka topics {missing} do not exist")
    return out


def _call_id(task_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._:-]", "_", task_id)[:64] or "task"
    return f"{safe}.{uuid.uuid4().hex[:12]}"


class KafkaStream:
    """One task's audio into Kafka and its results back; AsyncStream's interface."""

    def __init__(self, pipeline: KafkaPipeline, opts: Any) -> None:
        self.pipeline = pipeline
        task_id = (opts.extra or {}).get("task_id") or \
            structlog.contextvars.get_contextvars().get("task_id") or "ws"
        self.call_id = _call_id(str(task_id))
        self.key = self.call_id.encode()
        self.channel = opts.channel
        self.decoder = open_decoder(opts.format, opts.sample_rate, target_rate=RATE,
                                    max_feed_ms=pipeline.settings.max_buffered_audio_ms)
        self.options = AudioOptions(
            language_hints=tuple(h for h in opts.language_hints if h),
            max_sentence_silence_ms=opts.max_sentence_silence_ms, itn=opts.itn,
            disfluency_removal=opts.disfluency_removal or None, partials=opts.partials,
            emotion=opts.emotion, context=opts.context[:4000] if opts.context else None,
            hotwords=tuple(HotwordOption(h.text, int(h.weight), h.lang or None)
                           for h in opts.hotwords) or None)
        self.chunk_samples = RATE * pipeline.settings.kafka_chunk_ms // 1000
        self._buf = np.zeros(0, np.int16)
        self._seq = 0
        self._samples = 0  # put so far
        self._sent = 0  # samples sent so far
        self._events: asyncio.Queue = asyncio.Queue()
        self._finished = False
        self._closed = False
        self._last_final = 0
        self._deadline: float | None = None
        #: the task's trace context: the chunks' headers carry it to the worker
        self.trace_context: Any = None
        self.log = log.bind(call_id=self.call_id)
        self.log.info("task audio goes to the pipeline", task_id=task_id)

    @property
    def audio_ms(self) -> int:
        return self._samples * 1000 // RATE

    # --- audio out ----------------------------------------------------------------------------
    def _mono(self, pcm: np.ndarray) -> np.ndarray:
        return select_channel(pcm, self.channel)

    async def put(self, data: bytes) -> None:
        if self._finished:
            raise SessionError("audio after finish")
        pcm = self._mono(await asyncio.to_thread(self.decoder.feed, data))  # never on the loop
        await self._queue(pcm)

    async def _queue(self, pcm: np.ndarray) -> None:
        if len(pcm):
            ints = np.clip(np.round(pcm * 32768.0), -32768, 32767).astype("<i2")
            self._buf = np.concatenate([self._buf, ints])
            self._samples += len(ints)
        while len(self._buf) >= self.chunk_samples:
            piece, self._buf = self._buf[:self.chunk_samples], self._buf[self.chunk_samples:]
            await self._send(piece.tobytes())

    async def _send(self, payload: bytes, eos: bool = False) -> None:
        chunk = AudioChunk(
            call_id=self.call_id, channel=0, role="mixed", seq=self._seq,
            capture_time_ms=int(time.time() * 1000), offset_ms=self._sent * 1000 // RATE,
            format="pcm", sample_rate=RATE, payload=payload, end_of_stream=eos,
            options=self.options if self._seq == 0 else None)
        await self.pipeline.producer.send(chunk, context=self.trace_context)
        self._seq += 1
        self._sent += len(payload) // 2

    async def finish(self) -> None:
        if self._finished:
            return
        await self._queue(self._mono(self.decoder.finish()))
        self._finished = True
        if len(self._buf):
            piece, self._buf = self._buf, np.zeros(0, np.int16)
            await self._send(piece.tobytes())
        await self._send(b"", eos=True)
        self._deadline = asyncio.get_running_loop().time() + \
            self.pipeline.settings.kafka_result_timeout_s

    async def commit(self, discard: bool = False) -> None:
        raise SessionError("commit is not supported by the Kafka pipeline")

    # --- results in ---------------------------------------------------------------------------
    def deliver(self, record: Any) -> None:
        """A record of this call from the results consumer (called on the loop)."""
        if isinstance(record, CallSummary):
            self._events.put_nowait(_END)
            self.pipeline.streams.pop(self.key, None)
            return
        if not isinstance(record, TranscriptEvent):
            return
        if record.error is not None:
            self._events.put_nowait(for_code(record.error.code,
                                             f"recognition failed: {record.error.message}"))
            return
        if record.sentence_id <= self._last_final:
            return  # a replayed partial, or a final delivered twice
        if record.final:
            self._last_final = record.sentence_id
            e = record.emotion
            self._events.put_nowait(FinalSentence(
                record.sentence_id, record.begin_ms, record.end_ms, record.text,
                tuple(Word(w.begin_ms, w.end_ms, w.text, w.punctuation) for w in record.words),
                record.language,
                None if e is None else Emotion(e.polarity, e.confidence, e.label, e.source)))
        else:
            settled = record.settled or ""
            self._events.put_nowait(Partial(record.sentence_id, record.begin_ms, record.end_ms,
                                            settled, record.text[len(settled):],
                                            record.language))

    async def events(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        while True:
            if self._deadline is None:
                item = await self._events.get()
            else:
                try:
                    item = await asyncio.wait_for(self._events.get(),
                                                  max(0.0, self._deadline - loop.time()))
                except TimeoutError:
                    raise PipelineTimeout(
                        f"the pipeline workers did not finish call {self.call_id} within "
                        f"{self.pipeline.settings.kafka_result_timeout_s:g} s of the end of "
                        "input") from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        """Forget the stream; a task abandoned mid-way still ends its call for the worker."""
        if self._closed:
            return
        self._closed = True
        self.pipeline.streams.pop(self.key, None)
        if not self._finished:
            self._finished = True
            try:
                await asyncio.wait_for(self._send(b"", eos=True), 5.0)
            except Exception as exc:  # the worker closes the call when it goes idle
                self.log.info("end of stream not sent for an abandoned task", error=repr(exc))
