"""Per-(call, channel) state of the pipeline worker, free of Kafka (unit-tested on its own).

:class:`ReorderBuffer` puts a channel's chunks back in ``seq`` order: a duplicate (a seq
already passed) is dropped; a seq that comes early waits until the gap before it fills, for
at most ``window`` later chunks; then the gap is given up (its time is filled with silence)
and a chunk of it that still comes is dropped as late.  Everything is counted.

:class:`OffsetTracker` decides what a partition may commit.  The worker acknowledges a chunk
only once every sentence that overlaps its audio is final and published; acknowledgements
come out of order (calls share a partition), and the committed offset must never pass an
unacknowledged one.  faust's own commit bookkeeping does not promise that for out-of-order
acks (``Consumer._new_offset`` commits the first run of consecutive acked offsets even with
an unacked offset right before it), so the audio topic is subscribed with ``acks=False`` and
the tracker computes the position: the first offset not done, in the order received.
Offsets received again (faust re-seeks to the committed offset after a rebalance) are
recognised as redeliveries and ignored.

:class:`ChannelRecord` is the value of the worker's faust table, keyed ``call_id:channel``
and written to the partition of the call's audio, so it moves with the call: the last
published sentence (id, end), counts for the CallSummary, the final being published
(``pending``, written ahead of it) and whether the channel and its call are over.

:class:`ChannelState` turns in-order chunks into session input.  Times: a chunk's audio spans
``offset_ms`` .. ``offset_ms + duration`` of its channel's stream.  A session may start mid
stream (a new owner replays from the committed offset): it is created at the first sample
fed, ``base_ms`` maps its times to stream times and ``base_sid`` continues the sentence ids
after the last published one.  Audio before the record's ``end_ms`` (already covered by
published sentences) is skipped, so a replay never repeats a sentence.  A hole between chunks
is filled with silence (up to ``MAX_GAP_FILL_MS``), an overlap trimmed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, TypeVar

import numpy as np

from callscribe.analytics.characteristics import loudness_update
from callscribe.audio import open_decoder
from callscribe.pipeline.codec import AudioChunk
from callscribe.recognition.events import FinalSentence, Partial
from callscribe.recognition.session import RecognitionSession

T = TypeVar("T")
SAMPLE_RATE = 16000
MS = SAMPLE_RATE // 1000
#: the longest hole between two chunks filled with silence; a longer one shifts later times
MAX_GAP_FILL_MS = 10000


class ReorderBuffer(Generic[T]):
    """Releases items in seq order; ``expected`` None: the first seq seen starts the stream."""

    def __init__(self, window: int, expected: int | None = 0) -> None:
        self.window = max(1, window)
        self.expected = expected
        self._held: dict[int, T] = {}
        self._given_up: set[int] = set()
        self.counts = {"duplicate": 0, "reordered": 0, "gap": 0, "late": 0}

    @property
    def held(self) -> int:
        return len(self._held)

    def held_items(self) -> list[T]:
        return [self._held[s] for s in sorted(self._held)]

    def push(self, seq: int, item: T) -> tuple[list[T], list[T]]:
        """(items now in order, items dropped as duplicate or late)."""
        if self.expected is None:
            self.expected = seq
        if seq < self.expected or seq in self._held:
            self.counts["late" if seq in self._given_up else "duplicate"] += 1
            self._given_up.discard(seq)
            return [], [item]
        if seq > self.expected:
            self.counts["reordered"] += 1
            self._held[seq] = item
            if len(self._held) <= self.window:
                return [], []
            skipped = min(self._held) - self.expected  # give up the gap
            self.counts["gap"] += skipped
            self._given_up.update(range(self.expected, self.expected + skipped))
            self.expected += skipped
            return self._drain(), []
        self.expected += 1
        return [item, *self._drain()], []

    def flush(self) -> list[T]:
        """Give up every gap (end of stream, idle): what is held, in order."""
        out = []
        for seq in sorted(self._held):
            if seq > self.expected:
                self.counts["gap"] += seq - self.expected
            self.expected = seq + 1
            out.append(self._held.pop(seq))
        return out

    def _drain(self) -> list[T]:
        out = []
        while self.expected in self._held:
            out.append(self._held.pop(self.expected))
            self.expected += 1
        return out


class OffsetTracker:
    """One partition's received offsets, in order, and which are done (acknowledged)."""

    def __init__(self) -> None:
        self._next: int | None = None  # next offset expected; lower ones are redeliveries
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        #: the last position committed (set by the committer)
        self.committed: int | None = None
        #: the first offset received (where the group's committed position was at the start)
        self.start: int | None = None

    def register(self, offset: int) -> bool:
        """Track a received offset; False for a redelivery (already received)."""
        if self._next is not None and offset < self._next:
            return False
        if self.start is None:
            self.start = offset
        self._order.append(offset)
        self._next = offset + 1
        return True

    def done(self, offset: int) -> None:
        self._done.add(offset)

    @property
    def received(self) -> int | None:
        """The offset after the last received one (None before any)."""
        return self._next

    @property
    def outstanding(self) -> int:
        return len(self._order) - len(self._done)

    def position(self) -> int | None:
        """The offset to commit: the first one not done (None before any was received)."""
        while self._order and self._order[0] in self._done:
            self._done.discard(self._order.popleft())
        return self._order[0] if self._order else self._next


