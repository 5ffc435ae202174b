"""The audio producer against a REAL Kafka broker (scripts/kafka.sh via tests/kafka_broker.py):
a stereo call produced, consumed back and compared sample for sample; the broker stopped ->
BrokerUnavailable within the deadline; the broker back -> producing works again."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from audiogen import espeak_wav, have_tools, silence, tone, write_wav
from kafka_broker import KafkaBroker, kafka_unavailable_reason, make_kafka_fixture

from callscribe.errors import ConfigurationError
from callscribe.pipeline.codec import CodecError
from callscribe.pipeline.codec import AudioChunk, AudioOptions, HotwordOption, decode
from callscribe.pipeline.producer import AudioProducer, BrokerUnavailable, produce_file
from callscribe.pipeline.topics import client_kwargs, ensure_topics, topic_specs
from callscribe.settings import load_settings
from callscribe.tracing import TRACE_HEADERS

# its own broker: the last test stops and restarts it
kafka_broker = make_kafka_fixture(scope="module")

CALL_PARTITIONS = 3


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """int16 (channels, n) and the rate, straight from the file."""
    with wave.open(str(path), "rb") as w:
        ch, rate = w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.reshape(-1, ch).T.copy(), rate


@pytest.fixture(scope="module")
def stereo_call(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Two espeak utterances, agent on the left, then customer on the right, 16 kHz."""
    if not have_tools("espeak-ng", "sox"):
        pytest.skip("espeak-ng and sox are needed to make the test call")
    d = tmp_path_factory.mktemp("call")
    agent, _ = read_wav(espeak_wav("Thank you for calling, how can I help?", d / "a.wav", 16000))
    customer, _ = read_wav(espeak_wav("My internet has been down since Monday.", d / "c.wav",
                                      16000))
    a, c = agent[0].astype(np.float32) / 32768, customer[0].astype(np.float32) / 32768
    gap = silence(0.3, 16000)
    left = np.concatenate([a, gap, np.zeros_like(c)])
    right = np.concatenate([np.zeros_like(a), gap, c])
    path = write_wav(d / "call.wav", np.stack([left, right]), 16000)
    pcm, rate = read_wav(path)
    assert pcm.shape[0] == 2 and rate == 16000
    return path, pcm


def make_settings(broker: KafkaBroker, **kw):
    tag = uuid.uuid4().hex[:8]
    base = dict(kafka_bootstrap=broker.bootstrap, kafka_topic_audio=f"t-{tag}.audio",
                kafka_topic_transcripts=f"t-{tag}.transcripts",
                kafka_topic_partials=f"t-{tag}.partials",
                kafka_topic_dead_letters=f"t-{tag}.dead", kafka_topic_analytics=f"t-{tag}.analytics",
                kafka_audio_partitions=CALL_PARTITIONS,
                kafka_transcripts_partitions=CALL_PARTITIONS, kafka_partials_enabled=False,
                kafka_deadline_s=20.0)
    base.update(kw)
    return load_settings(**base)


