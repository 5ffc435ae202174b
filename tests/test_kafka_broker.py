"""The real Kafka broker of scripts/kafka.sh, driven through tests/kafka_broker.py, with aiokafka:
create a topic, produce keyed messages, consume them, restart the broker, find them again."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_broker import KafkaBroker, make_kafka_fixture

# its own broker (module scope): this test restarts it
kafka_broker = make_kafka_fixture(scope="module")

N = 10
PARTITIONS = 3


async def _consume(
    bootstrap: str, topic: str, count: int, *, group: str | None, timeout: float = 30
) -> list[tuple[bytes, bytes, int]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[bytes, bytes, int]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < count and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got.extend((r.key, r.value, r.partition) for r in records)
        if group is not None and got:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _produce(
    bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        request_timeout_ms=20000,
        retry_backoff_ms=200,
    )
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_produce_consume_restart(kafka_broker: KafkaBroker) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = f"calls-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=topic, num_partitions=PARTITIONS, replication_factor=1)]
        )
        # the broker's metadata cache learns of a new topic a moment after the controller
        deadline = asyncio.get_running_loop().time() + 30
        while topic not in await admin.list_topics():
            assert asyncio.get_running_loop().time() < deadline, f"{topic} never listed"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()

    sent = [(f"agent-{i % 4}".encode(), f"chunk-{i}".encode()) for i in range(N)]
    await _produce(bootstrap, topic, sent)

    got = await _consume(bootstrap, topic, N, group=group)
    assert sorted((k, v) for k, v, _ in got) == sorted(sent)
    # same key -> same partition; these 4 keys hash (murmur2) onto all 3 partitions
    by_key: dict[bytes, set[int]] = {}
    for k, _, p in got:
        by_key.setdefault(k, set()).add(p)
    assert all(len(ps) == 1 for ps in by_key.values())
    assert {p for _, _, p in got} == set(range(PARTITIONS))

    # restart on the same port and data dir (blocking script: keep the event loop free)
    await asyncio.to_thread(kafka_broker.restart)
    assert kafka_broker.bootstrap == bootstrap
    assert kafka_broker.is_running()

    # the messages survived the restart
    again = await _consume(bootstrap, topic, N, group=None)
    assert sorted((k, v) for k, v, _ in again) == sorted(sent)

    # and a new produce works; the committed group offsets survived too, so the old group
    # resumes after the first 10 and sees only the new message
    await _produce(bootstrap, topic, [(b"call-new", b"after-restart")])
    resumed = await _consume(bootstrap, topic, 1, group=group)
    assert [(k, v) for k, v, _ in resumed] == [(b"call-new", b"after-restart")]

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        assert sum(ends.values()) == N + 1
    finally:
        await consumer.stop()