@dataclass
class ChannelRecord:
    """The table value of one (call, channel); plain JSON in the changelog."""

    role: str
    options: dict | None = None
    sid: int = 0  # id of the last published final (or error event)
    end_ms: int = 0  # audio before this is done: published, failed or silence
    count: int = 0
    talk_ms: int = 0
    polarity: dict[str, int] = field(default_factory=dict)
    pending: str | None = None  # base64 of the event being published (written ahead)
    ended: str | None = None  # end_of_stream | idle_timeout once every final is out
    duration_ms: int = 0
    last_offset: int = -1  # highest audio offset of this channel (for retiring the record)
    summary: bool = False  # the call's CallSummary is published
    capture_base_ms: int | None = None  # capture time of offset 0 (latency figures)
    updated_at_ms: int = 0  # wall time of the last write (where a takeover looks back from)
    # analytics accumulators (callscribe.analytics.live): talk segments [[b, e]], word and
    # character counts, polarity points [[mid_ms, score]], levels [power sum, frames, peak],
    # first sentence per end-of-call category, live categories [[name, ch, b, e, trigger]]
    segments: list = field(default_factory=list)
    words: int = 0
    chars: int = 0
    polar: list = field(default_factory=list)
    loud: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    cat_said: dict = field(default_factory=dict)
    categories: list = field(default_factory=list)
    partition: int = -1  # the call's audio partition
    # revised transcript (pipeline/revisions.py): lowest audio offset of this channel, the
    # revision's events published, the wall time its publishing started (written ahead)
    first_offset: int = -1
    revised: bool = False
    revising: int | None = None

    def retired(self, partition: int, *, revising: bool = True) -> ChannelRecord:
        """What stays in the table once the call's summary is out and its chunks committed:
        enough to know the call ended (``ended``, ``summary``, ``last_offset``) and, until
        the channel is revised, what its revision needs (offsets, options; ``revising``
        False: revisions are off, no options)."""
        return ChannelRecord(role=self.role, sid=self.sid, end_ms=self.end_ms,
                             count=self.count, ended=self.ended or "end_of_stream",
                             duration_ms=self.duration_ms, last_offset=self.last_offset,
                             summary=True, partition=partition,
                             options=self.options if revising and not self.revised else None,
                             first_offset=self.first_offset, revised=self.revised,
                             revising=self.revising)

    def stream_options(self) -> Any:
        """The call's options (its first chunk's, else the defaults) for recognition: a
        ``StreamOptions`` (live sessions and the revision decode alike)."""
        from callscribe.pipeline.codec import AudioOptions
        from callscribe.recognition.runtime import StreamOptions
        from callscribe.recognition.vocabulary import Hotword

        o = AudioOptions.from_dict(self.options) if self.options else AudioOptions()
        return StreamOptions(
            language_hints=tuple(o.language_hints),
            max_sentence_silence_ms=o.max_sentence_silence_ms,
            hotwords=tuple(Hotword(h.text, h.weight, h.lang) for h in o.hotwords or ()),
            disfluency_removal=bool(o.disfluency_removal), itn=o.itn,
            partials=o.partials is not False, emotion=o.emotion is not False,
            context=o.context)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> ChannelRecord | None:
        if not isinstance(d, dict) or "role" not in d:
            return None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def majority_polarity(self) -> str | None:
        if not self.polarity:
            return None
        return max(sorted(self.polarity), key=lambda p: self.polarity[p])


