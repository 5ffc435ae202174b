"""The Kafka record codec: round trips, every kind of bad record -> CodecError with a reason
that names the field and the rule, dead letters; the schema files are the contract."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from callscribe.errors import CallscribeError, ConfigurationError
from callscribe.pipeline.codec import (
    DEFAULT_SCHEMA_DIR,
    AudioChunk,
    AudioOptions,
    CallSummary,
    HotwordOption,
    TranscriptError,
    ChannelSummary,
    Codec,
    CodecError,
    NotMsgpack,
    DeadLetter,
    TranscriptEvent,
    dead_letter_for,
    decode,
    encode,
    get_codec,
    transcript_from_final,
    transcript_from_partial,
)
from callscribe.recognition.events import Emotion, FinalSentence, Partial, Word

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = ["audio_chunk", "transcript_event", "call_summary", "dead_letter", "revised_transcript"]


def chunk(**kw) -> AudioChunk:
    base = dict(call_id="call-42", channel=1, role="customer", seq=0,
                capture_time_ms=1_700_000_000_000, offset_ms=0, format="pcm",
                sample_rate=16000, payload=b"\x01\x00" * 1600,
                options=AudioOptions(language_hints=("en", "zh"), vocabulary_id="vocab-1",
                                     max_sentence_silence_ms=700, itn=True))
    base.update(kw)
    return AudioChunk(**base)


SENTENCE = FinalSentence(
    sentence_id=3, begin_time=1200, end_time=2480, text="Hello, world.",
    words=(Word(1200, 1500, "Hello", ","), Word(1600, 2480, "world", ".")), language="en",
    emotion=Emotion("positive", 0.8, "happy", "rules"))


def transcript() -> TranscriptEvent:
    return transcript_from_final("call-42", 0, "agent", SENTENCE, "faster-whisper",
                                 "whisper-base-ct2", created_at_ms=1_700_000_000_500)


def summary() -> CallSummary:
    return CallSummary(call_id="call-42", duration_ms=61000, sentence_count=12, channels=(
        ChannelSummary(0, "agent", 61000, 30000, 31000, 7, "neutral"),
        ChannelSummary(1, "customer", 60500, 20000, 40500, 5, None)),
        engine="faster-whisper", model="whisper-base-ct2")


def with_hotwords() -> AudioChunk:
    """Options with the vocabulary resolved by the producer (added in place, optional)."""
    return chunk(options=AudioOptions(language_hints=("en",), vocabulary_id="vocab-x-1",
                                      hotwords=(HotwordOption("Dashwood", 4, "en"),
                                                HotwordOption("Marianne", 2))))


def error_event() -> TranscriptEvent:
    """A span whose recognition failed (added in place, optional): final, no text."""
    return TranscriptEvent(
        call_id="call-42", channel=0, role="agent", sentence_id=4, begin_ms=3000,
        end_ms=5200, text="", words=(), language=None, emotion=None, final=True,
        engine="faster-whisper", model="whisper-base-ct2",
        idempotency_key="call-42:0:4:3000",
        error=TranscriptError("DecodeFailed", "decode failed after 4 attempt(s)"))


def dead() -> DeadLetter:
    return DeadLetter(error_code="NotMsgpack", reason="not a msgpack record",
                      source_topic="callscribe.audio", source_partition=2, source_offset=17,
                      source_key=b"call-42", source_value=b"\xc1garbage", failed_at_ms=1,
                      component="worker", call_id=None)


# --- the schema files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_files_are_2020_12_with_version_1(name: str) -> None:
    from jsonschema import Draft202012Validator

    doc = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["properties"]["version"]["const"] == 1
    assert doc["properties"]["type"] == {"const": name}
    assert doc["additionalProperties"] is False and "version" in doc["required"]
    # the codec reads the same files: the package link resolves to the top-level schemas/
    assert DEFAULT_SCHEMA_DIR.resolve() == (REPO / "schemas").resolve()


def test_missing_schema_dir_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CALLSCRIBE_KAFKA_SCHEMA_DIR"):
        Codec(tmp_path)


def test_schemas_are_the_source_of_truth(tmp_path: Path) -> None:
    # a copy of the schemas that only allows 8 kHz: the codec follows the file, not the code
    for name in SCHEMAS:
        doc = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text())
        if name == "audio_chunk":
            doc["properties"]["sample_rate"] = {"enum": [8000]}
        (tmp_path / f"{name}.schema.json").write_text(json.dumps(doc))
    strict = Codec(tmp_path)
    with pytest.raises(CodecError, match="/sample_rate"):
        strict.encode(chunk())
    strict.encode(chunk(sample_rate=8000))


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("make", [chunk, lambda: chunk(seq=5, options=None),
                                  lambda: chunk(seq=9, options=None, payload=b"",
                                                end_of_stream=True),
                                  lambda: chunk(format="mulaw", sample_rate=8000, payload=b"\x7f"),
                                  transcript, summary, dead, with_hotwords, error_event])
def test_round_trip(make) -> None:
    record = make()
    data = encode(record)
    assert isinstance(data, bytes)
    assert decode(data) == record
    assert decode(data, type(record)) == record
    raw = msgpack.unpackb(data, raw=False)
    assert raw["version"] == 1 and raw["type"] == type(record).RECORD_TYPE
    for name, value in raw.items():  # bytes travel as msgpack bin, never base64 text
        if name in ("payload", "source_key", "source_value"):
            assert isinstance(value, bytes)


def test_transcript_from_final_and_partial() -> None:
    t = transcript()
    assert (t.begin_ms, t.end_ms, t.text, t.final, t.language) == (1200, 2480, "Hello, world.",
                                                                   True, "en")
    assert [(w.text, w.punctuation, w.begin_ms) for w in t.words] == [("Hello", ",", 1200),
                                                                       ("world", ".", 1600)]
    assert t.emotion is not None and t.emotion.polarity == "positive"
    assert t.idempotency_key == "call-42:0:3:1200"
    # stable across replays: wall-clock time is not part of it
    again = transcript_from_final("call-42", 0, "agent", SENTENCE, "faster-whisper",
                                  "whisper-base-ct2", created_at_ms=1_800_000_000_000)
    assert again.idempotency_key == t.idempotency_key
    other = transcript_from_final("call-42", 1, "customer", SENTENCE, "e", "m")
    assert other.idempotency_key != t.idempotency_key
    p = transcript_from_partial("call-42", 0, "agent",
                                Partial(3, 1200, 2000, "Hello,", " wor", "en"), "e", "m")
    assert (p.final, p.text, p.settled, p.words) == (False, "Hello, wor", "Hello,", ())
    assert p.idempotency_key == "call-42:0:3:1200:p2000"
    assert decode(encode(p)) == p


def test_summary_default_idempotency_key() -> None:
    assert summary().idempotency_key == "call-42:summary"


# --- schema violations --------------------------------------------------------------------


def _obj(record) -> dict:
    return msgpack.unpackb(encode(record), raw=False)


def _set(obj: dict, path: str, value) -> dict:
    *parents, last = path.split("/")
    target = obj
    for p in parents:
        target = target[int(p)] if isinstance(target, list) else target[p]
    if value is _DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return obj


_DELETE = object()

VIOLATIONS = [
    # (record, field path, bad value, words the reason must contain)
    (chunk, "role", _DELETE, "'role' is a required property"),
    (chunk, "seq", -1, "/seq: -1 is less than the minimum of 0"),
    (chunk, "seq", 1.0, "/seq: 1.0 is not of type 'integer'"),
    (chunk, "seq", "3", "/seq: '3' is not of type 'integer'"),
    (chunk, "channel", 8, "/channel: 8 is greater than the maximum of 7"),
    (chunk, "call_id", "", "/call_id: '' should be non-empty"),
    (chunk, "call_id", "call 42", "/call_id: 'call 42' does not match"),
    (chunk, "role", "Agent", "/role: 'Agent' does not match"),
    (chunk, "format", "mp3", "/format: 'mp3' is not one of"),
    (chunk, "sample_rate", 44100, "/sample_rate: 44100 is not one of [8000, 16000]"),
    (chunk, "payload", "AAAA", "/payload: expected msgpack bin (bytes), got string"),
    (chunk, "payload", b"\x01\x00\x02", "/payload: 3 bytes is not a whole number of 16-bit"),
    (chunk, "payload", b"", "empty payload only on the end-of-stream chunk"),
    (chunk, "payload", b"\0" * 300000, "/payload: 300000 bytes, more than the maximum of 262144"),
    (chunk, "end_of_stream", 1, "/end_of_stream: 1 is not of type 'boolean'"),
    (chunk, "extra", 1, "Additional properties are not allowed ('extra' was unexpected)"),
    (chunk, "seq", 4, "options only on the first chunk of a channel"),
    (chunk, "options/language_hints", ["EN"], "/options/language_hints/0: 'EN' does not match"),
    (chunk, "options/max_sentence_silence_ms", 100,
     "/options/max_sentence_silence_ms: 100 is less than the minimum of 200"),
    (chunk, "options/speed", 2, "/options: Additional properties are not allowed"),
    (transcript, "idempotency_key", _DELETE, "'idempotency_key' is a required property"),
    (transcript, "words/0/punctuation", _DELETE, "/words/0: 'punctuation' is a required property"),
    (transcript, "end_ms", -5, "/end_ms: -5 is less than the minimum of 0"),
    (transcript, "language", "English", "/language: 'English' does not match"),
    (transcript, "emotion/confidence", 1.5, "/emotion"),
    (transcript, "emotion/confidence", math.nan, "/emotion/confidence: NaN or infinity"),
    (transcript, "final", "yes", "/final: 'yes' is not of type 'boolean'"),
    (transcript, "end_ms", 1000, "/end_ms: 1000 is before begin_ms 1200"),
    (transcript, "settled", "Hello", "settled only on partials"),
    (summary, "channels/0/polarity", "happy", "/channels/0/polarity: 'happy' is not one of"),
    (summary, "channels", [], "/channels: [] should be non-empty"),
    (summary, "end_reason", "hangup", "/end_reason: 'hangup' is not one of"),
    (with_hotwords, "options/hotwords/0/weight", 9,
     "/options/hotwords/0/weight: 9 is greater than the maximum of 5"),
    (with_hotwords, "options/hotwords/1/text", "", "/options/hotwords/1/text: '' should be"),
    (error_event, "text", "half a sentence", "an error only on a final event with no text"),
    (error_event, "final", False, "an error only on a final event with no text"),
    (error_event, "error/code", "not a code", "/error/code: 'not a code' does not match"),
    (dead, "source_value", "text", "/source_value: expected msgpack bin"),
    (dead, "source_key", 5, "/source_key"),
    (dead, "reason", "", "/reason: '' should be non-empty"),
]


@pytest.mark.parametrize("make,path,value,reason", VIOLATIONS,
                         ids=[f"{m.__name__ if hasattr(m, '__name__') else 'chunk'}-{p}-{i}"
                              for i, (m, p, _, _) in enumerate(VIOLATIONS)])
def test_schema_violation_has_a_specific_reason(make, path, value, reason) -> None:
    record = make()
    obj = _set(_obj(record), path, value)
    data = msgpack.packb(obj, use_bin_type=True)
    with pytest.raises(CodecError) as info:
        decode(data)
    err = info.value
    assert err.code == "SchemaViolation"
    assert reason in err.reason, err.reason
    assert err.reason.startswith(type(record).RECORD_TYPE + ": ")
    assert len(err.reason) <= 1000
    assert isinstance(err, CallscribeError)


def test_encode_refuses_a_bad_record() -> None:
    with pytest.raises(CodecError, match="/role"):
        encode(chunk(role="Agent Smith"))
    with pytest.raises(CodecError, match="options only on the first chunk"):
        encode(chunk(seq=2))


# --- unknown versions and types, not msgpack ----------------------------------------------


@pytest.mark.parametrize("version,words", [(2, "version 2 is not supported"),
                                           (0, "version 0 is not supported"),
                                           ("1", "version '1' is not supported"),
                                           (True, "version True is not supported"),
                                           (1.0, "version 1.0 is not supported"),
                                           (_DELETE, "has no 'version' field")])
@pytest.mark.parametrize("make", [chunk, transcript, summary, dead])
def test_unknown_version(make, version, words) -> None:
    data = msgpack.packb(_set(_obj(make()), "version", version), use_bin_type=True)
    with pytest.raises(CodecError) as info:
        decode(data)
    assert info.value.code == "UnsupportedVersion"
    assert words in info.value.reason and "reads version 1" in info.value.reason


@pytest.mark.parametrize("obj,code,words", [
    ({"version": 1, "call_id": "x"}, "UnknownRecordType", "record has no 'type' field"),
    ({"type": "audio", "version": 1}, "UnknownRecordType", "unknown type 'audio'"),
    ([1, 2, 3], "NotAMap", "msgpack array, not a map"),
    ("hello", "NotAMap", "msgpack string, not a map"),
    (None, "NotAMap", "msgpack nil, not a map"),
    ({1: "int key"}, "NotMsgpack", "not allowed for map key"),
])
def test_wrong_shapes(obj, code, words) -> None:
    with pytest.raises(CodecError) as info:
        decode(msgpack.packb(obj, use_bin_type=True))
    assert info.value.code == code
    assert words in info.value.reason


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01",
                                  json.dumps({"type": "audio_chunk"}).encode(),
                                  encode(chunk()) + b"\x00", encode(chunk())[:-7],
                                  b"\x81\xa4type\xc4\x03abc"])
def test_not_msgpack_or_garbage(data: bytes) -> None:
    with pytest.raises(CodecError) as info:
        decode(data)
    assert info.value.code in ("NotMsgpack", "NotAMap", "UnknownRecordType")
    assert info.value.reason


def test_not_bytes_at_all() -> None:
    with pytest.raises(CodecError, match="not bytes"):
        decode("a string")  # type: ignore[arg-type]


def test_wrong_record_type() -> None:
    with pytest.raises(CodecError) as info:
        decode(encode(transcript()), AudioChunk)
    assert info.value.code == "WrongRecordType"
    assert "expected a audio_chunk record, got transcript_event" in info.value.reason


def test_a_foreign_record_type_is_wrong_type_even_when_invalid() -> None:
    """A transcript_event built by hand (not valid as one either) on the audio topic is a
    record of the wrong type, not a schema violation of an audio chunk."""
    data = msgpack.packb({"type": "transcript_event", "version": 1, "call_id": "c1",
                          "text": "hello"})
    with pytest.raises(CodecError) as info:
        decode(data, AudioChunk)
    assert info.value.code == "WrongRecordType"
    assert "got transcript_event" in info.value.reason


def test_a_dead_letter_is_cut_to_fit_with_its_digest() -> None:
    import hashlib

    from callscribe.pipeline.codec import get_codec
    from callscribe.pipeline.dead_letters import fit_dead_letter

    value = bytes(range(256)) * 4000  # ~1 MB
    dl = DeadLetter(error_code="SchemaViolation", reason="too big", source_topic="a",
                    source_partition=3, source_offset=42, source_key=b"k" * 20000,
                    source_value=value, failed_at_ms=1, component="worker", call_id="c")
    fit = fit_dead_letter(dl, 1048576)
    encoded = get_codec().encode(fit)
    assert len(encoded) + len(fit.key) < 1048576 - 1000
    assert fit.source_value == value[:len(fit.source_value)] and 0 < len(fit.source_value)
    assert fit.source_value_sha256 == hashlib.sha256(value).hexdigest()
    assert fit.source_value_size == len(value)
    assert (fit.source_topic, fit.source_partition, fit.source_offset) == ("a", 3, 42)
    assert fit.source_key == b"k" * 16384 and "truncated" in fit.reason
    assert decode(encoded) == fit
    bare = fit_dead_letter(dl, 1048576, value_bytes=0)
    assert bare.source_value == b"" and bare.source_value_size == len(value)
    small = replace(dl, source_key=b"k", source_value=b"abc")
    assert fit_dead_letter(small, 1048576) == small  # nothing to cut: unchanged, no digest


def test_random_bytes_never_raise_anything_but_codec_error() -> None:
    rng = random.Random(7)
    good = encode(chunk())
    samples = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) for _ in range(300)]
    samples += [good[:i] for i in range(0, len(good), 97)]
    for _ in range(300):  # flipped bytes inside a valid record
        b = bytearray(good[:200])
        b[rng.randrange(len(b))] = rng.getrandbits(8)
        samples.append(bytes(b))
    for data in samples:
        try:
            decode(data)
        except CodecError:
            pass


# --- dead letters ---------------------------------------------------------------------------


def test_decode_or_dead_letter() -> None:
    codec = get_codec()
    good = encode(chunk())
    assert codec.decode_or_dead_letter(good, key=b"call-42", topic="t") == chunk()
    bad = msgpack.packb({**_obj(chunk()), "version": 7}, use_bin_type=True)
    dl = codec.decode_or_dead_letter(bad, key=b"call-42", topic="callscribe.audio",
                                     partition=3, offset=99)
    assert isinstance(dl, DeadLetter)
    assert (dl.error_code, dl.source_topic, dl.source_partition, dl.source_offset) == (
        "UnsupportedVersion", "callscribe.audio", 3, 99)
    assert "version 7" in dl.reason
    assert dl.source_value == bad and dl.source_key == b"call-42" and dl.call_id == "call-42"
    assert decode(encode(dl)) == dl  # a dead letter is itself a valid record
    garbage = dead_letter_for(NotMsgpack("nope"), b"\xc1", key=None, topic="t")
    assert garbage.call_id is None and garbage.source_key is None
    assert decode(encode(garbage)) == garbage
