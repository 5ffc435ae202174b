"""The pipeline worker's per-channel logic without Kafka: reordering and dedup by seq, the
offsets a partition may commit, and -- with the real model -- acknowledging only up to the
session's safe point, replay after a crash without repeats, decode retries and dead letters.

The Kafka side is replaced by ``MemorySink`` (it records what the worker would write, in
order).  The one fault that cannot be made real, a decode that raises, is ``FlakyEngine``: the
real engine behind a wrapper that raises EngineError a given number of times.
"""

from __future__ import annotations

import asyncio
import base64
import copy

import numpy as np
import pytest
from audiogen import espeak_wav, have_tools, silence
from waiting import wait_until_async

from callscribe.errors import EngineError
from callscribe.pipeline.calls import (ChannelRecord, ChannelState, EndedCalls, HeldChunk,
                                       OffsetTracker, ReorderBuffer, chunk_duration_ms)
from callscribe.pipeline.channel import ChannelProcessor
from callscribe.pipeline.codec import AudioChunk, Codec, TranscriptEvent
from callscribe.pipeline.flow import InflightBudget, RetryingEngine, WorkerMetrics

# --- reordering and offsets --------------------------------------------------------------


def test_reorder_in_order_duplicates_and_late() -> None:
    rb: ReorderBuffer[int] = ReorderBuffer(window=3)
    assert rb.push(0, 0) == ([0], [])
    assert rb.push(2, 2) == ([], [])  # early: waits for 1
    assert rb.push(3, 3) == ([], [])
    assert rb.push(1, 1) == ([1, 2, 3], [])  # the gap fills: all three in order
    assert rb.push(2, 2) == ([], [2])  # a duplicate
    assert rb.push(4, 4) == ([4], [])
    assert rb.counts == {"duplicate": 1, "reordered": 2, "gap": 0, "late": 0}


def test_reorder_gives_up_a_gap_after_the_window() -> None:
    rb: ReorderBuffer[int] = ReorderBuffer(window=2)
    rb.push(0, 0)
    assert rb.push(2, 2) == ([], [])
    assert rb.push(3, 3) == ([], [])
    assert rb.push(4, 4) == ([2, 3, 4], [])  # 3 held > window 2: seq 1 is given up
    assert rb.counts["gap"] == 1
    assert rb.push(1, 1) == ([], [1])  # it came after all: dropped as late
    assert rb.counts["late"] == 1
    assert rb.push(7, 7) == ([], [])
    assert rb.flush() == [7] and rb.counts["gap"] == 3  # 5 and 6 given up at the end
    replay: ReorderBuffer[int] = ReorderBuffer(window=2, expected=None)
    assert replay.push(40, 40) == ([40], [])  # a replay starts wherever it starts


def test_offset_tracker_commits_only_contiguous_done_offsets() -> None:
    t = OffsetTracker()
    assert t.position() is None
    for o in (10, 11, 12, 14):  # 13 does not exist (a gap in the partition)
        assert t.register(o)
    t.done(11)
    t.done(12)
    assert t.position() == 10  # 10 is not done: nothing past it may be committed
    t.done(10)
    assert t.position() == 14
    assert not t.register(11)  # a redelivery after a re-seek
    t.done(14)
    assert t.position() == 15 and t.outstanding == 0


def test_ended_calls_are_forgotten_by_age_then_by_count() -> None:
    ended = EndedCalls(retention_ms=1000, max_entries=3)
    for key, part, at in (("a:0", 0, 100), ("b:0", 1, 200), ("c:0", 0, 300)):
        ended.add(key, part, at)
    ended.add("a:0", 0, 999)  # already known: keeps its first time
    assert ended.due(1000) == [] and len(ended) == 3
    assert ended.due(1150) == [("a:0", 0)]  # older than the retention
    for key, part, at in (("d:0", 1, 1200), ("e:0", 0, 1210), ("f:0", 1, 1220)):
        ended.add(key, part, at)
    # five, more than 3: the oldest go although they are younger than the retention
    assert ended.due(1150) == [("b:0", 1), ("c:0", 0)]
    assert ended.partitions() == {0, 1}
    ended.forget_partition(1)
    assert ended.due(10_000) == [("e:0", 0)] and len(ended) == 0