class EndedCalls:
    """The ended channels whose (retired) table records a worker keeps, oldest first.

    The records themselves are the memory that a call ended (a late record finds them in the
    table, on whichever worker owns the partition); this index only decides when each goes:
    older than ``retention_ms``, or beyond ``max_entries`` (oldest first).  Kafka-free."""

    def __init__(self, retention_ms: int, max_entries: int) -> None:
        self.retention_ms = retention_ms
        self.max_entries = max_entries
        self._items: dict[str, tuple[int, int]] = {}  # key -> (ended at ms, partition)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: str, partition: int, ended_at_ms: int) -> None:
        if key not in self._items:
            self._items[key] = (ended_at_ms, partition)

    def due(self, now_ms: int) -> list[tuple[str, int]]:
        """Pop and return (key, partition) of what is to be forgotten now.  Entries are kept
        in insertion order; those recovered from the table are added oldest first."""
        out: list[tuple[str, int]] = []
        limit = now_ms - self.retention_ms
        while self._items:
            key, (at, part) = next(iter(self._items.items()))
            if at > limit and len(self._items) <= self.max_entries:
                break
            del self._items[key]
            out.append((key, part))
        return out

    def partitions(self) -> set[int]:
        return {p for _at, p in self._items.values()}

    def forget_partition(self, partition: int) -> None:
        """The partition moved away: its new owner indexes the records it recovers."""
        self._items = {k: v for k, v in self._items.items() if v[1] != partition}


@dataclass
class HeldChunk:
    """A received chunk waiting for its acknowledgement."""

    offset: int  # Kafka offset in the call's audio partition
    seq: int
    begin_ms: int
    end_ms: int
    value: bytes  # the raw record, for the dead-letter topic
    eos: bool = False


def chunk_duration_ms(chunk: AudioChunk) -> int:
    n = len(chunk.payload) // (2 if chunk.format == "pcm" else 1)
    return n * 1000 // chunk.sample_rate


