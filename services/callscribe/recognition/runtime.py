"""The process-wide recognition runtime and its asyncio stream adapter.

``Runtime`` loads one engine and one VAD per process and owns the decode thread pool.
``AsyncStream`` is the thin asyncio adapter around one ``RecognitionSession``: bytes in
(decoded in a small audio thread pool, never on the loop, and at most
``max_buffered_audio_ms`` of audio per input: a larger one is refused with
DecodeLimitExceeded before it is decoded), processing in the decode pool (never on the loop),
events out through a bounded queue.  When recognition falls behind, ``put`` waits
(backpressure) instead of buffering without bound; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from callscribe.asr.models import resolve_model_dir
from callscribe.asr.vad import SileroVad
from callscribe.asr.whisper import DecodePolicy, WhisperEngine
from callscribe.audio import open_decoder, select_channel
from callscribe.errors import CallscribeError, Overloaded, SessionError
from callscribe.recognition.emotion import EmotionEstimator, make_emotion_estimator
from callscribe.recognition.events import Event, FinalSentence, Partial, Progress
from callscribe.recognition.telemetry import RecognitionTelemetry, StreamClock
from callscribe.recognition.postprocess import hotword_prompt, make_final_hook
from callscribe.recognition.session import RecognitionSession, SessionOptions
from callscribe.analytics.redact import gateway_redactor, redact_session_event
from callscribe.settings import Settings
from callscribe.tracing import run_in_context

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StreamOptions:
    format: str = "pcm"
    sample_rate: int | None = 16000
    language_hints: tuple[str, ...] = ()
    max_sentence_silence_ms: int | None = None
    hotwords: tuple = ()  # of callscribe.recognition.vocabulary.Hotword
    disfluency_removal: bool = False
    itn: bool | None = None
    partials: bool = True
    emotion: bool = True
    #: which channel of multi-channel input this stream recognises (never downmixed)
    channel: int = 0
    #: extra context text to bias recognition (Qwen ``corpus.text``)
    context: str | None = None
    #: Silero speech probability threshold; None: ``settings.vad_threshold``
    vad_threshold: float | None = None
    #: False: silence never ends a sentence, the caller ends sentences with ``commit()``
    endpointing: bool = True
    #: emit :class:`~callscribe.recognition.events.Progress` after every processing step
    #: (protocols with audio-time timers ask for it)
    progress: bool = False
    extra: dict = field(default_factory=dict)


class Runtime:
    #: smoothed queue wait above which partials are skipped (load shedding)
    busy_wait_s = 0.15

    def __init__(self, settings: Settings, engine: WhisperEngine, vad: SileroVad,
                 emotion: EmotionEstimator | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.vad = vad
        self.emotion = emotion
        self.telemetry = RecognitionTelemetry()
        #: smoothed time processing steps wait for a free worker thread
        self._wait_ewma_s = 0.0
        self.executor = ThreadPoolExecutor(max_workers=settings.decode_workers,
                                           thread_name_prefix="decode")
        #: audio decoding (container/codec -> PCM) of the streams' input, off the event loop;
        #: each job is bounded by the per-input output limit
        self.audio_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audio")
        self.ready = True
        #: ``CALLSCRIBE_GATEWAY_REDACT``: PII redacted from what streams send to clients
        self.redactor = gateway_redactor(settings)

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        model_dir = resolve_model_dir(settings.model_dir, settings.cache_dir)
        engine = WhisperEngine(model_dir, compute_type=settings.compute_type,
                               cpu_threads=settings.cpu_threads,
                               num_workers=settings.decode_workers,
                               policy=DecodePolicy(final_beam_size=settings.final_beam_size))
        omp = os.environ.get("OMP_NUM_THREADS", "")
        if omp.isdigit() and int(omp) < settings.cpu_threads:
            log.warning("OMP_NUM_THREADS is below CALLSCRIBE_CPU_THREADS: each decode uses "
                        "at most OMP_NUM_THREADS cores", omp_num_threads=int(omp),
                        cpu_threads=settings.cpu_threads)
        log.info("model loaded", model=engine.model_name, path=str(model_dir))
        emotion = make_emotion_estimator(settings.emotion_estimator)
        return cls(settings, engine, SileroVad(), emotion)

    def session_options(self, opts: StreamOptions) -> SessionOptions:
        s = self.settings
        return SessionOptions(
            language_hints=tuple(h for h in opts.language_hints if h),
            max_sentence_silence_ms=opts.max_sentence_silence_ms or s.max_sentence_silence_ms,
            max_sentence_ms=s.max_sentence_ms,
            partial_interval_ms=s.partial_interval_ms if opts.partials else 0,
            first_partial_ms=s.first_partial_ms,
            vad_threshold=s.vad_threshold if opts.vad_threshold is None else opts.vad_threshold,
            endpointing=opts.endpointing,
            max_buffered_audio_ms=s.max_buffered_audio_ms,
            context_ms=s.final_context_ms,
            prompt=opts.context.strip()[:400] if opts.context else None,
            bias_prompt=hotword_prompt(opts.hotwords, opts.language_hints),
            bias_terms=tuple(h.text for h in opts.hotwords),
        )

    def new_session(self, opts: StreamOptions, *, engine=None) -> RecognitionSession:
        """A session on the shared model; ``engine`` wraps it (the Kafka worker's retrying
        engine) when given."""
        return RecognitionSession(engine or self.engine, self.vad, self.session_options(opts),
                                  final_hook=make_final_hook(opts, self.settings, self.emotion),
                                  telemetry=self.telemetry)

    def pool_busy(self) -> bool:
        """Processing steps have recently waited for a worker thread (a smoothed wait over
        ``busy_wait_s``): recognition is behind, so partials are shed first."""
        return self._wait_ewma_s > self.busy_wait_s

    def note_wait(self, wait_s: float) -> None:
        """Called from a worker thread as a processing step starts (float store: atomic)."""
        self._wait_ewma_s = 0.8 * self._wait_ewma_s + 0.2 * wait_s

    def open_stream(self, opts: StreamOptions) -> AsyncStream:
        decoder = open_decoder(opts.format, opts.sample_rate, target_rate=self.engine.sample_rate,
                               max_feed_ms=self.settings.max_buffered_audio_ms)
        stream = AsyncStream(self, self.new_session(opts), decoder, opts.channel,
                             progress=opts.progress)
        stream.log_context = opts.extra
        return stream

    def close(self) -> None:
        self.ready = False
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.audio_executor.shutdown(wait=False, cancel_futures=True)


_END = object()


class AsyncStream:
    """One recognition stream driven from asyncio."""

    #: seconds ``put`` may wait for recognition to catch up before giving up
    backpressure_deadline_s = 60.0

    def __init__(self, runtime: Runtime, session: RecognitionSession, decoder, channel: int,
                 *, progress: bool = False) -> None:
        self.runtime = runtime
        self.progress = progress
        self.session = session
        self.decoder = decoder
        self.channel = channel
        self._events: asyncio.Queue = asyncio.Queue(maxsize=256)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._finished = False
        #: unprocessed audio (ms) above which put() waits; at most a third of the session's
        #: hard bound, so one more piece always fits
        self._high = max(500, session.options.max_buffered_audio_ms // 3)
        self._clock = StreamClock()
        session.pool_busy = runtime.pool_busy
        self._first_partials: set[int] = set()
        #: ids for this stream's log lines (task_id), set by the opener
        self.log_context: dict = {}
        self._noted_headerless = False
        #: the caller's trace context (e.g. the task's span): the decode spans' parent
        self.trace_context: Any = None
        runtime.telemetry.track(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending_ms(self) -> int:
        return self.session.pending_ms

    @property
    def audio_ms(self) -> int:
        return self.session.audio_ms

    def _channel(self, pcm: np.ndarray) -> np.ndarray:
        return select_channel(pcm, self.channel)

    def _feed_pcm(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self.session.accept_waveform(pcm)
            self._wake.set()

    async def _decode(self, fn, *args) -> np.ndarray:
        """Run a decoder call in the audio pool: the loop never decodes."""
        loop = asyncio.get_running_loop()
        return self._channel(await loop.run_in_executor(self.runtime.audio_executor, fn, *args))

    async def put(self, data: bytes) -> None:
        """Decode and queue ``data``; waits while more than half the buffer is unprocessed.

        Raises DecodeLimitExceeded (nothing of ``data`` is queued) when ``data`` decodes to
        more than ``max_buffered_audio_ms`` of audio; the stream is then unusable."""
        if self._finished:
            raise SessionError("audio after finish")
        if self._task.done():
            self._task.result()  # re-raise a processing failure
        pcm = await self._decode(self.decoder.feed, data)
        if not self._noted_headerless and getattr(self.decoder, "headerless", False):
            self._noted_headerless = True  # once per stream
            structlog.get_logger(__name__).warning(
                "format wav without a RIFF header: decoding the stream as s16le PCM at the "
                "declared sample_rate", sample_rate=self.decoder.source_rate, **self.log_context)
        piece = self._high * 16  # samples; a huge frame is queued in pieces
        for off in range(0, len(pcm), piece):
            if self.session.pending_ms > self._high:
                self._drained.clear()
                try:
                    await asyncio.wait_for(self._drained.wait(), self.backpressure_deadline_s)
                except TimeoutError:
                    raise Overloaded("recognition did not catch up within "
                                     f"{self.backpressure_deadline_s:.0f} s") from None
            self._feed_pcm(pcm[off:off + piece])
        self._clock.mark(self.session.audio_ms)

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._feed_pcm(await self._decode(self.decoder.finish))
        self.session.input_finished()
        self._wake.set()

    async def commit(self, discard: bool = False) -> None:
        """End the current sentence after all audio put so far (``Committed`` follows its
        events); ``discard`` drops it undecoded.  Ordered with ``put``: call it from the same
        task, after the ``put`` of the last audio that belongs before the commit."""
        if self._finished:
            raise SessionError("commit after finish")
        if self._task.done():
            self._task.result()
        self.session.force_endpoint(discard)
        self._wake.set()

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._events.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.session.has_work():
                    before = self.session.audio_ms - self.session.pending_ms
                    t0 = time.perf_counter()
                    events = await loop.run_in_executor(
                        self.runtime.executor, run_in_context, self.trace_context,
                        self._process, time.perf_counter())
                    self._observe(before, time.perf_counter() - t0, events)
                    if self.session.pending_ms <= self._high:
                        self._drained.set()
                    if self.progress:
                        events.append(Progress(self.session.audio_ms - self.session.pending_ms))
                    for ev in events:
                        await self._events.put(ev)
                if self.session.done:
                    break
        except CallscribeError as exc:
            await self._events.put(exc)
        except Exception as exc:  # an engine crash must reach the caller, not vanish
            log.exception("recognition failed")
            await self._events.put(CallscribeError(f"recognition failed: {exc}"))
        finally:
            self._drained.set()
            self.runtime.telemetry.untrack(self)
        await self._events.put(_END)

    def _process(self, submitted: float) -> list:
        """In a worker thread: note how long the step waited for it, then process."""
        self.runtime.note_wait(time.perf_counter() - submitted)
        events = self.session.process()
        if (red := self.runtime.redactor) is not None:  # before anything reaches a client
            events = [redact_session_event(red, ev) for ev in events]
        return events

    def _observe(self, processed_before_ms: int, wall_s: float, events: list) -> None:
        tel = self.runtime.telemetry
        done_ms = self.session.audio_ms - self.session.pending_ms - processed_before_ms
        if done_ms > 0:
            tel.audio_in.add(done_ms / 1000)
            tel.rtf.record(wall_s * 1000 / done_ms)
        for ev in events:
            if isinstance(ev, Partial) and ev.sentence_id not in self._first_partials:
                self._first_partials.add(ev.sentence_id)
                if (ms := self._clock.latency_ms(ev.begin_time)) is not None:
                    tel.first_partial_ms.record(ms)
            elif isinstance(ev, FinalSentence):
                self._first_partials.discard(ev.sentence_id)
                if (ms := self._clock.latency_ms(ev.end_time)) is not None:
                    tel.final_ms.record(ms)

    async def aclose(self) -> None:
        self._finished = True
        self.runtime.telemetry.untrack(self)
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
