"""The worker's rules for what a foreign producer may send, on a REAL broker with the real model.

Every record here is built by hand (a msgpack map) and produced with a plain aiokafka
producer, the way a recorder or an SBC integration would, not through AudioProducer:

- a call that ended stays ended: a duplicate end_of_stream, a late seq, a seq after the end
  or a new channel of the call are dead-lettered (``CallEnded``) and counted ``after_end``,
  never a second summary -- also after the worker restarts (the memory is the worker table);
- the key rule: the Kafka key must be the record's call_id (``KeyMismatch`` otherwise), and a
  call's records must stay in one partition (``PartitionMismatch``); the group's committed
  offsets reach the end of every partition whatever arrived;
- a dead letter always fits under the broker's record size: a ~1 MB poison record is
  dead-lettered truncated with its sha256, size and coordinates; when the dead-letter topic
  takes nothing at all, the failure is logged and the commits still advance;
- the lag figures on the worker's /metrics (committed lag by partition, in-flight audio,
  backlog, oldest call age, sessions).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
import wave
from pathlib import Path

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner
from audiogen import espeak_wav, have_tools, write_wav
from kafka_broker import KafkaBroker, make_kafka_fixture
from pipeline_helpers import (WorkerProcess, dead_letters, has_summaries, pipeline_settings,
                              read_results, scrape, summaries, wait_until)

from callscribe.pipeline.topics import ensure_topics

rules_broker = make_kafka_fixture(scope="module")
PARTITIONS = 2
CHUNK = 3200  # 100 ms of 16 kHz pcm


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> bytes:
    """A short spoken sentence as 16 kHz pcm (with silence around it)."""
    if not have_tools("espeak-ng", "sox"):
        pytest.skip("espeak-ng and sox are needed")
    d = tmp_path_factory.mktemp("speech")
    wav = espeak_wav("Thank you for calling, goodbye.", d / "s.wav")
    with wave.open(str(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    pad = np.zeros(8000, np.float32)
    out = write_wav(d / "call.wav", np.concatenate([pad, pcm, pad, pad]), 16000)
    with wave.open(str(out)) as w:
        return w.readframes(w.getnframes())


class Stack:
    def __init__(self, broker: KafkaBroker, settings, worker: WorkerProcess, logs: Path):
        self.broker, self.settings, self.worker, self.logs = broker, settings, worker, logs

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def restart_worker(self) -> None:
        assert self.worker.stop() == 0, self.worker.tail()
        self.worker = WorkerProcess(self.settings, self.worker.log_path).start()
        self.worker.wait_assigned(90, want=lambda p: len(p) == PARTITIONS)


@pytest.fixture(scope="module")
def stack(rules_broker: KafkaBroker, tmp_path_factory) -> Stack:
    settings = pipeline_settings(rules_broker.bootstrap, partitions=PARTITIONS,
                                 kafka_worker_idle_timeout_s=8.0)
    asyncio.run(ensure_topics(None, settings, deadline_s=30))
    logs = tmp_path_factory.mktemp("rules")
    stack = Stack(rules_broker, settings, WorkerProcess(settings, logs / "worker.log").start(),
                  logs)
    try:
        stack.worker.wait_assigned(90, want=lambda p: len(p) == PARTITIONS)
        yield stack
    finally:
        stack.worker.stop()  # the current one (a test restarts it)


def partition_of(call_id: str) -> int:
    parts = list(range(PARTITIONS))
    return DefaultPartitioner()(call_id.encode(), parts, parts)


def chunk(call_id: str, seq: int, payload: bytes, *, channel: int = 0, eos: bool = False,
          **extra) -> bytes:
    """An AudioChunk as a foreign producer builds it: a plain msgpack map."""
    rec = {"type": "audio_chunk", "version": 1, "call_id": call_id, "channel": channel,
           "role": "customer", "seq": seq, "capture_time_ms": int(time.time() * 1000),
           "offset_ms": seq * 100, "format": "pcm", "sample_rate": 16000, "payload": payload,
           "end_of_stream": eos}
    if seq == 0:
        rec["options"] = {"language_hints": ["en"]}
    rec.update(extra)
    return msgpack.packb(rec, use_bin_type=True)


def call_records(call_id: str, pcm: bytes, channel: int = 0) -> list[bytes]:
    pieces = [pcm[i:i + CHUNK] for i in range(0, len(pcm), CHUNK)]
    out = [chunk(call_id, i, p, channel=channel) for i, p in enumerate(pieces)]
    return out + [chunk(call_id, len(pieces), b"", channel=channel, eos=True)]


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]],
                  partition: int | None = None, **kw) -> list[tuple[int, int]]:
    """(key, value) records with a plain aiokafka producer; their (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **kw)
    await producer.start()
    try:
        out = []
        for key, value in records:
            md = await producer.send_and_wait(topic, value, key=key, partition=partition)
            out.append((md.partition, md.offset))
        return out
    finally:
        await producer.stop()