async def consume_calls(bootstrap: str, topic: str, eos_expected: int,
                        timeout: float = 30) -> list[tuple[bytes, int, AudioChunk, dict]]:
    """(key, partition, chunk, headers) from the start of ``topic`` until ``eos_expected``
    end-of-stream chunks have been seen."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[bytes, int, AudioChunk, dict]] = []
    try:
        end = time.monotonic() + timeout
        while sum(c.end_of_stream for _, _, c, _ in out) < eos_expected:
            assert time.monotonic() < end, f"only {len(out)} records after {timeout}s"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    out.append((r.key, r.partition, decode(r.value, AudioChunk), dict(r.headers)))
    finally:
        await consumer.stop()
    return out


def check_call(records, call_id: str, roles: tuple[str, ...], pcm: np.ndarray, rate: int,
               options: AudioOptions | None) -> None:
    mine = [r for r in records if r[2].call_id == call_id]
    assert {k for k, *_ in mine} == {call_id.encode()}
    assert len({p for _, p, _, _ in mine}) == 1, "all channels of a call in one partition"
    step = rate // 10
    for ch, role in enumerate(roles):
        chunks = [c for _, _, c, _ in mine if c.channel == ch]  # in partition (= send) order
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        assert {c.role for c in chunks} == {role}
        assert {(c.format, c.sample_rate) for c in chunks} == {("pcm", rate)}
        assert [c.end_of_stream for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert chunks[-1].payload == b""
        assert chunks[0].options == options
        assert all(c.options is None for c in chunks[1:])
        assert all(len(c.payload) == 2 * step for c in chunks[:-2])  # 100 ms each
        assert [c.offset_ms for c in chunks] == [100 * c.seq for c in chunks]
        got = np.frombuffer(b"".join(c.payload for c in chunks), dtype="<i2")
        np.testing.assert_array_equal(got, pcm[ch])


async def test_stereo_call_round_trip(kafka_broker: KafkaBroker, stereo_call) -> None:
    path, pcm = stereo_call
    settings = make_settings(kafka_broker)
    created = await ensure_topics(kafka_broker.bootstrap, settings, deadline_s=30)
    specs = topic_specs(settings)
    assert created == {s.name: "created" for s in specs.values()}
    assert await ensure_topics(None, settings) == {s.name: "exists" for s in specs.values()}

    options = AudioOptions(language_hints=("en",), vocabulary_id="vocab-telco")
    call_id = f"call-{uuid.uuid4().hex[:6]}"
    report = await produce_file(path, call_id, ["agent", "customer"], settings=settings,
                                options=options)
    n = -(-pcm.shape[1] // 1600) + 1  # full + last partial chunk + end of stream
    assert report.chunks == [n, n] and report.roles == ("agent", "customer")
    assert report.sample_rate == 16000

    records = await consume_calls(kafka_broker.bootstrap, settings.kafka_topic_audio, 2)
    assert len(records) == 2 * n
    check_call(records, call_id, ("agent", "customer"), pcm, 16000, options)
    assert {p for _, p, _, _ in records} == {report.partition}
    # the schema headers; plus W3C trace context when a tracer provider is set in this process
    # (test_tracing.py sets one; without a provider nothing is injected)
    schema = {k: v for k, v in records[0][3].items() if k not in TRACE_HEADERS}
    assert schema == {"record-type": b"audio_chunk", "schema-version": b"1"}
    # the two channels advance together, as in a live call
    assert [c.channel for _, _, c, _ in records[:4]] == [0, 1, 0, 1]


async def test_one_producer_many_calls_realtime_8k(kafka_broker: KafkaBroker,
                                                   tmp_path: Path) -> None:
    """A mono 8 kHz recording stays 8 kHz (role 'mixed' by default); --realtime works (its
    pacing is not timed here); calls with different ids spread over the partitions."""
    settings = make_settings(kafka_broker)
    await ensure_topics(None, settings)
    path = write_wav(tmp_path / "mono8k.wav", np.concatenate([tone(440, 0.35, 8000),
                                                              silence(0.1, 8000)]), 8000)
    pcm, _ = read_wav(path)
    ids = [f"c{i}-{uuid.uuid4().hex[:4]}" for i in range(6)]
    async with AudioProducer(settings) as producer:
        for i, call_id in enumerate(ids):
            report = await produce_file(path, call_id, realtime=(i == 0), settings=settings,
                                        producer=producer)
            assert report.roles == ("mixed",) and report.sample_rate == 8000
            assert report.chunks == [6]  # 4 x 100 ms + 50 ms + end of stream
    records = await consume_calls(kafka_broker.bootstrap, settings.kafka_topic_audio, len(ids))
    for call_id in ids:
        check_call(records, call_id, ("mixed",), pcm, 8000, None)
    assert len({p for _, p, _, _ in records}) > 1


@pytest.mark.parametrize("fmt,rate,channels", [("mp3", 16000, 2), ("opus", 16000, 2),
                                               ("m4a", 16000, 2), ("amr", 8000, 1),
                                               ("mulaw", 8000, 2)])
async def test_compressed_formats(kafka_broker: KafkaBroker, stereo_call, tmp_path: Path,
                                  fmt: str, rate: int, channels: int) -> None:
    """Any supported format: decoded by the producer into per-channel pcm at 8 or 16 kHz,
    exactly what the library's decoder makes of the file."""
    from audiogen import encode

    from callscribe.audio import decode_bytes

    if not have_tools("ffmpeg"):
        pytest.skip("ffmpeg is needed to encode the test call")
    src = encode(stereo_call[0], fmt, tmp_path / f"call.{fmt}",
                 rate=8000 if fmt in ("amr", "mulaw") else None)
    kw = {"audio_format": "mulaw", "sample_rate": 8000,  # headerless: roles give the channels
          "channels_roles": ["agent", "customer"]} if fmt == "mulaw" else {}
    settings = make_settings(kafka_broker)
    await ensure_topics(None, settings)
    call_id = f"{fmt}-{uuid.uuid4().hex[:6]}"
    report = await produce_file(src, call_id, settings=settings, **kw)
    assert report.sample_rate == rate and len(report.roles) == channels
    expect = decode_bytes(src.read_bytes(), fmt, kw.get("sample_rate"),
                          channels if fmt == "mulaw" else None, target_rate=rate)
    expect = np.clip(np.rint(expect * 32768.0), -32768, 32767).astype("<i2")
    records = await consume_calls(kafka_broker.bootstrap, settings.kafka_topic_audio, channels)
    check_call(records, call_id, report.roles, expect, rate, None)