async def test_inflight_budget_degrades_partials_first_then_pauses() -> None:
    calls: list[tuple[str, bool]] = []
    b = InflightBudget(1000, 800, on_pause=lambda on: calls.append(("pause", on)),
                       on_partials=lambda on: calls.append(("partials", on)))
    st = ChannelState("c", 0, 0, role="agent", record=None, reorder_window=5)
    b.add(600)
    st.accounted_ms = 600
    assert calls == [("partials", False)] and b.has_room(st)  # above H/2: partials off
    b.add(500)
    st.accounted_ms = 1100
    assert calls[-1] == ("pause", True) and not b.has_room(st)  # at H: paused, full
    waiter = asyncio.ensure_future(b.wait_room(st, lambda: False))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    b.settle(st, 400)  # recognition caught up on 700 ms of it
    await asyncio.wait_for(waiter, 1)
    assert b.total_ms == 400 and calls[-1] == ("pause", False)  # at H/2: resumed
    b.settle(st, 100)
    assert calls[-1] == ("partials", True)  # below H/4: partials back
    assert calls == [("partials", False), ("pause", True), ("pause", False), ("partials", True)]


# --- audio into the session (routing only: a recording stand-in for the session) -------


class RecordingSession:
    def __init__(self) -> None:
        self.audio: list[np.ndarray] = []
        self.finished = False
        self.done = False
        self.pending_ms = 0
        self.safe_ms = 0

    def accept_waveform(self, pcm: np.ndarray) -> None:
        self.audio.append(pcm)

    def input_finished(self) -> None:
        self.finished = True

    def has_work(self) -> bool:
        return False


def make_chunk(seq: int, ms: int = 100, *, offset: int | None = None, value: int = 1,
               eos: bool = False) -> tuple[AudioChunk, HeldChunk]:
    payload = b"" if eos else np.full(ms * 16, value, "<i2").tobytes()
    off = seq * 100 if offset is None else offset
    c = AudioChunk(call_id="c1", channel=0, role="agent", seq=seq, capture_time_ms=0,
                   offset_ms=off, format="pcm", sample_rate=16000, payload=payload,
                   end_of_stream=eos)
    return c, HeldChunk(1000 + seq, seq, off, off + chunk_duration_ms(c), b"raw", eos)


def feed_all(st: ChannelState, chunks, sessions: list) -> list[HeldChunk]:
    """Route chunks as the worker does; return those acknowledged at once."""
    def make(_st):
        sessions.append(RecordingSession())
        return sessions[-1]
    at_once = []
    for c, h in chunks:
        ready, dropped = st.take(c, h)
        at_once += dropped
        for c2, h2 in ready:
            _fed, kept = st.feed(c2, h2, make)
            if not kept:
                at_once.append(h2)
    return at_once


def test_reordered_and_duplicate_chunks_reach_the_session_once_in_order() -> None:
    st = ChannelState("c1", 0, 3, role="agent", record=None, reorder_window=5)
    chunks = [make_chunk(s, value=s + 1) for s in (0, 2, 1, 1, 3)] + [make_chunk(4, eos=True)]
    sessions: list = []
    at_once = feed_all(st, chunks, sessions)
    assert [h.seq for h in at_once] == [1]  # the duplicate
    pcm = np.concatenate(sessions[0].audio)
    assert len(pcm) == 4 * 1600
    assert [round(float(pcm[i * 1600]) * 32768) for i in range(4)] == [1, 2, 3, 4]
    assert sessions[0].finished and st.input_closed and [h.seq for h in st.eos_chunks] == [4]
    assert [h.seq for h in st.unacked] == [0, 1, 2, 3]


