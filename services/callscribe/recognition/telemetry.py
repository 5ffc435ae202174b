"""Recognition metrics and traces, through the OpenTelemetry API only.

The process entry point configures the SDK (``callscribe.telemetry``); without it every call
here is a no-op.  One ``RecognitionTelemetry`` per ``Runtime`` holds the instruments, so there
is no module-level state.

Latencies are measured the way a user feels them: from the moment the audio a result depends
on was handed to the stream (``StreamClock.mark``) to the moment the result came out.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Iterable

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation


class RecognitionTelemetry:
    def __init__(self) -> None:
        meter = metrics.get_meter("callscribe.recognition")
        self.tracer = trace.get_tracer("callscribe.recognition")
        self.decode_ms = meter.create_histogram(
            "callscribe.decode.duration", unit="ms",
            description="wall time of one decode, by kind (partial, final)")
        self.first_partial_ms = meter.create_histogram(
            "callscribe.first_partial.latency", unit="ms",
            description="speech start (audio handed in) to the sentence's first partial")
        self.final_ms = meter.create_histogram(
            "callscribe.final.latency", unit="ms",
            description="end of the sentence's audio handed in to its final result")
        self.rtf = meter.create_histogram(
            "callscribe.realtime_factor", unit="1",
            description="processing wall time / audio time, per processing step")
        self.audio_in = meter.create_counter(
            "callscribe.recognition.audio", unit="s", description="audio seconds recognised")
        self.streams = meter.create_up_down_counter(
            "callscribe.recognition.streams", description="recognition streams open")
        self._live: weakref.WeakSet = weakref.WeakSet()
        meter.create_observable_gauge(
            "callscribe.recognition.queue_depth", callbacks=[self._queue_depth], unit="ms",
            description="audio waiting for recognition, summed over open streams")

    def track(self, stream: object) -> None:
        self._live.add(stream)
        self.streams.add(1)

    def untrack(self, stream: object) -> None:
        if stream in self._live:
            self._live.discard(stream)
            self.streams.add(-1)

    def _queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(sum(getattr(s, "pending_ms", 0) for s in list(self._live)))


class StreamClock:
    """When each stretch of audio was handed in (bounded: old marks are dropped as the stream
    moves on), so a result at audio time ``t`` can be turned into a wall-clock latency."""

    def __init__(self, keep: int = 4096) -> None:
        self._marks: deque[tuple[int, float]] = deque(maxlen=keep)

    def mark(self, audio_end_ms: int) -> None:
        self._marks.append((audio_end_ms, time.monotonic()))

    def handed_in_at(self, audio_ms: int) -> float | None:
        for end, t in self._marks:
            if end >= audio_ms:
                return t
        return self._marks[-1][1] if self._marks else None

    def latency_ms(self, audio_ms: int) -> float | None:
        t = self.handed_in_at(audio_ms)
        return None if t is None else (time.monotonic() - t) * 1000