async def test_roles_must_match_channels(kafka_broker: KafkaBroker, stereo_call) -> None:
    settings = make_settings(kafka_broker)
    with pytest.raises(ConfigurationError, match="has 2 channel"):
        await produce_file(stereo_call[0], "x", ["agent"], settings=settings)
    with pytest.raises(CodecError, match="/call_id"):
        await produce_file(stereo_call[0], "bad id", ["agent", "customer"], settings=settings)


def test_cli_produce(kafka_broker: KafkaBroker, stereo_call, capsys) -> None:
    from callscribe.cli_produce import add_produce_parser

    from callscribe.cli_topics import add_topics_parser

    settings = make_settings(kafka_broker)
    parser = argparse.ArgumentParser(prog="callscribe")
    sub = parser.add_subparsers(dest="command", required=True)
    add_produce_parser(sub)
    add_topics_parser(sub)
    call_id = f"cli-{uuid.uuid4().hex[:6]}"
    produce = ["produce", "--call-id", call_id, str(stereo_call[0]),
               "--bootstrap", kafka_broker.bootstrap]
    # the producer only checks: a missing topic is an error naming it and the command
    args = parser.parse_args(produce)
    with pytest.raises(ConfigurationError) as err:
        args.func(args, settings)
    assert settings.kafka_topic_audio in err.value.message
    assert "callscribe topics create" in err.value.message
    args = parser.parse_args(["topics", "check", "--bootstrap", kafka_broker.bootstrap])
    with pytest.raises(ConfigurationError):
        args.func(args, settings)
    for action in ("create", "check"):
        args = parser.parse_args(["topics", action, "--bootstrap", kafka_broker.bootstrap])
        assert args.func(args, settings) == 0
        status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert status == {t: "created" if action == "create" else "exists" for t in (
            settings.kafka_topic_audio, settings.kafka_topic_transcripts,
            settings.kafka_topic_dead_letters, settings.kafka_topic_analytics)}
    args = parser.parse_args(["produce", "--call-id", call_id, str(stereo_call[0]),
                              "--channels", ",customer", "--language", "en,de",
                              "--hotword", "Dashwood:5", "--hotword", "滨海新区",
                              "--bootstrap", kafka_broker.bootstrap])
    assert args.func(args, settings) == 0
    # the last line (unconfigured structlog also writes to stdout; the real CLI logs to stderr)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["call_id"] == call_id and out["roles"] == ["", "customer"]
    assert out["chunks"][0] == 0 and out["chunks"][1] > 10
    records = asyncio.run(consume_calls(kafka_broker.bootstrap, settings.kafka_topic_audio, 1))
    assert {c.channel for _, _, c, _ in records} == {1}
    first = records[0][2]
    # the workers have no vocabulary database: the hotwords travel with the call
    assert first.options == AudioOptions(language_hints=("en", "de"), hotwords=(
        HotwordOption("Dashwood", 5), HotwordOption("滨海新区", 4)))