def test_holes_are_silence_overlaps_trimmed_and_replays_skip_done_audio() -> None:
    st = ChannelState("c1", 0, 0, role="agent", record=None, reorder_window=5)
    sessions: list = []
    # seq 1 starts 300 ms late (a hole), seq 2 overlaps it by 50 ms
    feed_all(st, [make_chunk(0), make_chunk(1, offset=400), make_chunk(2, offset=450)],
             sessions)
    pcm = np.concatenate(sessions[0].audio)
    assert len(pcm) == 550 * 16 and st.fed_ms == 550 and st.gap_filled_ms == 300
    assert not pcm[100 * 16:400 * 16].any()
    # a new owner: the table says everything up to 250 ms is published
    replay = ChannelState("c1", 0, 0, role="agent",
                          record=ChannelRecord(role="agent", sid=1, end_ms=250),
                          reorder_window=5)
    sessions = []
    at_once = feed_all(replay, [make_chunk(s) for s in (0, 1, 2, 3)], sessions)
    assert [h.seq for h in at_once] == [0, 1]  # wholly before 250 ms: acknowledged at once
    assert replay.base_ms == 250 and replay.base_sid == 1
    assert len(np.concatenate(sessions[0].audio)) == 150 * 16


# --- with the real model -----------------------------------------------------------------