class ChannelState:
    """Audio of one (call, channel) on its way into a RecognitionSession."""

    def __init__(self, call_id: str, channel: int, partition: int, *, role: str,
                 record: ChannelRecord | None, reorder_window: int) -> None:
        self.call_id = call_id
        self.channel = channel
        self.partition = partition
        self.key = f"{call_id}:{channel}"
        self.is_new = record is None
        self.resumed = record is not None  # another owner (or an earlier life) had it
        self.record = record or ChannelRecord(role=role)
        self.record.partition = partition  # where the call's audio is (the revision reads it)
        # a fresh channel starts at seq 0; a replay at whatever comes first
        self.reorder: ReorderBuffer[tuple[AudioChunk, HeldChunk]] = ReorderBuffer(
            reorder_window, expected=0 if record is None else None)
        self.unacked: deque[HeldChunk] = deque()
        self.eos_chunks: list[HeldChunk] = []  # released once the call's summary is out
        self.session: RecognitionSession | None = None
        self.base_ms = 0
        self.base_sid = 0
        self.fed_ms: int | None = None  # stream time of the end of the audio fed
        self.input_closed = False  # end of stream fed, or closed when idle
        self.end_reason: str | None = None
        self.accounted_ms = 0  # audio fed, not yet processed (the worker's budget)
        self.gap_filled_ms = 0
        self.audio_end_ms = 0  # end of the latest audio received: the channel's duration
        #: the trace context of the latest chunk (its record headers); decodes run in it
        self.trace_context: Any = None
        self._decoder: Any = None
        self._decoder_key: tuple[str, int] | None = None
        if self.record.ended:  # over already (a replay): chunks are acknowledged at once
            self.input_closed = True
            self.end_reason = self.record.ended

    @property
    def role(self) -> str:
        return self.record.role

    @property
    def resume_ms(self) -> int:
        return self.record.end_ms

    # --- input ----------------------------------------------------------------------------
    def take(self, chunk: AudioChunk, held: HeldChunk) -> tuple[list, list[HeldChunk]]:
        """Reorder: ([(chunk, held)] in order, [held] dropped as duplicates/late)."""
        self.record.last_offset = max(self.record.last_offset, held.offset)
        if not 0 <= self.record.first_offset <= held.offset:
            self.record.first_offset = held.offset
        if not held.eos:
            self.audio_end_ms = max(self.audio_end_ms, held.end_ms)
        if self.record.capture_base_ms is None:
            self.record.capture_base_ms = chunk.capture_time_ms - chunk.offset_ms
        ready, dropped = self.reorder.push(chunk.seq, (chunk, held))
        return ready, [h for _, h in dropped]

    def feed(self, chunk: AudioChunk, held: HeldChunk,
             make_session: Callable[[ChannelState], RecognitionSession]) -> tuple[int, bool]:
        """Put one in-order chunk into the session: (ms of audio fed, kept).

        Not kept (the caller acknowledges it at once): a chunk whose audio is all before
        ``resume_ms`` or already fed, or one that comes after the input was closed.  An end of
        stream chunk is kept in ``eos_chunks`` until the call's summary is published.
        """
        if self.input_closed:
            if held.eos and not self.record.summary:  # held until the summary is out
                self.eos_chunks.append(held)
                return 0, True
            return 0, False
        start = max(held.begin_ms, self.resume_ms)
        if self.fed_ms is not None:
            start = max(start, self.fed_ms)  # an overlap: keep only the new audio
        fed = 0
        kept = False
        if held.end_ms > start:
            pcm = self._decode(chunk)[(start - held.begin_ms) * MS:]
            if self.fed_ms is not None and start > self.fed_ms:
                # a hole between chunks: silence keeps later times right
                gap = min(start - self.fed_ms, MAX_GAP_FILL_MS)
                self.gap_filled_ms += gap
                pcm = np.concatenate([np.zeros(gap * MS, np.float32), pcm])
                start = start - gap
            if len(pcm):
                loudness_update(self.record.loud, pcm)
                if self.session is None:
                    self.base_ms, self.base_sid = start, self.record.sid
                    self.session = make_session(self)
                self.session.accept_waveform(pcm)
                fed = len(pcm) // MS
                self.fed_ms = start + fed
                if not held.eos:
                    self.unacked.append(held)
                    kept = True
        if held.eos:
            self.eos_chunks.append(held)
            kept = True
            self.close_input("end_of_stream")
        return fed, kept

    def close_input(self, reason: str) -> None:
        """No more audio (end of stream, or idle): the session finishes what it has."""
        if self.input_closed:
            return
        self.input_closed = True
        self.end_reason = reason
        if self.session is not None:
            tail = self._decoder.finish() if self._decoder is not None else None
            if tail is not None and tail.size:
                self.session.accept_waveform(np.asarray(tail, np.float32).reshape(-1))
            self.session.input_finished()

    def _decode(self, chunk: AudioChunk) -> np.ndarray:
        if chunk.format == "pcm" and chunk.sample_rate == SAMPLE_RATE:
            return np.frombuffer(chunk.payload, "<i2").astype(np.float32) / np.float32(32768.0)
        key = (chunk.format, chunk.sample_rate)
        if self._decoder_key != key:
            self._decoder = open_decoder(chunk.format, chunk.sample_rate,
                                         target_rate=SAMPLE_RATE)
            self._decoder_key = key
        out = self._decoder.feed(chunk.payload)
        return np.asarray(out, np.float32).reshape(-1)

    # --- output ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Input closed and every sentence out: the channel is over."""
        return self.input_closed and (self.session is None or self.session.done)

    def safe_stream_ms(self) -> int | None:
        """Stream time before which every sentence is final (None: nothing fed)."""
        if self.session is None:
            return self.fed_ms
        return self.base_ms + self.session.safe_ms

    def releasable(self) -> list[HeldChunk]:
        """Pop the unacked chunks whose audio is wholly before the safe point."""
        if self.finished:
            return self.release_all()
        safe = self.safe_stream_ms()
        out: list[HeldChunk] = []
        while self.unacked and safe is not None and self.unacked[0].end_ms <= safe:
            out.append(self.unacked.popleft())
        return out

    def release_all(self) -> list[HeldChunk]:
        out = list(self.unacked)
        self.unacked.clear()
        return out

    def to_stream(self, ev: FinalSentence | Partial) -> Any:
        """A session event in stream time, with the channel's sentence ids."""
        b, sid = self.base_ms, self.base_sid + ev.sentence_id
        if isinstance(ev, Partial):
            return replace(ev, sentence_id=sid, begin_time=ev.begin_time + b,
                           end_time=ev.end_time + b)
        words = tuple(replace(w, begin_time=w.begin_time + b, end_time=w.end_time + b)
                      for w in ev.words)
        return replace(ev, sentence_id=sid, begin_time=ev.begin_time + b,
                       end_time=ev.end_time + b, words=words)

    def restart_session(self) -> None:
        """Drop the session (after a failed decode): the next audio starts a new one."""
        self.session = None
        self.accounted_ms = 0