async def test_outage_shorter_than_the_deadline_loses_nothing(kafka_broker: KafkaBroker) -> None:
    """The broker restarts while chunks are queued: they are retried and land once, in order."""
    settings = make_settings(kafka_broker, kafka_deadline_s=90.0)
    await ensure_topics(None, settings)

    def chunk(seq: int) -> AudioChunk:
        return AudioChunk("blip", 0, "agent", seq, 0, seq * 100, "pcm", 16000,
                          seq.to_bytes(2, "little") * 1600, end_of_stream=seq == 39)

    async with AudioProducer(settings) as producer:
        for seq in range(20):
            await producer.send(chunk(seq))
        await producer.flush()
        await asyncio.to_thread(kafka_broker.stop)
        back = asyncio.create_task(asyncio.to_thread(kafka_broker.start))
        for seq in range(20, 40):  # queued (or waiting for room) while the broker is away
            await producer.send(chunk(seq))
        await back
    assert producer.acked == 40
    records = await consume_calls(kafka_broker.bootstrap, settings.kafka_topic_audio, 1)
    assert [c for _, _, c, _ in records] == [chunk(seq) for seq in range(40)]


async def test_broker_gone_then_back(kafka_broker: KafkaBroker, stereo_call) -> None:
    deadline = 3.0
    settings = make_settings(kafka_broker, kafka_deadline_s=deadline)
    await ensure_topics(None, settings)
    path, pcm = stereo_call
    call_id = f"down-{uuid.uuid4().hex[:6]}"

    def chunk(seq: int) -> AudioChunk:
        return AudioChunk("before", 0, "agent", seq, 0, seq * 100, "pcm", 16000, b"\0\0" * 1600)

    producer = AudioProducer(settings)
    await producer.start()
    await producer.send(chunk(0))
    await producer.flush()
    assert producer.acked == 1

    # the broker goes away while the producer is connected
    await asyncio.to_thread(kafka_broker.stop)
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        for seq in range(1, 50):
            await producer.send(chunk(seq))
        await producer.flush()
    elapsed = time.monotonic() - t0
    assert elapsed < deadline + 2, elapsed
    msg = info.value.message
    assert kafka_broker.bootstrap in msg and "3 s deadline" in msg and info.value.retriable
    t0 = time.monotonic()
    await producer.stop()  # does not wait for the broker
    assert time.monotonic() - t0 < 5
    with pytest.raises(BrokerUnavailable):  # the producer stays failed
        await producer.send(chunk(99))

    # a new producer cannot even connect: a clear error within the deadline
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="did not answer within 3 s"):
        await produce_file(path, call_id, ["agent", "customer"], settings=settings)
    assert time.monotonic() - t0 < deadline + 2

    # the broker is back: producing works again
    await asyncio.to_thread(kafka_broker.start)
    settings = make_settings(kafka_broker, kafka_topic_audio=settings.kafka_topic_audio)
    report = await produce_file(path, call_id, ["agent", "customer"], settings=settings)
    records = await consume_calls(kafka_broker.bootstrap, settings.kafka_topic_audio, 2)
    mine = [r for r in records if r[2].call_id == call_id]
    assert len(mine) == sum(report.chunks)
    check_call(records, call_id, ("agent", "customer"), pcm, 16000, None)


# --- security settings -----------------------------------------------------------------------

SASL_PROPS = "\n".join([
    "listener.security.protocol.map=PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
    "sasl.enabled.mechanisms=PLAIN",
    "sasl.mechanism.inter.broker.protocol=PLAIN",
    "listener.name.plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain."
    'PlainLoginModule required username="admin" password="admin-pw" user_admin="admin-pw" '
    'user_callscribe="s3cret";',
])


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory):
    """A second real broker whose client listener wants SASL/PLAIN."""
    reason = kafka_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-sasl"),
                         env={"CALLSCRIBE_KAFKA_EXTRA_PROPS": SASL_PROPS})
    broker.start()
    yield broker
    broker.stop()


