"""The Kafka pipeline worker end to end, on a REAL broker (scripts/kafka.sh) with the real model:
``callscribe worker`` subprocesses in one consumer group, calls produced with the producer,
results read back from the transcripts and dead-letter topics.

In order (later tests change the stack): a two-channel call in real time; ten calls at once
over four partitions and two workers; poison records; a worker SIGKILLed mid-call (the
other takes over: every final exactly once, none missing); the broker restarted mid-call
(nothing lost).  The SDK tests of ``serve --kafka`` are the ``[kafka]`` variants in
tests/gateway_sdk/.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import wave
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from audiogen import espeak_wav, have_tools, write_wav
from kafka_broker import KafkaBroker, make_kafka_fixture
from pipeline_helpers import (WorkerProcess, dead_letters, finals, has_summaries,
                              pipeline_settings, read_results, summaries)

from callscribe.pipeline.codec import AudioChunk, AudioOptions, CallSummary, TranscriptEvent
from callscribe.pipeline.producer import AudioProducer, produce_file
from callscribe.pipeline.topics import ensure_topics

pytestmark = pytest.mark.shared_audio
# its own broker: the last test restarts it
worker_broker = make_kafka_fixture(scope="module")
PARTITIONS = 4
IDLE_S = 12.0
#: espeak is not a human voice: without a hint Whisper sometimes hears another language
EN = AudioOptions(language_hints=("en",))


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class Stack:
    def __init__(self, broker: KafkaBroker, settings, workers: list[WorkerProcess]) -> None:
        self.broker = broker
        self.settings = settings
        self.workers = workers

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def owner(self, partition: int) -> WorkerProcess:
        owners = [w for w in self.workers if w.alive and partition in (w.partitions() or [])]
        assert len(owners) == 1, [(w.alive, w.partitions()) for w in self.workers]
        return owners[0]

    def check_alive(self) -> None:
        for w in self.workers:
            assert w.alive, w.tail()


@pytest.fixture(scope="module")
def stack(worker_broker: KafkaBroker, tmp_path_factory) -> Stack:
    # a small in-flight bound, so that ten calls at once make the workers pause (backpressure),
    # and an idle timeout the tests can wait for
    settings = pipeline_settings(worker_broker.bootstrap, partitions=PARTITIONS,
                                 kafka_worker_max_inflight_audio_ms=2000,
                                 kafka_worker_idle_timeout_s=IDLE_S)
    asyncio.run(ensure_topics(None, settings, deadline_s=30))
    logs = tmp_path_factory.mktemp("workers")
    workers = [WorkerProcess(settings, logs / f"worker{i}.log").start() for i in (1, 2)]
    try:
        for w in workers:  # two members: two partitions each
            w.wait_assigned(90, want=lambda p: len(p) == PARTITIONS // 2)
        yield Stack(worker_broker, settings, workers)
    finally:
        for w in workers:
            w.stop()


def partition_of(call_id: str) -> int:
    parts = list(range(PARTITIONS))
    return DefaultPartitioner()(call_id.encode(), parts, parts)


def speech_call(path: Path, sentences: list[str], gap_s: float = 1.2) -> Path:
    """A mono call: the sentences spoken by espeak-ng with pauses between them, 16 kHz."""
    if not have_tools("espeak-ng", "sox"):
        pytest.skip("espeak-ng and sox are needed")
    parts = [np.zeros(int(0.3 * 16000), np.float32)]
    for i, text in enumerate(sentences):
        wav = espeak_wav(text, path.with_name(f"{path.stem}-{i}.wav"))
        with wave.open(str(wav)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        parts += [pcm, np.zeros(int(gap_s * 16000), np.float32)]
    return write_wav(path, np.concatenate(parts), 16000)


def check_exactly_once(fs: list[TranscriptEvent], summary: CallSummary) -> None:
    """Every final once (by idempotency key), ids without holes, no two covering the same
    audio (a repeat under another key), and the summary counts them all."""
    keys = Counter(f.idempotency_key for f in fs)
    assert all(n == 1 for n in keys.values()), keys
    assert [f.sentence_id for f in fs] == list(range(1, len(fs) + 1)), \
        [(f.sentence_id, f.begin_ms, f.text) for f in fs]
    for a, b in zip(fs, fs[1:]):
        assert a.end_ms <= b.begin_ms, (a, b)
    assert summary.sentence_count == len(fs)


def check_words(text: str, expected: list[list[str]]) -> None:
    """Each expected sentence is heard: at least one of its words is in the text."""
    t = norm(text)
    missing = [words for words in expected if not any(w in t for w in words)]
    assert not missing, (missing, t)


# --- a two-channel call in real time ----------------------------------------------------------


async def test_two_channel_call_in_real_time(stack: Stack, shared_audio: Path) -> None:
    call_id = f"stereo-{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    report = await produce_file(shared_audio / "en_stereo_diarization.wav", call_id, None,
                                True, settings=stack.settings)
    assert report.roles == ("agent", "customer") and report.audio_ms == [5000, 5000]
    records = await read_results(stack.bootstrap, [stack.settings.kafka_topic_transcripts],
                                 has_summaries(call_id), timeout=60)
    fs = finals(records, call_id)
    by_channel = {ch: [f for f in fs if f.channel == ch] for ch in (0, 1)}
    assert {f.role for f in by_channel[0]} == {"agent"}
    assert {f.role for f in by_channel[1]} == {"customer"}
    left = norm(" ".join(f.text for f in by_channel[0]))
    right = norm(" ".join(f.text for f in by_channel[1]))
    assert "wizard" in left and "curtain" in left and "horizon" not in left, left
    assert "horizon" in right and "distant" in right and "wizard" not in right, right
    for f in fs:
        assert 0 <= f.begin_ms < f.end_ms <= 5000
        assert f.words and all(f.begin_ms <= w.begin_ms <= w.end_ms <= f.end_ms for w in f.words)
        assert f.emotion is not None and f.emotion.polarity in ("positive", "negative",
                                                                "neutral")
        assert 0.0 <= f.emotion.confidence <= 1.0
        assert f.language == "en" and f.idempotency_key.startswith(f"{call_id}:{f.channel}:")
    (summary,) = summaries(records, call_id)
    assert summary.end_reason == "end_of_stream" and summary.duration_ms == 5000
    assert [(c.channel, c.role) for c in summary.channels] == [(0, "agent"), (1, "customer")]
    assert summary.sentence_count == len(fs)
    for c in summary.channels:
        assert c.sentence_count == len(by_channel[c.channel])
        assert 0 < c.talk_ms <= c.duration_ms and c.silence_ms == c.duration_ms - c.talk_ms
        assert c.polarity in ("positive", "negative", "neutral")
    # the summary comes after the call's last final in the partition (revised transcripts
    # follow it: test_revisions.py)
    order = [r for _, r in records if isinstance(r, (TranscriptEvent, CallSummary))
             and r.call_id == call_id]
    assert isinstance(order[-1], CallSummary)
    delays = [f.created_at_ms - (t0 * 1000 + f.end_ms) for f in fs]
    print(f"\nstereo call through Kafka: end of sentence audio -> final published "
          f"{', '.join(f'{d:.0f}' for d in delays)} ms")


# --- ten calls at once, two workers -----------------------------------------------------------

TEN = ["Good morning, how can I help you?", "My card was declined yesterday.",
       "I would like to change my address.", "The internet is very slow tonight.",
       "Can you send me a new invoice?", "Thank you for waiting on the line.",
       "Your order will arrive on Friday.", "Please confirm your date of birth.",
       "I want to cancel my subscription.", "The weather is lovely this morning."]
TEN_WORDS = [["morning", "help", "how can"], ["card", "declined"], ["address"],
             ["internet", "slow"], ["invoice"], ["waiting", "line"], ["order", "friday"],
             ["birth", "confirm"], ["cancel", "subscription"], ["weather", "lovely"]]


def spread_call_ids(n: int, prefix: str) -> list[str]:
    """Call ids that fall on every partition (both workers get calls)."""
    ids: list[str] = []
    per = Counter()
    i = 0
    while len(ids) < n:
        cid = f"{prefix}-{i}"
        i += 1
        p = partition_of(cid)
        if per[p] < (n + PARTITIONS - 1) // PARTITIONS:
            per[p] += 1
            ids.append(cid)
    return ids


async def send_without_end(producer: AudioProducer, path: Path, call_id: str) -> int:
    """A call whose producer vanishes: chunks, but never the end of stream."""
    with wave.open(str(path)) as w:
        pcm = w.readframes(w.getnframes())
    step = 3200
    for seq, off in enumerate(range(0, len(pcm), step)):
        await producer.send(AudioChunk(
            call_id=call_id, channel=0, role="customer", seq=seq, capture_time_ms=1,
            offset_ms=seq * 100, format="pcm", sample_rate=16000, payload=pcm[off:off + step],
            options=EN if seq == 0 else None))
    return len(pcm) // 32


async def test_ten_calls_at_once_on_two_workers(stack: Stack, tmp_path: Path) -> None:
    """Ten calls at once (faster than real time: the in-flight bound makes the workers pause
    their partitions), and an eleventh whose producer vanishes (closed when idle)."""
    stack.check_alive()
    calls = spread_call_ids(10, f"ten-{uuid.uuid4().hex[:6]}")
    paths = [speech_call(tmp_path / f"call{i}.wav", [t], gap_s=0.8) for i, t in enumerate(TEN)]
    gone = f"gone-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    async with AudioProducer(stack.settings) as producer:
        gone_ms = await send_without_end(producer, paths[0], gone)
        await asyncio.gather(*(produce_file(p, cid, None, False, settings=stack.settings,
                                            producer=producer, options=EN)
                               for p, cid in zip(paths, calls)))
    records = await read_results(stack.bootstrap, [stack.settings.kafka_topic_transcripts],
                                 has_summaries(*calls), timeout=120)
    print(f"\nten calls ({sum(p.stat().st_size for p in paths) / 32000:.0f} s of audio) done "
          f"in {time.monotonic() - t0:.1f} s on two workers")
    for cid, words in zip(calls, TEN_WORDS):
        fs = finals(records, cid)
        (summary,) = summaries(records, cid)
        assert fs, cid
        check_exactly_once(fs, summary)
        check_words(" ".join(f.text for f in fs), [words])
    busy = [w for w in stack.workers
            if any(e.get("event") == "final published" and e.get("call_id") in calls
                   for e in w.events())]
    assert len(busy) == 2, "both workers recognised some of the calls"
    paused = [w for w in stack.workers if any(
        e.get("event") == "recognition is behind: audio partitions paused" for e in w.events())]
    assert paused, "the in-flight bound paused the audio partitions"
    assert all(any(e.get("event") == "recognition caught up: audio partitions resumed"
                   for e in w.events()) for w in paused)
    # the call without an end of stream: closed after the idle timeout, with its summary
    records = await read_results(stack.bootstrap, [stack.settings.kafka_topic_transcripts],
                                 has_summaries(gone), timeout=IDLE_S + 30)
    (summary,) = summaries(records, gone)
    assert summary.end_reason == "idle_timeout" and summary.duration_ms == gone_ms
    check_exactly_once(finals(records, gone), summary)
    check_words(" ".join(f.text for f in finals(records, gone)), [TEN_WORDS[0]])


# --- poison records ----------------------------------------------------------------------------


async def test_poison_records_are_dead_lettered_and_others_unaffected(stack: Stack,
                                                                      tmp_path: Path) -> None:
    stack.check_alive()
    s = stack.settings
    good = f"good-{uuid.uuid4().hex[:6]}"
    path = speech_call(tmp_path / "good.wav", ["Thank you for calling, goodbye."])
    poison = {
        b"\xc1 not msgpack at all": "NotMsgpack",
        msgpack.packb({"type": "audio_chunk", "version": 2, "call_id": good}):
            "UnsupportedVersion",
        msgpack.packb({"type": "audio_chunk", "version": 1, "call_id": good, "channel": 0,
                       "role": "agent", "seq": 0, "capture_time_ms": 0, "offset_ms": 0,
                       "format": "pcm", "sample_rate": 44100, "payload": b"\0\0",
                       "end_of_stream": False}): "SchemaViolation",
    }
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        for value in poison:  # in the good call's partition, before and among its chunks
            await producer.send_and_wait(s.kafka_topic_audio, value, key=good.encode())
    finally:
        await producer.stop()
    await produce_file(path, good, None, False, settings=s, options=EN)
    records = await read_results(
        stack.bootstrap, [s.kafka_topic_transcripts, s.kafka_topic_dead_letters],
        lambda rs: has_summaries(good)(rs) and len(dead_letters(rs)) >= len(poison), timeout=60)
    dead = {d.source_value: d for d in dead_letters(records)}
    for value, code in poison.items():
        d = dead[value]
        assert d.error_code == code and d.reason and d.source_key == good.encode()
        assert d.source_topic == s.kafka_topic_audio and d.source_offset >= 0
        assert d.component == "worker"
    assert "sample_rate" in dead[list(poison)[2]].reason
    fs = finals(records, good)
    (summary,) = summaries(records, good)
    check_exactly_once(fs, summary)
    check_words(" ".join(f.text for f in fs), [["calling", "goodbye"]])
    stack.check_alive()


# --- a worker killed mid-call ------------------------------------------------------------------

LONG = ["Good morning, thank you for calling the support line.",
        "I would like to check the status of my order.",
        "The package was supposed to arrive on Monday.",
        "Please send me a confirmation by email."]
LONG_WORDS = [["morning", "support"], ["status", "order"], ["package", "monday"],
              ["confirmation", "email"]]


async def wait_first_final(bootstrap: str, topic: str, call_id: str, timeout: float = 30) -> None:
    await read_results(bootstrap, [topic], lambda rs: bool(finals(rs, call_id)), timeout)


async def test_worker_killed_mid_call_another_takes_over(stack: Stack, tmp_path: Path) -> None:
    stack.check_alive()
    s = stack.settings
    call_id = f"kill-{uuid.uuid4().hex[:6]}"
    owner = stack.owner(partition_of(call_id))
    other = next(w for w in stack.workers if w is not owner)
    path = speech_call(tmp_path / "long.wav", LONG)
    produce = asyncio.create_task(produce_file(path, call_id, None, True, settings=s,
                                               options=EN))
    await wait_first_final(stack.bootstrap, s.kafka_topic_transcripts, call_id)
    owner.kill()  # SIGKILL: no goodbye, no commit
    killed_at = time.monotonic()
    await produce
    records = await read_results(stack.bootstrap, [s.kafka_topic_transcripts],
                                 has_summaries(call_id), timeout=90)
    took = time.monotonic() - killed_at
    fs = finals(records, call_id)
    (summary,) = summaries(records, call_id)
    check_exactly_once(fs, summary)
    check_words(" ".join(f.text for f in fs), LONG_WORDS)
    assert summary.end_reason == "end_of_stream" and summary.duration_ms > 12000
    resumed = [e for e in other.events()
               if e.get("event") == "call resumed from the table" and e["call_id"] == call_id]
    assert resumed and resumed[0]["sentence_id"] >= 1, other.tail()
    print(f"\nworker killed after final 1 of {len(fs)}; the other worker resumed at sentence "
          f"{resumed[0]['sentence_id']} ({resumed[0]['resume_ms']} ms) and finished the call "
          f"{took:.1f} s after the kill")


# --- the broker restarted mid-call --------------------------------------------------------------

RESTART = ["Hello, I am calling about my electricity bill.",
           "The amount is much higher than last month.",
           "Could you please check my account today?",
           "I will wait for your answer tomorrow."]
RESTART_WORDS = [["electricity", "bill"], ["amount", "month"], ["account", "today"],
                 ["answer", "tomorrow"]]


async def test_broker_restarted_mid_call_nothing_lost(stack: Stack, tmp_path: Path) -> None:
    s = stack.settings
    assert any(w.alive for w in stack.workers)
    call_id = f"restart-{uuid.uuid4().hex[:6]}"
    path = speech_call(tmp_path / "restart.wav", RESTART)
    produce = asyncio.create_task(produce_file(path, call_id, None, True, settings=s,
                                               options=EN))
    # mid-call: the first sentence is transcribed, the producer is still streaming
    await wait_first_final(stack.bootstrap, s.kafka_topic_transcripts, call_id, timeout=60)
    assert not produce.done(), "the call ended before the broker could be restarted mid-call"
    t0 = time.monotonic()
    await asyncio.to_thread(stack.broker.restart)
    restart_s = time.monotonic() - t0
    report = await produce
    records = await read_results(stack.bootstrap, [s.kafka_topic_transcripts],
                                 has_summaries(call_id), timeout=120)
    fs = finals(records, call_id)
    (summary,) = summaries(records, call_id)
    check_exactly_once(fs, summary)
    check_words(" ".join(f.text for f in fs), RESTART_WORDS)
    assert summary.duration_ms == report.audio_ms[0] and summary.end_reason == "end_of_stream"
    assert any(w.alive for w in stack.workers)
    print(f"\nbroker restart took {restart_s:.1f} s mid-call; {len(fs)} finals, none lost")
