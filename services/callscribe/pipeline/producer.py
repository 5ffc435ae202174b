"""Audio into Kafka: :class:`AudioProducer` (one connection, many calls) and :func:`produce_file`.

Delivery guarantees.  The producer is idempotent (``enable_idempotence``, ``acks=all``): the
broker drops the duplicates of its own retries, so within one producer session a channel's
chunks land once and in order.  Every send has a deadline (``kafka_deadline_s``): a record not
acknowledged in time fails the producer with :class:`BrokerUnavailable`, which says which
broker and what went wrong last.  Retriable errors are retried with exponential backoff until
then; aiokafka itself keeps retrying batches in flight.  At most ``kafka_max_pending`` records
wait for their acknowledgement (the bounded buffer); a full buffer makes :meth:`send` wait.
A new producer after a failure (or a restarted run of the same file) may repeat chunks that did
land: consumers drop a (call_id, channel, seq) they have already seen.

``produce_file`` decodes a recording of any supported format, splits its channels and sends
each as its own stream of ~100 ms 16-bit PCM chunks at 8 kHz (8 kHz sources) or 16 kHz
(everything else), see ``schemas/audio_chunk.schema.json``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from opentelemetry import trace
from opentelemetry.context import Context

from callscribe.audio import open_decoder, sniff_format
from callscribe.errors import (CallscribeError, ConfigurationError, KafkaFailure,
                               UnsupportedFormat)
from callscribe.pipeline.codec import AudioChunk, AudioOptions, Codec
from callscribe.pipeline.topics import (
    MAX_BACKOFF_S,
    BrokerUnavailable,
    abort_producer,
    client_kwargs,
    close_quietly,
    describe_bootstrap,
    is_retriable,
    mark_seen,
    raise_if_refused,
)
from callscribe.settings import Settings
from callscribe.tracing import with_trace_headers

__all__ = ["AudioProducer", "BrokerUnavailable", "ProduceReport", "default_roles", "produce_file"]

log = structlog.get_logger(__name__)

_HEADERS = [("record-type", b"audio_chunk"), ("schema-version", b"1")]
_BLOCK = 1 << 16  # bytes of the file decoded at a time


class AudioProducer:
    """AudioChunk records into the audio topic, keyed by call_id.

    Use as ``async with AudioProducer(settings) as p: await p.send(chunk)``; leaving the block
    normally waits for every acknowledgement (:meth:`flush`), leaving it on an error aborts.
    """

    def __init__(self, settings: Settings, *, bootstrap: str | None = None,
                 topic: str | None = None, deadline_s: float | None = None,
                 max_pending: int | None = None, codec: Codec | None = None) -> None:
        self.settings = settings
        self.topic = topic or settings.kafka_topic_audio
        self.deadline_s = settings.kafka_deadline_s if deadline_s is None else deadline_s
        self.max_pending = max_pending or settings.kafka_max_pending
        self.codec = codec or Codec.from_settings(settings)
        self._kw = client_kwargs(settings, bootstrap)
        self.bootstrap = describe_bootstrap(self._kw)
        self._producer: AIOKafkaProducer | None = None
        self._sem = asyncio.Semaphore(self.max_pending)
        self._pending: set[asyncio.Task] = set()
        self._failure: BaseException | None = None
        #: records acknowledged, bytes sent
        self.acked = 0
        self.bytes_sent = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (retrying with backoff); BrokerUnavailable after the deadline."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline_s
        backoff = self.settings.kafka_retry_backoff_ms / 1000
        last: BaseException | None = None
        while (remaining := end - loop.time()) > 0:
            producer = AIOKafkaProducer(
                **self._kw, client_id=f"{self.settings.kafka_client_id}-producer",
                acks="all", enable_idempotence=True, linger_ms=self.settings.kafka_linger_ms,
                # aiokafka queues one open batch per partition: a big one rides out an outage
                # (~16 s of 16 kHz stereo) before send() has to wait
                max_batch_size=1 << 20,
                request_timeout_ms=max(1000, int(self.deadline_s * 1000)),
                retry_backoff_ms=self.settings.kafka_retry_backoff_ms)
            try:
                await asyncio.wait_for(producer.start(), remaining)
                # the topic must exist (ensure_topics); its metadata also proves the broker works
                await asyncio.wait_for(producer.partitions_for(self.topic), end - loop.time())
                self._producer = producer
                return
            except (KafkaError, OSError) as exc:  # OSError includes TimeoutError
                await close_quietly(producer)
                if not is_retriable(exc):
                    raise KafkaFailure(f"Kafka at {self.bootstrap} refused the producer: "
                                       f"{exc!r}") from None
                last = exc
                if isinstance(exc, KafkaConnectionError):  # learn why, fail fast if it lasts
                    await raise_if_refused(self._kw, min(5.0, max(0.1, end - loop.time())))
            except BaseException:
                await close_quietly(producer)
                raise
            await asyncio.sleep(min(backoff, max(0.0, end - loop.time())))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        raise BrokerUnavailable(
            f"Kafka at {self.bootstrap} did not answer within {self.deadline_s:g} s (last error: "
            f"{last!r}); is the broker running and reachable, and does topic {self.topic!r} "
            "exist (create the topics with `callscribe topics create`)?")

    async def stop(self, *, abort: bool = False) -> None:
        """Wait for every acknowledgement (at most the deadline each), then close.

        ``abort``, or an earlier failure: drop what is not acknowledged and close at once.
        """
        if self._producer is None:
            return
        try:
            if not abort and self._failure is None:
                await self.flush()
        finally:
            producer, self._producer = self._producer, None
            if abort or self._failure is not None:
                for task in list(self._pending):
                    task.cancel()
                await abort_producer(producer,
                                     self._failure or BrokerUnavailable("producer aborted"))
            await close_quietly(producer, timeout=self.deadline_s + 5)

    async def __aenter__(self) -> AudioProducer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.stop(abort=exc_type is not None)

    # -- sending ---------------------------------------------------------------------------
    async def send(self, chunk: AudioChunk, *, context: Context | None = None) -> None:
        """Queue one chunk; returns once it is handed to the client (not yet acknowledged).

        The record's headers carry the trace context ``context`` (default: the current one),
        so the worker's spans for this audio join the caller's trace.

        Raises CodecError for a record that breaks the schema, BrokerUnavailable when this or an
        earlier record was not acknowledged within the deadline.
        """
        self._raise_failure()
        if self._producer is None:
            raise CallscribeError("AudioProducer used before start()")
        value = self.codec.encode(chunk)
        headers = with_trace_headers(_HEADERS, context)
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + self.deadline_s
        what = f"call {chunk.call_id} channel {chunk.channel} seq {chunk.seq}"
        try:
            await asyncio.wait_for(self._sem.acquire(), self.deadline_s)
        except TimeoutError:
            raise self._fail(BrokerUnavailable(
                f"Kafka at {self.bootstrap} acknowledged none of {self.max_pending} pending "
                f"records within {self.deadline_s:g} s (waiting to send {what})")) from None
        try:
            self._raise_failure()  # an earlier record failed while this one waited for room
            fut = await self._append(chunk.key, value, headers, chunk.capture_time_ms,
                                     deadline_at, what)
        except BaseException:
            self._sem.release()
            raise
        self.bytes_sent += len(value)
        task = loop.create_task(self._await_ack(fut, chunk.key, value, headers,
                                                chunk.capture_time_ms, deadline_at, what))
        self._pending.add(task)
        task.add_done_callback(self._ack_done)

    async def partition_for(self, call_id: str) -> int:
        """The audio topic's partition for a call (the client's murmur2 key partitioner)."""
        if self._producer is None:
            raise CallscribeError("AudioProducer used before start()")
        parts = sorted(await self._producer.partitions_for(self.topic))
        return DefaultPartitioner()(call_id.encode(), parts, parts)

    async def flush(self) -> None:
        """Wait until everything sent is acknowledged; raise the first failure."""
        while self._pending:
            await asyncio.wait(list(self._pending))
        self._raise_failure()

    async def _append(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]],
                      ts: int, deadline_at: float, what: str) -> asyncio.Future:
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        backoff = self.settings.kafka_retry_backoff_ms / 1000
        last: BaseException | None = None
        while (remaining := deadline_at - loop.time()) > 0:
            try:
                fut = await asyncio.wait_for(
                    # no timestamp_ms: the record's timestamp is when it was produced
                    # (the worker's produce -> worker hop), not the audio's capture time
                    self._producer.send(self.topic, value, key=key, headers=headers),
                    remaining)
                fut.add_done_callback(mark_seen)
                return fut
            except TimeoutError as exc:
                last = exc
                break
            except KafkaError as exc:
                self._give_up_unless_retriable(exc, what)
                last = exc
            await asyncio.sleep(min(backoff, max(0.0, deadline_at - loop.time())))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        raise self._fail(self._unavailable(what, last))

    async def _await_ack(self, fut: asyncio.Future, key: bytes, value: bytes,
                         headers: list[tuple[str, bytes]], ts: int, deadline_at: float,
                         what: str) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.settings.kafka_retry_backoff_ms / 1000
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline_at - loop.time()))
            except TimeoutError:
                raise self._fail(self._unavailable(what, None)) from None
            except KafkaError as exc:
                self._give_up_unless_retriable(exc, what)
                log.warning("kafka send failed, retrying", record=what, error=repr(exc))
                await asyncio.sleep(min(backoff, max(0.0, deadline_at - loop.time())))
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                fut = await self._append(key, value, headers, ts, deadline_at, what)
                continue
            self.acked += 1
            return

    def _ack_done(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        self._sem.release()
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    def _unavailable(self, what: str, last: BaseException | None) -> BrokerUnavailable:
        cause = f" (last error: {last!r})" if last is not None and str(last) else ""
        return BrokerUnavailable(
            f"Kafka at {self.bootstrap} did not acknowledge {what} on topic {self.topic!r} "
            f"within the {self.deadline_s:g} s deadline{cause}; is the broker running and "
            "reachable?")

    def _give_up_unless_retriable(self, exc: KafkaError, what: str) -> None:
        if not is_retriable(exc):  # e.g. a record too large, an authorisation error
            raise self._fail(KafkaFailure(f"Kafka at {self.bootstrap} rejected {what}: "
                                          f"{exc!r}")) from exc

    def _fail(self, exc: BaseException) -> BaseException:
        if self._failure is None:
            self._failure = exc
        return exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


# --- files -------------------------------------------------------------------------------

_EXT = {".wav": "wav", ".mp3": "mp3", ".opus": "opus", ".spx": "speex", ".aac": "aac",
        ".m4a": "m4a", ".mp4": "m4a", ".amr": "amr", ".flac": "flac", ".pcm": "pcm",
        ".raw": "pcm", ".s16le": "pcm", ".ulaw": "mulaw", ".mulaw": "mulaw", ".alaw": "alaw"}
_RAW = {"pcm", "mulaw", "alaw"}


@dataclass
class ProduceReport:
    call_id: str
    topic: str
    roles: tuple[str, ...]  # by channel; "" for a skipped channel
    sample_rate: int
    chunks: list[int]  # per channel, end-of-stream included
    audio_ms: list[int]  # per channel
    partition: int  # of the audio topic: the call_id's
    bytes_sent: int
    elapsed_s: float


def default_roles(channels: int) -> tuple[str, ...]:
    """mono: "mixed" (both parties); stereo: agent left, customer right; more: ch0, ch1, ..."""
    if channels == 1:
        return ("mixed",)
    if channels == 2:
        return ("agent", "customer")
    return tuple(f"ch{i}" for i in range(channels))


def _guess_format(path: Path, audio_format: str | None) -> str:
    if audio_format:
        return audio_format
    with open(path, "rb") as f:
        fmt = sniff_format(f.read(4096))
    fmt = fmt or _EXT.get(path.suffix.lower())
    if not fmt:
        raise UnsupportedFormat(f"cannot tell the audio format of {path}; pass --audio-format")
    return fmt


def _source_rate(path: Path, fmt: str, rate: int | None) -> int | None:
    """The file's own sample rate, from as little of it as tells (None: not known early)."""
    if rate is not None:
        return rate
    dec = open_decoder(fmt)
    with open(path, "rb") as f:
        for _ in range(16):
            block = f.read(_BLOCK)
            if not block:
                break
            dec.feed(block)
            if dec.source_rate:
                return dec.source_rate
    return dec.source_rate