async def committed_at_end(bootstrap: str, group: str, topic: str) -> dict[int, tuple]:
    """{partition: (committed, end)} of the audio topic for the worker group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: (committed[tp].offset if tp in committed else None, ends[tp])
                for tp in tps}
    finally:
        await consumer.stop()
        await admin.close()


async def wait_committed_to_end(stack: Stack, timeout: float = 60) -> None:
    s = stack.settings
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = await committed_at_end(stack.bootstrap, s.kafka_worker_group, s.kafka_topic_audio)
        if all((c or 0) == e for c, e in last.values()):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"commits did not reach the end of every partition: {last}")


def after_end_count(url: str) -> float:
    return scrape(url).get("callscribe_worker_chunks_total", {}).get(
        (("outcome", "after_end"),), 0.0)


# --- a fresh start ----------------------------------------------------------------------------


def test_a_fresh_start_is_quiet_and_only_checks_topics(stack: Stack, tmp_path: Path) -> None:
    """The module's worker started on a fresh broker: no ERROR (nor a warning about the group
    coordinator or a partition leader, which a fresh cluster elects); and a worker whose
    topics are missing stops at once, naming the topic and the command that creates it."""
    noisy = [e for e in stack.worker.events()
             if e.get("level") == "error" or e.get("level") == "warning" and any(
                 t in e.get("event", "") for t in ("Coordinator", "coordinator", "NotLeader"))]
    assert not noisy, noisy
    # faust's data directory is under the configured data dir, not the working directory
    group = stack.settings.kafka_worker_group
    assert (stack.settings.kafka_worker_data_dir / f"{group}-data").is_dir()
    assert not (Path.cwd() / f"{group}-data").exists()
    missing = pipeline_settings(stack.bootstrap, partitions=PARTITIONS)
    w = WorkerProcess(missing, tmp_path / "missing.log").start()
    assert w.proc.wait(120) == 2
    text = w.log_path.read_text()
    assert missing.kafka_topic_audio in text and "callscribe topics create" in text
    w.stop()
    # serve --kafka only checks too
    from callscribe.pipeline.kafka_stream import KafkaPipeline
    from callscribe.pipeline.topics import TopicsMissing

    with pytest.raises(TopicsMissing) as err:
        asyncio.run(KafkaPipeline(missing).start())
    assert missing.kafka_topic_transcripts in err.value.message
    assert "callscribe topics create" in err.value.message
    assert not asyncio.run(topic_exists(stack.bootstrap, missing.kafka_topic_audio))


async def topic_exists(bootstrap: str, name: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return name in await admin.list_topics()
    finally:
        await admin.close()


# --- 1. a call that ended stays ended --------------------------------------------------------


async def test_late_and_duplicate_records_never_reopen_an_ended_call(stack: Stack,
                                                                    speech: bytes) -> None:
    s = stack.settings
    call = f"ended-{uuid.uuid4().hex[:6]}"
    key = call.encode()
    records = call_records(call, speech)
    eos_seq = len(records) - 1
    await produce(stack.bootstrap, s.kafka_topic_audio, [(key, v) for v in records])
    got = await read_results(stack.bootstrap, [s.kafka_topic_transcripts], has_summaries(call),
                             timeout=90)
    (first,) = summaries(got, call)
    assert first.sentence_count >= 1
    before = after_end_count(stack.worker.metrics_url())
    # what a telephony estate sends sooner or later: the end again, a late chunk, a chunk after
    # the end, and a channel the call never had
    late = [records[-1], records[-1], chunk(call, 10, speech[:CHUNK]),
            chunk(call, eos_seq + 5, speech[:CHUNK]), chunk(call, 0, speech[:CHUNK], channel=1)]
    placed = await produce(stack.bootstrap, s.kafka_topic_audio, [(key, v) for v in late])
    # a marker call in the same partition after them: once it is summarised, the worker has
    # handled every late record (a partition is read in order)
    marker = f"marker-{uuid.uuid4().hex[:6]}"
    while partition_of(marker) != partition_of(call):
        marker = f"marker-{uuid.uuid4().hex[:6]}"
    await produce(stack.bootstrap, s.kafka_topic_audio,
                  [(marker.encode(), v) for v in call_records(marker, speech)])
    got = await read_results(
        stack.bootstrap, [s.kafka_topic_transcripts, s.kafka_topic_dead_letters],
        lambda rs: has_summaries(marker)(rs) and sum(
            d.call_id == call for d in dead_letters(rs)) >= len(late), timeout=90)
    assert summaries(got, call) == [first], "one summary per call"
    dead = sorted((d for d in dead_letters(got) if d.call_id == call),
                  key=lambda d: d.source_offset)
    assert [(d.source_partition, d.source_offset) for d in dead] == placed
    assert {d.error_code for d in dead} == {"CallEnded"}
    assert all(d.source_key == key and d.source_value == v for d, v in zip(dead, late))
    assert "end_of_stream" in dead[0].reason and "seq 10" in dead[2].reason
    url = stack.worker.metrics_url()
    assert after_end_count(url) - before == len(late)
    assert not any(e.get("event", "").startswith("channel starts mid-stream")
                   for e in stack.worker.events())

    # the memory of ended calls is the worker table: it survives a restart
    await wait_committed_to_end(stack)
    stack.restart_worker()
    (again,) = await produce(stack.bootstrap, s.kafka_topic_audio, [(key, records[-1])])
    got = await read_results(
        stack.bootstrap, [s.kafka_topic_transcripts, s.kafka_topic_dead_letters],
        lambda rs: any(d.source_offset == again[1] and d.call_id == call
                       for d in dead_letters(rs)), timeout=90)
    assert summaries(got, call) == [first]
    (d,) = [d for d in dead_letters(got) if d.source_offset == again[1]]
    assert d.error_code == "CallEnded"
    await wait_committed_to_end(stack)


# --- 2. the key rule, and commits that advance on every partition ----------------------------


async def test_key_must_be_the_call_id_and_commits_advance_everywhere(stack: Stack,
                                                                      speech: bytes) -> None:
    s = stack.settings
    call = f"keyed-{uuid.uuid4().hex[:6]}"
    home = partition_of(call)
    other = 1 - home
    records = call_records(call, speech)
    # the call's first half in its partition; then what a misconfigured producer sends
    half = len(records) // 2
    await produce(stack.bootstrap, s.kafka_topic_audio,
                  [(call.encode(), v) for v in records[:half]], partition=home)
    bad = [
        (None, chunk(call, half, speech[:CHUNK]), other, "KeyMismatch"),  # no key
        (b"not-the-call", chunk(call, half, speech[:CHUNK]), other, "KeyMismatch"),
        (b"not-the-call", chunk(call, half, speech[:CHUNK]), home, "KeyMismatch"),
        # right key, wrong partition (a hand-picked partition): the call is open on `home`
        (call.encode(), records[half], other, "PartitionMismatch"),
    ]
    placed = []
    for key, value, part, _ in bad:
        placed += await produce(stack.bootstrap, s.kafka_topic_audio, [(key, value)],
                                partition=part)
    await produce(stack.bootstrap, s.kafka_topic_audio,
                  [(call.encode(), v) for v in records[half:]], partition=home)
    got = await read_results(
        stack.bootstrap, [s.kafka_topic_transcripts, s.kafka_topic_dead_letters],
        lambda rs: has_summaries(call)(rs) and sum(
            (d.source_partition, d.source_offset) in placed for d in dead_letters(rs))
        >= len(bad), timeout=90)
    (summary,) = summaries(got, call)
    assert summary.sentence_count >= 1
    dead = {(d.source_partition, d.source_offset): d for d in dead_letters(got)}
    for (key, value, _part, code), where in zip(bad, placed):
        d = dead[where]
        assert d.error_code == code, (code, d.reason)
        assert d.source_key == key and d.source_value == value
    assert "call_id" in dead[placed[0]].reason and "(none)" in dead[placed[0]].reason
    assert f"open on partition {home}" in dead[placed[3]].reason
    await wait_committed_to_end(stack)
    # the stock CLI tools (scripts/kafka.sh wrappers over the installed jars) agree: LAG 0
    out = kafka_tool("consumer-groups", "--bootstrap-server", stack.bootstrap, "--describe",
                     "--group", s.kafka_worker_group)
    rows = [line.split() for line in out.splitlines() if s.kafka_topic_audio in line]
    assert sorted(int(r[2]) for r in rows) == list(range(PARTITIONS)), out
    assert all(r[5] == "0" for r in rows), out  # GROUP TOPIC PARTITION CURRENT END LAG
    out = kafka_tool("topics", "--bootstrap-server", stack.bootstrap, "--describe", "--topic",
                     s.kafka_topic_audio)
    assert f"PartitionCount: {PARTITIONS}" in out


def kafka_tool(*args: str) -> str:
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"
    done = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# --- 3. a dead letter always fits ------------------------------------------------------------


async def test_a_dead_letter_always_fits_and_never_stops_commits(stack: Stack) -> None:
    s = stack.settings
    call = f"big-{uuid.uuid4().hex[:6]}"
    # ~1 MB: the broker takes it (max.message.bytes 1048588), the schema does not (payload
    # over 256 KiB), and the dead letter of record + reason would be over the broker's limit
    big = chunk(call, 0, b"\x01\x00" * 524_000)
    assert 1_048_000 < len(big) < 1_048_400
    (where,) = await produce(stack.bootstrap, s.kafka_topic_audio, [(call.encode(), big)],
                             max_request_size=2 << 20)
    got = await read_results(stack.bootstrap, [s.kafka_topic_dead_letters],
                             lambda rs: any(d.source_offset == where[1] and d.call_id == call
                                            for d in dead_letters(rs)), timeout=60)
    (d,) = [d for d in dead_letters(got) if d.call_id == call]
    assert d.error_code == "SchemaViolation" and "payload" in d.reason
    assert (d.source_topic, d.source_partition, d.source_offset) == (
        s.kafka_topic_audio, where[0], where[1])
    assert d.source_key == call.encode()
    assert d.source_value_size == len(big)
    assert d.source_value_sha256 == hashlib.sha256(big).hexdigest()
    assert 0 < len(d.source_value) < len(big) and big.startswith(d.source_value)
    assert "truncated" in d.reason
    await wait_committed_to_end(stack)

    # a dead-letter topic that takes nothing (max.message.bytes below any dead letter): the
    # failure is logged with the coordinates, and the partition's commits still advance
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC,
                                                  s.kafka_topic_dead_letters,
                                                  configs={"max.message.bytes": "100"})])
    finally:
        await admin.close()
    refused = f"refused-{uuid.uuid4().hex[:6]}"
    placed = await produce(stack.bootstrap, s.kafka_topic_audio,
                           [(refused.encode(), big), (b"\xc1 not msgpack", b"\xc1 junk")],
                           max_request_size=2 << 20)
    await wait_committed_to_end(stack)
    failures = wait_until(lambda: [e for e in stack.worker.events()
                                   if e.get("event", "").startswith("dead letter could not")],
                          30, "the failed dead letters are logged")
    logged = {(e["source_partition"], e["source_offset"]) for e in failures}
    assert set(placed) <= logged
    big_failure = next(e for e in failures if e["source_offset"] == placed[0][1])
    assert big_failure["source_value_sha256"] == hashlib.sha256(big).hexdigest()
    text = stack.worker.log_path.read_text(errors="replace")
    assert "Task exception was never retrieved" not in text
    assert scrape(stack.worker.metrics_url())[
        "callscribe_worker_dead_letter_failures_total"][()] >= 2
    assert stack.worker.alive


# --- 4. the lag figures on /metrics ----------------------------------------------------------


def gauge(metrics: dict, name: str, labels: tuple = ()) -> float | None:
    return metrics.get(name, {}).get(labels)


async def test_lag_figures_are_on_the_workers_metrics(stack: Stack, speech: bytes) -> None:
    """~40 s of one call's audio produced at once (no end yet): the worker holds one session,
    its backlog and in-flight audio rise and the call has an age; after the end every figure
    goes back to 0 and the committed lag of the call's partition agrees with the broker."""
    s = stack.settings
    call = f"lag-{uuid.uuid4().hex[:6]}"
    p = partition_of(call)
    records = call_records(call, speech * 12)
    await produce(stack.bootstrap, s.kafka_topic_audio,
                  [(call.encode(), v) for v in records[:-1]])
    url = stack.worker.metrics_url()

    def busy() -> dict | None:
        m = scrape(url)
        ok = (gauge(m, "callscribe_worker_sessions") == 1
              and (gauge(m, "callscribe_worker_backlog_audio_seconds") or 0) > 2
              and (gauge(m, "callscribe_worker_inflight_audio_seconds") or 0) > 0
              and (gauge(m, "callscribe_worker_oldest_call_age_seconds") or 0) > 0
              and (("partition", str(p)),) in m.get("callscribe_worker_committed_lag", {}))
        return m if ok else None

    m = await asyncio.to_thread(wait_until, busy, 60, "the worker shows the call in flight")
    # partition labels: the assigned audio partitions only (a closed set)
    for name in ("callscribe_worker_committed_lag", "callscribe_worker_consumer_lag"):
        assert {dict(k)["partition"] for k in m[name]} <= {str(i) for i in range(PARTITIONS)}
    await produce(stack.bootstrap, s.kafka_topic_audio, [(call.encode(), records[-1])])
    await read_results(stack.bootstrap, [s.kafka_topic_transcripts], has_summaries(call),
                       timeout=120)
    await wait_committed_to_end(stack)

    def idle() -> dict | None:
        m = scrape(url)
        ok = (gauge(m, "callscribe_worker_sessions") == 0
              and gauge(m, "callscribe_worker_backlog_audio_seconds") == 0
              and gauge(m, "callscribe_worker_inflight_audio_seconds") == 0
              and gauge(m, "callscribe_worker_oldest_call_age_seconds") == 0
              and gauge(m, "callscribe_worker_committed_lag", (("partition", str(p)),)) == 0)
        return m if ok else None

    await asyncio.to_thread(wait_until, idle, 30, "every figure back to 0 after the call")