class MemorySink:
    """What the worker would write to Kafka, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.codec = Codec()

    async def save(self, st) -> None:
        self.log.append(("save", copy.deepcopy(st.record.to_json())))

    async def publish(self, st, value: bytes, headers=None) -> None:
        self.log.append(("publish", self.codec.decode(value)))

    def publish_partial(self, st, value: bytes) -> None:
        self.log.append(("partial", self.codec.decode(value)))

    async def dead_letter(self, record) -> None:
        self.log.append(("dead", record))

    def release(self, st, chunks) -> None:
        self.log.append(("release", list(chunks)))

    async def find_published(self, call_id: str, key: str, since_ms: int) -> bool:
        return any(v.idempotency_key == key for v in self.published())

    async def channel_finished(self, st) -> None:
        self.log.append(("finished", st.record.ended))
        self.release(st, st.eos_chunks)

    def published(self) -> list[TranscriptEvent]:
        return [v for k, v in self.log if k == "publish"]

    def released(self) -> list[HeldChunk]:
        return [h for k, v in self.log if k == "release" for h in v]


class FlakyEngine:
    """The real engine, but final decodes raise EngineError while ``failures`` > 0."""

    def __init__(self, engine, failures: int) -> None:
        self.engine = engine
        self.name, self.model_name, self.sample_rate = engine.name, engine.model_name, 16000
        self.failures = failures
        self.raised = 0

    def decode(self, request):
        if self.failures > 0 and not request.partial:
            self.failures -= 1
            self.raised += 1
            raise EngineError("injected decode failure")
        return self.engine.decode(request)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> list[np.ndarray]:
    """Two short espeak sentences, float32 16 kHz."""
    if not have_tools("espeak-ng", "sox"):
        pytest.skip("espeak-ng and sox are needed")
    d = tmp_path_factory.mktemp("speech")
    out = []
    for i, text in enumerate(["The quick brown fox jumps over the lazy dog.",
                              "Please call me back tomorrow morning."]):
        wav = espeak_wav(text, d / f"s{i}.wav")
        import wave
        with wave.open(str(wav)) as w:
            out.append(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
    return out


def chunks_of(pcm: np.ndarray, first_seq: int = 0, first_offset: int = 0) -> list:
    out = []
    for i, off in enumerate(range(0, len(pcm), 1600)):
        part = pcm[off:off + 1600].astype("<i2").tobytes()
        c = AudioChunk(call_id="call-u", channel=0, role="agent", seq=first_seq + i,
                       capture_time_ms=1, offset_ms=first_offset + off // 16, format="pcm",
                       sample_rate=16000, payload=part)
        out.append((c, HeldChunk(first_seq + i, first_seq + i, c.offset_ms,
                                 c.offset_ms + chunk_duration_ms(c), part)))
    return out


def eos_chunk(seq: int, offset: int) -> tuple:
    c = AudioChunk(call_id="call-u", channel=0, role="agent", seq=seq, capture_time_ms=1,
                   offset_ms=offset, format="pcm", sample_rate=16000, payload=b"",
                   end_of_stream=True)
    return c, HeldChunk(seq, seq, offset, offset, b"", True)


class Harness:
    def __init__(self, runtime, engine, record: ChannelRecord | None = None) -> None:
        from callscribe.recognition.runtime import StreamOptions

        self.sink = MemorySink()
        self.state = ChannelState("call-u", 0, 0, role="agent", record=record,
                                  reorder_window=10)
        self.retries: list = []
        self.engine = engine
        self.opts = StreamOptions(language_hints=("en",), partials=False)
        self.runtime = runtime
        budget = InflightBudget(60000, 30000, on_pause=lambda _on: None,
                                on_partials=lambda _on: None)
        self.proc = ChannelProcessor(self.state, self.sink, executor=runtime.executor,
                                     codec=self.sink.codec, budget=budget,
                                     metrics=WorkerMetrics(), engine="e", model="m",
                                     audio_topic="audio", partials=False)

    def make_session(self, _st):
        return self.runtime.new_session(self.opts, engine=self.engine)

    async def feed(self, chunks, *, step: bool = True) -> None:
        """Feed chunk by chunk, letting the processor catch up after each (``step``)."""
        for c, h in chunks:
            ready, _ = self.state.take(c, h)
            for c2, h2 in ready:
                _fed, kept = self.state.feed(c2, h2, self.make_session)
                if not kept:
                    self.sink.release(self.state, [h2])
            self.proc.wake()
            if step:
                st = self.state
                await wait_until_async(
                    lambda: not (st.session is not None and st.session.has_work()
                                 and not st.input_closed), 60,
                    "the processor caught up with the chunk")

    async def run(self, chunks, timeout: float = 60) -> None:
        task = self.proc.start()
        await self.feed(chunks)
        await asyncio.wait_for(task, timeout)


def conversation(speech) -> np.ndarray:
    gap = (silence(1.2, 16000) * 32767).astype(np.int16)
    return np.concatenate([gap[:4800], speech[0], gap, speech[1], gap])


async def test_chunks_are_acknowledged_only_after_their_sentence_is_published(
        runtime, speech) -> None:
    pcm = conversation(speech)
    chunks = chunks_of(pcm)
    h = Harness(runtime, runtime.engine)
    await h.run(chunks + [eos_chunk(len(chunks), len(pcm) // 16)])
    finals = h.sink.published()
    assert len(finals) == 2, finals
    assert "fox" in finals[0].text.lower() and "tomorrow" in finals[1].text.lower()
    assert [f.sentence_id for f in finals] == [1, 2]
    # every chunk, when acknowledged, overlaps no sentence that was not yet published
    published: list[TranscriptEvent] = []
    for kind, value in h.sink.log:
        if kind == "publish":
            published.append(value)
        elif kind == "release":
            for c in value:
                for f in finals:
                    if c.begin_ms < f.end_ms and c.end_ms > f.begin_ms:
                        assert f in published, (c, f)
    # acknowledgements came while the call was running, not only at its end
    first_release = next(i for i, (k, _) in enumerate(h.sink.log) if k == "release")
    second_publish = [i for i, (k, _) in enumerate(h.sink.log) if k == "publish"][1]
    assert first_release < second_publish
    assert sorted(c.seq for c in h.sink.released()) == list(range(len(chunks) + 1))
    # write-ahead: the record carries the event as pending before it is published
    for i, (kind, value) in enumerate(h.sink.log):
        if kind == "publish":
            before, after = h.sink.log[i - 1], h.sink.log[i + 1]
            assert before[0] == "save" and base64.b64decode(before[1]["pending"]) == \
                h.sink.codec.encode(value)
            assert after[0] == "save" and after[1]["pending"] is None
    assert h.state.record.count == 2 and h.state.record.ended == "end_of_stream"


async def test_a_replay_after_a_crash_repeats_no_sentence(runtime, speech) -> None:
    pcm = conversation(speech)
    chunks = chunks_of(pcm)
    first = Harness(runtime, runtime.engine)
    await first.run(chunks + [eos_chunk(len(chunks), len(pcm) // 16)])
    original = first.sink.published()
    # the worker died right after the first final: the table had this, the commit was at 0
    after_first = next(v for k, v in first.sink.log
                       if k == "save" and v["sid"] == 1 and v["pending"] is None)
    second = Harness(runtime, runtime.engine, ChannelRecord.from_json(after_first))
    await second.run(chunks + [eos_chunk(len(chunks), len(pcm) // 16)])
    again = second.sink.published()
    assert [f.sentence_id for f in again] == [2]
    assert again[0].begin_ms >= original[0].end_ms
    assert again[0].text == original[1].text
    assert abs(again[0].begin_ms - original[1].begin_ms) <= 64
    assert second.state.record.count == 2


async def test_decode_failures_are_retried(runtime, speech) -> None:
    flaky = FlakyEngine(runtime.engine, failures=2)
    h = Harness(runtime, RetryingEngine(flaky, retries=3, backoff_ms=5))
    pcm = conversation(speech)
    chunks = chunks_of(pcm)
    await h.run(chunks + [eos_chunk(len(chunks), len(pcm) // 16)])
    assert flaky.raised == 2
    assert [f.sentence_id for f in h.sink.published()] == [1, 2]
    assert not [k for k, _ in h.sink.log if k == "dead"]


async def test_a_decode_that_keeps_failing_is_dead_lettered_and_the_call_goes_on(
        runtime, speech) -> None:
    flaky = FlakyEngine(runtime.engine, failures=100)
    h = Harness(runtime, RetryingEngine(flaky, retries=1, backoff_ms=5))
    gap = (silence(1.2, 16000) * 32767).astype(np.int16)
    first = chunks_of(np.concatenate([gap[:4800], speech[0], gap]))
    task = h.proc.start()
    await h.feed(first)
    await wait_until_async(lambda: [k for k, _ in h.sink.log if k == "publish"], 60,
                           "the error event published")
    assert flaky.raised == 2  # one attempt and one retry
    dead = [v for k, v in h.sink.log if k == "dead"]
    error = h.sink.published()[0]
    assert error.error is not None and error.error.code == "DecodeFailed"
    assert error.final and error.text == "" and error.sentence_id == 1
    seqs = sorted(d.source_offset for d in dead)  # offset == seq in this harness
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # the failed session's chunks
    assert all(d.error_code == "DecodeFailed" and d.call_id == "call-u" and
               f"call call-u channel 0: seq {seqs[0]}..{seqs[-1]}" in d.reason and
               "injected decode failure" in d.reason for d in dead)
    assert error.begin_ms == dead[0].source_offset * 100  # the error event spans them
    # the engine recovers: the rest of the call is recognised, ids go on
    flaky.failures = 0
    offset = first[-1][1].end_ms
    rest = chunks_of(np.concatenate([speech[1], gap]), first_seq=len(first),
                     first_offset=offset)
    end = rest[-1][1].end_ms
    await h.feed(rest + [eos_chunk(len(first) + len(rest), end)])
    await asyncio.wait_for(task, 60)
    finals = h.sink.published()
    assert [f.sentence_id for f in finals] == [1, 2]
    assert "tomorrow" in finals[1].text.lower() and finals[1].begin_ms >= offset - 250
    released = sorted(c.seq for c in h.sink.released())
    assert released == list(range(len(first) + len(rest) + 1))


@pytest.mark.parametrize("landed", [True, False])
async def test_a_new_owner_finishes_a_pending_final_exactly_once(runtime, landed) -> None:
    """The last owner died after the write-ahead: publish the pending final only if it did
    not reach the transcripts topic."""
    from callscribe.pipeline.codec import transcript_from_final
    from callscribe.recognition.events import FinalSentence, Word

    event = transcript_from_final("call-u", 0, "agent", FinalSentence(
        3, 1000, 2000, "Hello there.", (Word(1000, 2000, "Hello there", "."),), "en"),
        "e", "m", created_at_ms=1_700_000_000_000)
    value = Codec().encode(event)
    record = ChannelRecord(role="agent", sid=3, end_ms=2000, count=3,
                           pending=base64.b64encode(value).decode())
    h = Harness(runtime, runtime.engine, record)
    if landed:
        h.sink.log.append(("publish", event))
    task = h.proc.start()
    await wait_until_async(lambda: [k for k, _ in h.sink.log if k == "save"], 60,
                           "the channel record saved")
    task.cancel()
    assert [v.idempotency_key for v in h.sink.published()] == [event.idempotency_key]
    assert h.sink.log[-1][0] == "save" and h.sink.log[-1][1]["pending"] is None