def _pcm_pieces(path: Path, fmt: str, raw_rate: int | None, raw_channels: int | None,
                target: int, step: int, info: dict[str, int]) -> Iterator[np.ndarray]:
    """int16 ``(channels, step)`` pieces of the decoded file (the last may be shorter)."""
    dec = open_decoder(fmt, raw_rate, raw_channels, target_rate=target)
    rest: np.ndarray | None = None
    with open(path, "rb") as f:
        for block in itertools.chain(iter(lambda: f.read(_BLOCK), b""), [None]):  # None: end
            x = dec.feed(block) if block is not None else dec.finish()
            info["channels"] = dec.channels or 0
            if x.shape[1] == 0 and block is not None:
                continue
            pcm = np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2")
            buf = pcm if rest is None else np.concatenate([rest, pcm], axis=1)
            cut = buf.shape[1] if block is None else buf.shape[1] // step * step
            for i in range(0, cut, step):
                yield buf[:, i:i + step]
            rest = buf[:, cut:]


async def produce_file(path: str | Path, call_id: str,
                       channels_roles: Sequence[str] | None = None, realtime: bool = False, *,
                       settings: Settings, bootstrap: str | None = None,
                       audio_format: str | None = None, sample_rate: int | None = None,
                       options: AudioOptions | None = None, producer: AudioProducer | None = None,
                       chunk_ms: int | None = None,
                       clock: Callable[[], float] = time.time) -> ProduceReport:
    """Stream a recording into the audio topic, each channel as its own stream.

    ``channels_roles`` names the role of each channel in order ("-" or "" skips a channel);
    default :func:`default_roles`; for headerless pcm/mulaw/alaw (``sample_rate``, default
    16000) it also says how many channels are interleaved.  ``realtime`` paces the chunks at
    the speed of speech.  ``options`` go on each channel's first chunk.  A given ``producer``
    stays open (flushed); otherwise one is made and closed here.  Raises ConfigurationError,
    AudioError, CodecError (a call_id or role the schema refuses) or BrokerUnavailable.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such file")
    fmt = _guess_format(path, audio_format)
    raw_rate = (sample_rate or 16000) if fmt in _RAW else None
    # headerless pcm/G.711 is interleaved: as many channels as roles were named (default 1)
    raw_channels = len(channels_roles) if fmt in _RAW and channels_roles else None
    target = 8000 if _source_rate(path, fmt, raw_rate) == 8000 else 16000
    chunk_ms = chunk_ms or settings.kafka_chunk_ms
    step = target * chunk_ms // 1000
    codec = producer.codec if producer is not None else Codec.from_settings(settings)
    start_ms = int(clock() * 1000)
    roles: tuple[str, ...] = ()

    def chunk(ch: int, seq: int, pcm: bytes, eos: bool = False) -> AudioChunk:
        return AudioChunk(call_id=call_id, channel=ch, role=roles[ch], seq=seq,
                          capture_time_ms=start_ms + seq * chunk_ms, offset_ms=seq * chunk_ms,
                          format="pcm", sample_rate=target, payload=pcm, end_of_stream=eos,
                          options=options if seq == 0 else None)

    def set_roles(n: int) -> None:
        nonlocal roles
        given = tuple(channels_roles) if channels_roles else default_roles(n)
        if len(given) != n:
            raise ConfigurationError(f"{path} has {n} channel(s) but {len(given)} role(s) were "
                                     f"given ({','.join(given)}); name one role per channel")
        roles = tuple("" if r in ("", "-") else r for r in given)
        if not any(roles):
            raise ConfigurationError("every channel is skipped: nothing to produce")
        for ch in range(n):  # a bad call_id, role or option fails before anything is sent
            if roles[ch]:
                codec.validate(chunk(ch, 0, b"", eos=True).to_dict())

    if channels_roles:
        set_roles(len(tuple(channels_roles)))
    own = producer is None
    prod = producer or AudioProducer(settings, bootstrap=bootstrap)
    t0 = time.monotonic()
    if own:
        await prod.start()
    bytes0 = prod.bytes_sent
    seq, audio_ms, info = 0, [0] * len(roles), {}
    # one span for the call, current while it is sent: every chunk's headers carry it to the
    # worker (an exception is recorded on it)
    with trace.get_tracer("callscribe.producer").start_as_current_span(
            "produce call", kind=trace.SpanKind.PRODUCER,
            attributes={"call_id": call_id, "file": path.name, "messaging.system": "kafka",
                        "messaging.destination.name": prod.topic}) as span:
        try:
            loop = asyncio.get_running_loop()
            pace0 = loop.time()
            for piece in _pcm_pieces(path, fmt, raw_rate, raw_channels, target, step, info):
                if seq == 0:
                    set_roles(piece.shape[0])
                    audio_ms = [0] * len(roles)
                if realtime:  # a chunk leaves once its audio has been "spoken"
                    await asyncio.sleep(max(0.0, pace0 + (seq + 1) * chunk_ms / 1000
                                            - loop.time()))
                for ch, role in enumerate(roles):
                    if role:
                        await prod.send(chunk(ch, seq, piece[ch].tobytes()))
                        audio_ms[ch] += piece.shape[1] * 1000 // target
                seq += 1
            if seq == 0:  # no audio at all: still end each channel's stream
                set_roles(info.get("channels") or len(roles) or 1)
                audio_ms = [0] * len(roles)
            for ch, role in enumerate(roles):
                if role:
                    await prod.send(chunk(ch, seq, b"", eos=True))
            await prod.flush()
            partition = await prod.partition_for(call_id)
        except BaseException:
            if own:
                await prod.stop(abort=True)
            raise
        span.set_attribute("chunks", seq + 1)
    if own:
        await prod.stop()
    report = ProduceReport(
        call_id=call_id, topic=prod.topic, roles=roles, sample_rate=target,
        chunks=[seq + 1 if r else 0 for r in roles], audio_ms=audio_ms,
        partition=partition, bytes_sent=prod.bytes_sent - bytes0,
        elapsed_s=round(time.monotonic() - t0, 3))
    log.info("recording produced", call_id=call_id, file=str(path), topic=prod.topic,
             chunks=report.chunks, audio_ms=report.audio_ms, elapsed_s=report.elapsed_s)
    return report