async def test_sasl_plain(sasl_broker: KafkaBroker, stereo_call) -> None:
    path, pcm = stereo_call
    settings = make_settings(sasl_broker, kafka_security_protocol="SASL_PLAINTEXT",
                             kafka_sasl_mechanism="PLAIN", kafka_sasl_username="callscribe",
                             kafka_sasl_password="s3cret")
    await ensure_topics(None, settings)
    report = await produce_file(path, "sasl-call", settings=settings)  # default roles
    assert report.roles == ("agent", "customer")
    kw = client_kwargs(settings)
    consumer = AIOKafkaConsumer(settings.kafka_topic_audio, auto_offset_reset="earliest",
                                enable_auto_commit=False, **kw)
    await consumer.start()
    try:
        got = []
        while sum(c.end_of_stream for c in got) < 2:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                got.extend(decode(r.value, AudioChunk) for r in records)
    finally:
        await consumer.stop()
    check_call([(b"sasl-call", 0, c, {}) for c in got], "sasl-call", ("agent", "customer"), pcm,
               16000, None)

    # a wrong password is a configuration error at once, not a wait for the deadline
    wrong = settings.model_copy(update={"kafka_sasl_password": "nope"})
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError, match="SaslAuthenticationFailed"):
        await produce_file(path, "sasl-call-2", settings=wrong)
    with pytest.raises(ConfigurationError, match="SaslAuthenticationFailed"):
        await ensure_topics(None, wrong)
    assert time.monotonic() - t0 < settings.kafka_deadline_s


def test_client_kwargs_checks_security_settings(tmp_path: Path) -> None:
    plain = client_kwargs(load_settings(kafka_bootstrap="a:1, b:2"))
    assert plain == {"bootstrap_servers": ["a:1", "b:2"], "security_protocol": "PLAINTEXT"}
    with pytest.raises(ConfigurationError, match="CALLSCRIBE_KAFKA_SASL_USERNAME"):
        client_kwargs(load_settings(kafka_security_protocol="SASL_SSL"))
    with pytest.raises(ConfigurationError, match="use SSL or SASL_SSL"):
        client_kwargs(load_settings(kafka_ssl_cafile=tmp_path / "ca.pem"))
    with pytest.raises(ConfigurationError, match="is not a file"):
        client_kwargs(load_settings(kafka_security_protocol="SSL",
                                    kafka_ssl_cafile=tmp_path / "missing.pem"))
    (tmp_path / "c.pem").write_text("not used")
    with pytest.raises(ConfigurationError, match="go together"):
        client_kwargs(load_settings(kafka_security_protocol="SSL",
                                    kafka_ssl_certfile=tmp_path / "c.pem"))
    scram = client_kwargs(load_settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="u", kafka_sasl_password="p", kafka_ssl_check_hostname=False))
    assert (scram["sasl_mechanism"], scram["sasl_plain_username"], scram["sasl_plain_password"]) \
        == ("SCRAM-SHA-512", "u", "p")
    assert scram["ssl_context"].check_hostname is False
    with pytest.raises(ConfigurationError, match="share a topic name"):
        topic_specs(load_settings(kafka_topic_partials="callscribe.audio"))
    assert "partials" not in topic_specs(load_settings(kafka_partials_enabled=False))


async def test_record_timestamp_is_the_produce_time_not_the_capture_time(
        kafka_broker: KafkaBroker) -> None:
    """The worker's produce -> worker hop reads the record's Kafka timestamp: it must be when
    the record was produced (the client's clock at send), whatever ``capture_time_ms`` says
    (``produce --realtime`` stamps the first sample, ~100 ms before the chunk exists)."""
    settings = make_settings(kafka_broker)
    await ensure_topics(None, settings)
    call_id = f"ts-{uuid.uuid4().hex[:6]}"
    before = int(time.time() * 1000)
    async with AudioProducer(settings) as producer:
        await producer.send(AudioChunk(
            call_id=call_id, channel=0, role="agent", seq=0, capture_time_ms=1_000,
            offset_ms=0, format="pcm", sample_rate=16000, payload=b"\0\0" * 1600,
            end_of_stream=True))
        await producer.flush()
    after = int(time.time() * 1000)
    consumer = AIOKafkaConsumer(settings.kafka_topic_audio,
                                bootstrap_servers=kafka_broker.bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        got = []
        end = time.monotonic() + 30
        while not got:
            assert time.monotonic() < end, "the record did not arrive"
            got = [r for rs in (await consumer.getmany(timeout_ms=500)).values() for r in rs]
    finally:
        await consumer.stop()
    (r,) = got
    assert decode(r.value, AudioChunk).capture_time_ms == 1_000
    assert before <= r.timestamp <= after
