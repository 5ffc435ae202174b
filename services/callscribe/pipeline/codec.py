"""The Kafka records: msgpack on the wire, dataclasses in code, JSON Schema as the contract.

The schema documents in ``schemas/`` (``*.schema.json``, JSON Schema 2020-12) are the source of
truth: every record is validated against its schema when it is encoded and when it is decoded.
Bytes fields are msgpack bin; JSON Schema has no bytes type, so the schemas mark them with the
extension keywords ``x-msgpack-type: bin``, ``x-minBytes`` and ``x-maxBytes``, implemented here.

Every record is a msgpack map with ``type`` (which schema) and ``version`` (which revision of
it).  :meth:`Codec.decode` turns *any* bytes into a record or raises :class:`CodecError` with a
machine code and a reason naming the field and the rule -- never another exception -- so a
consumer can send the record to the dead-letter topic (:meth:`Codec.decode_or_dead_letter`)
and carry on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import msgpack
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from callscribe.errors import CallscribeError, ConfigurationError
from callscribe.recognition.events import FinalSentence, Partial

#: the package's schemas/: a link to the repository's top-level schemas/ (the source of truth)
#: in a checkout, a copy of it in an installed wheel
DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
_REASON_MAX = 1000


class CodecError(CallscribeError):
    """A record that cannot be encoded or decoded; ``code`` says which kind, ``reason`` why."""

    code = "InvalidRecord"

    def __init__(self, reason: str) -> None:
        reason = reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 3] + "..."
        super().__init__(reason)
        self.reason = reason


class NotMsgpack(CodecError):
    code = "NotMsgpack"


class NotAMap(CodecError):
    code = "NotAMap"


class UnknownRecordType(CodecError):
    code = "UnknownRecordType"


class UnsupportedVersion(CodecError):
    code = "UnsupportedVersion"


class SchemaViolation(CodecError):
    code = "SchemaViolation"


class WrongRecordType(CodecError):
    code = "WrongRecordType"


class Undecodable(CodecError):
    code = "Undecodable"


# --- records -----------------------------------------------------------------------------


class _Plain:
    """dataclass <-> the plain dict msgpack carries.  ``_OMIT``: fields left out when None;
    ``_NESTED``: field -> (dataclass, is a sequence of them); sequences become tuples."""

    __slots__ = ()
    RECORD_TYPE: ClassVar[str] = ""
    _OMIT: ClassVar[tuple[str, ...]] = ()
    _NESTED: ClassVar[dict[str, tuple[type, bool]]] = {}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.RECORD_TYPE, "version": 1} if self.RECORD_TYPE else {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.name in self._OMIT:
                continue
            if isinstance(v, tuple):
                v = [x.to_dict() if isinstance(x, _Plain) else x for x in v]
            d[f.name] = v.to_dict() if isinstance(v, _Plain) else v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        kw = {k: v for k, v in d.items()
              if not cls.RECORD_TYPE or k not in ("type", "version")}  # nested: a field
        for name, v in kw.items():
            sub, many = cls._NESTED.get(name, (None, False))
            if sub is not None and v is not None:
                kw[name] = tuple(sub.from_dict(x) for x in v) if many else sub.from_dict(v)
            elif isinstance(v, list):
                kw[name] = tuple(v)
        return cls(**kw)

    @property
    def key(self) -> bytes | None:
        """The Kafka key: the call_id (a DeadLetter keeps the original key)."""
        return self.call_id.encode()  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class HotwordOption(_Plain):
    """One hotword of ``AudioOptions.hotwords`` (the producer resolved the vocabulary)."""

    _OMIT = ("lang",)
    text: str
    weight: int
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class RedactionOption(_Plain):
    """``AudioOptions.redaction``: this call's PII redaction (None: the worker's setting)."""

    _OMIT = ("entities", "mode")
    entities: tuple[str, ...] | None = None
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class AudioOptions(_Plain):
    """Per-call options, on the first chunk (seq 0) of each channel; None: worker default."""

    _OMIT = ("vocabulary_id", "max_sentence_silence_ms", "itn", "disfluency_removal",
             "partials", "emotion", "context", "hotwords", "redaction")
    _NESTED = {"hotwords": (HotwordOption, True), "redaction": (RedactionOption, False)}
    language_hints: tuple[str, ...] = ()
    vocabulary_id: str | None = None
    max_sentence_silence_ms: int | None = None
    itn: bool | None = None
    disfluency_removal: bool | None = None
    partials: bool | None = None
    emotion: bool | None = None
    context: str | None = None
    #: added in place (optional): the vocabulary's hotwords, resolved by the producer
    hotwords: tuple[HotwordOption, ...] | None = None
    #: added in place (optional): this call's PII redaction (entity types, mode)
    redaction: RedactionOption | None = None


@dataclass(frozen=True, slots=True)
class AudioChunk(_Plain):
    RECORD_TYPE = "audio_chunk"
    _OMIT = ("options",)
    _NESTED = {"options": (AudioOptions, False)}
    call_id: str
    channel: int
    role: str
    seq: int
    capture_time_ms: int
    offset_ms: int
    format: str
    sample_rate: int
    payload: bytes
    end_of_stream: bool = False
    options: AudioOptions | None = None


@dataclass(frozen=True, slots=True)
class TranscriptWord(_Plain):
    _OMIT = ("redacted",)
    begin_ms: int
    end_ms: int
    text: str
    punctuation: str = ""
    #: added in place (optional): True when the word was redacted PII (text emptied)
    redacted: bool | None = None


@dataclass(frozen=True, slots=True)
class TranscriptEmotion(_Plain):
    polarity: str
    confidence: float
    label: str
    source: str


@dataclass(frozen=True, slots=True)
class TranscriptError(_Plain):
    """Why recognition of an event's span failed (its chunks went to the dead-letter topic)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RedactionSpan(_Plain):
    """One redacted entity: its type and [begin, end) in the redacted text."""

    type: str
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class TranscriptRedaction(_Plain):
    _NESTED = {"entities": (RedactionSpan, True)}
    mode: str
    entities: tuple[RedactionSpan, ...]


@dataclass(frozen=True, slots=True)
class TranscriptEvent(_Plain):
    RECORD_TYPE = "transcript_event"
    _OMIT = ("settled", "created_at_ms", "error", "redaction")
    _NESTED = {"words": (TranscriptWord, True), "emotion": (TranscriptEmotion, False),
               "error": (TranscriptError, False), "redaction": (TranscriptRedaction, False)}
    call_id: str
    channel: int
    role: str
    sentence_id: int
    begin_ms: int
    end_ms: int
    text: str
    words: tuple[TranscriptWord, ...]
    language: str | None
    emotion: TranscriptEmotion | None
    final: bool
    engine: str
    model: str
    idempotency_key: str
    #: partials only: the prefix of ``text`` that will not change
    settled: str | None = None
    created_at_ms: int | None = None
    #: added in place (optional): only on an error event (final, no text, no words)
    error: TranscriptError | None = None
    #: added in place (optional): the PII redacted from text and words
    redaction: TranscriptRedaction | None = None


@dataclass(frozen=True, slots=True)
class ChannelSummary(_Plain):
    _OMIT = ("analytics",)
    channel: int
    role: str
    duration_ms: int
    talk_ms: int
    silence_ms: int
    sentence_count: int
    polarity: str | None
    #: added in place (optional): the channel's characteristics (callscribe.analytics)
    analytics: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallSummary(_Plain):
    RECORD_TYPE = "call_summary"
    _OMIT = ("engine", "model", "created_at_ms", "analytics", "categories")
    _NESTED = {"channels": (ChannelSummary, True)}
    call_id: str
    duration_ms: int
    sentence_count: int
    channels: tuple[ChannelSummary, ...]
    end_reason: str = "end_of_stream"
    idempotency_key: str = ""  # "" -> f"{call_id}:summary"
    engine: str | None = None
    model: str | None = None
    created_at_ms: int | None = None
    #: added in place (optional): the call's characteristics and matched categories
    analytics: dict[str, Any] | None = None
    categories: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            object.__setattr__(self, "idempotency_key", f"{self.call_id}:summary")


@dataclass(frozen=True, slots=True)
class CategoryEvent(_Plain):
    """A rules-file category the call matched (analytics topic); no transcript text."""

    RECORD_TYPE = "category_event"
    _OMIT = ("sentence_id", "created_at_ms")
    call_id: str
    name: str
    channel: int | None
    role: str | None
    begin_ms: int
    end_ms: int
    trigger: str
    idempotency_key: str = ""  # "" -> f"{call_id}:category:{name}:{channel}"
    sentence_id: int | None = None
    created_at_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            ch = "call" if self.channel is None else self.channel
            object.__setattr__(self, "idempotency_key",
                               f"{self.call_id}:category:{self.name}:{ch}")


@dataclass(frozen=True, slots=True)
class RevisedTranscript(_Plain):
    """One sentence of a channel's revised (whole-channel) transcript: see the schema and
    :mod:`callscribe.pipeline.revisions`."""

    RECORD_TYPE = "revised_transcript"
    _OMIT = ("created_at_ms", "redaction")
    _NESTED = TranscriptEvent._NESTED
    call_id: str
    channel: int
    role: str
    revision: int
    sentence_id: int
    sentence_count: int
    begin_ms: int
    end_ms: int
    text: str
    words: tuple[TranscriptWord, ...]
    language: str | None
    emotion: TranscriptEmotion | None
    engine: str
    model: str
    idempotency_key: str
    created_at_ms: int | None = None
    redaction: TranscriptRedaction | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter(_Plain):
    RECORD_TYPE = "dead_letter"
    _OMIT = ("call_id", "source_value_sha256", "source_value_size")
    error_code: str
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_key: bytes | None
    source_value: bytes
    failed_at_ms: int
    component: str
    call_id: str | None = None
    #: added in place (optional): set when ``source_value`` was cut to fit under the
    #: broker's record size -- the hex sha256 and the size of the whole original value
    source_value_sha256: str | None = None
    source_value_size: int | None = None

    @property
    def key(self) -> bytes | None:
        return self.source_key


#: record types added after version 1 of the schema set: a schema directory without them
#: still loads (records of such a type are then rejected as an unknown type)
OPTIONAL_TYPES = frozenset({"category_event", "revised_transcript"})
Record = (AudioChunk | TranscriptEvent | CallSummary | DeadLetter | CategoryEvent
          | RevisedTranscript)
RECORD_TYPES: dict[str, type] = {c.RECORD_TYPE: c for c in (AudioChunk, TranscriptEvent,
                                                             CallSummary, DeadLetter,
                                                             CategoryEvent, RevisedTranscript)}


# --- helpers for the worker --------------------------------------------------------------


def final_idempotency_key(call_id: str, channel: int, sentence_id: int, begin_ms: int) -> str:
    """Stable across replays: made of what the audio decides, never of wall-clock time."""
    return f"{call_id}:{channel}:{sentence_id}:{begin_ms}"


def transcript_from_final(call_id: str, channel: int, role: str, sentence: FinalSentence,
                          engine: str, model: str, *,
                          created_at_ms: int | None = None) -> TranscriptEvent:
    begin = max(0, int(sentence.begin_time))
    return TranscriptEvent(
        call_id=call_id, channel=channel, role=role, sentence_id=sentence.sentence_id,
        begin_ms=begin, end_ms=max(begin, int(sentence.end_time)), text=sentence.text,
        words=tuple(TranscriptWord(max(0, int(w.begin_time)), max(0, int(w.end_time)), w.text,
                                   w.punctuation) for w in sentence.words),
        language=sentence.language, emotion=None if (e := sentence.emotion) is None else
        TranscriptEmotion(e.polarity, min(1.0, max(0.0, float(e.confidence))), e.label, e.source),
        final=True,
        engine=engine, model=model,
        idempotency_key=final_idempotency_key(call_id, channel, sentence.sentence_id, begin),
        created_at_ms=created_at_ms)


def transcript_from_partial(call_id: str, channel: int, role: str, partial: Partial,
                            engine: str, model: str, *,
                            created_at_ms: int | None = None) -> TranscriptEvent:
    begin = max(0, int(partial.begin_time))
    end = max(begin, int(partial.end_time))
    key = final_idempotency_key(call_id, channel, partial.sentence_id, begin) + f":p{end}"
    return TranscriptEvent(
        call_id=call_id, channel=channel, role=role, sentence_id=partial.sentence_id,
        begin_ms=begin, end_ms=end, text=partial.text, words=(), language=partial.language,
        emotion=None, final=False, engine=engine, model=model, idempotency_key=key,
        settled=partial.settled, created_at_ms=created_at_ms)


# --- validation --------------------------------------------------------------------------


def _x_msgpack_type(validator, value, instance, schema):
    if value == "bin" and not isinstance(instance, bytes):
        yield ValidationError(f"expected msgpack bin (bytes), got {_kind(instance)}")


def _x_bytes(fits, words: str):
    def check(validator, value, instance, schema):
        if isinstance(instance, bytes) and not fits(len(instance), value):
            yield ValidationError(f"{len(instance)} bytes, {words} {value}")
    return check


def _kind(v: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", bytes: "bin",
             list: "array", dict: "map", type(None): "nil"}
    return names.get(type(v), type(v).__name__)


_Validator = validators.extend(
    Draft202012Validator,
    validators={"x-msgpack-type": _x_msgpack_type,
                "x-maxBytes": _x_bytes(lambda n, v: n <= v, "more than the maximum of"),
                "x-minBytes": _x_bytes(lambda n, v: n >= v, "fewer than the minimum of")},
    # 1.0 is not an integer on the wire: a float where an int belongs is a producer bug
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _c, v: isinstance(v, int) and not isinstance(v, bool)),
)


def _nonfinite(obj: Any, path: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "/"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else ()
    for k, v in items:
        if (found := _nonfinite(v, f"{path}/{k}")) is not None:
            return found
    return None


class Codec:
    """Validates and (de)serialises records against the schema files of one directory."""

    def __init__(self, schema_dir: str | Path | None = None) -> None:
        self.schema_dir = Path(schema_dir) if schema_dir else DEFAULT_SCHEMA_DIR
        self.schemas: dict[str, dict[str, Any]] = {}
        for name in RECORD_TYPES:
            path = self.schema_dir / f"{name}.schema.json"
            if name in OPTIONAL_TYPES and not path.exists():
                continue  # an older schema directory: this codec does not know the type
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
                _Validator.check_schema(schema)
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"record schema {path} cannot be loaded ({exc}); set "
                    "CALLSCRIBE_KAFKA_SCHEMA_DIR to the directory of *.schema.json") from None
            except Exception as exc:  # jsonschema SchemaError
                raise ConfigurationError(f"record schema {path} is not valid JSON Schema: "
                                         f"{exc}") from None
            self.schemas[name] = schema
        registry = Registry().with_resources(
            (s["$id"], Resource.from_contents(s)) for s in self.schemas.values())
        self._validators = {n: _Validator(s, registry=registry) for n, s in self.schemas.items()}
        #: record type -> the versions this codec reads (the schema's ``version`` const)
        self.versions = {n: s["properties"]["version"]["const"] for n, s in self.schemas.items()}

    @classmethod
    def from_settings(cls, settings: Any) -> Codec:
        return get_codec(getattr(settings, "kafka_schema_dir", None))

    # -- validation ------------------------------------------------------------------------
    def validate(self, obj: Any) -> str:
        """Check a decoded msgpack object; return its record type or raise CodecError."""
        if not isinstance(obj, dict):
            raise NotAMap(f"record is a msgpack {_kind(obj)}, not a map")
        rtype = obj.get("type")
        if rtype not in self._validators:
            what = "has no 'type' field" if "type" not in obj else f"has unknown type {rtype!r}"
            raise UnknownRecordType(f"record {what} (known: "
                                    f"{', '.join(sorted(self._validators))})")
        version = obj.get("version")
        if type(version) is not int or version != self.versions[rtype]:
            what = "has no 'version' field" if "version" not in obj else f"version {version!r}"
            raise UnsupportedVersion(f"{rtype} {what} is not supported (this consumer reads "
                                     f"version {self.versions[rtype]})")
        errors = list(self._validators[rtype].iter_errors(obj))
        if errors:
            # a plain field error ("/seq: 1.0 is not of type 'integer'") says more than a
            # cross-field rule that failed because of it
            plain = [e for e in errors if list(e.absolute_schema_path)[:1] != ["allOf"]]
            err = best_match(plain or errors)
            raise SchemaViolation(f"{rtype}: {self._describe(rtype, err)}")
        if (where := _nonfinite(obj)) is not None:
            raise SchemaViolation(f"{rtype}: {where}: NaN or infinity is not a number")
        timed = rtype in ("transcript_event", "revised_transcript")
        if timed and obj["end_ms"] < obj["begin_ms"]:
            raise SchemaViolation(f"{rtype}: /end_ms: {obj['end_ms']} is before begin_ms "
                                  f"{obj['begin_ms']}")
        if rtype == "revised_transcript" and obj["sentence_id"] > obj["sentence_count"]:
            raise SchemaViolation(f"revised_transcript: /sentence_id: {obj['sentence_id']} is "
                                  f"past sentence_count {obj['sentence_count']}")
        if rtype == "audio_chunk" and obj["format"] == "pcm" and len(obj["payload"]) % 2:
            raise SchemaViolation(f"audio_chunk: /payload: {len(obj['payload'])} bytes is not a "
                                  "whole number of 16-bit pcm samples")
        return rtype

    def _describe(self, rtype: str, err: ValidationError) -> str:
        where = "/" + "/".join(str(p) for p in err.absolute_path)
        msg = err.message if len(err.message) <= 300 else err.message[:297] + "..."
        schema_path = list(err.absolute_schema_path)
        if schema_path[:1] == ["allOf"]:
            rule = self.schemas[rtype]["allOf"][schema_path[1]].get("description", "")
            # a failed "not" only repeats the whole record: the rule says it all
            detail = "" if err.validator == "not" else f" ({msg})"
            return f"{where}: breaks the rule '{rule}'{detail}"
        return f"{where}: {msg}"

    # -- wire ------------------------------------------------------------------------------
    def encode(self, record: Record) -> bytes:
        """Validate and pack; a record that breaks its schema raises CodecError."""
        obj = record.to_dict()
        self.validate(obj)
        return msgpack.packb(obj, use_bin_type=True)

    def decode(self, data: bytes, expect: type | str | None = None) -> Record:
        """Any bytes -> a record, or CodecError (never another exception)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise NotMsgpack(f"record value is {type(data).__name__}, not bytes")
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True)
        except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError...
            raise NotMsgpack(f"not a msgpack record ({type(exc).__name__}: {exc})") from None
        try:
            want = expect if isinstance(expect, str) or expect is None else expect.RECORD_TYPE
            got = obj.get("type") if isinstance(obj, dict) else None
            # another known record type is on the wrong topic, whether or not it is valid
            if want is not None and got in self._validators and got != want:
                raise WrongRecordType(f"expected a {want} record, got {got}")
            rtype = self.validate(obj)
            return RECORD_TYPES[rtype].from_dict(obj)
        except CodecError:
            raise
        except Exception as exc:  # a bug here must not stop a consumer either
            raise Undecodable(f"record could not be read ({type(exc).__name__}: {exc})") from None

    def decode_or_dead_letter(self, data: bytes, *, key: bytes | None = None, topic: str = "-",
                              partition: int = -1, offset: int = -1, component: str = "worker",
                              expect: type | str | None = None) -> Record | DeadLetter:
        """The record, or the DeadLetter to publish instead (for the dead-letter topic)."""
        try:
            return self.decode(data, expect)
        except CodecError as exc:
            return dead_letter_for(exc, data, key=key, topic=topic, partition=partition,
                                   offset=offset, component=component)


def dead_letter_for(exc: CallscribeError, data: bytes, *, key: bytes | None, topic: str,
                    partition: int = -1, offset: int = -1,
                    component: str = "worker") -> DeadLetter:
    """Wrap a rejected record's bytes and the reason (a CodecError, or any CallscribeError a
    consumer gives up on); the call_id is kept when it can be read."""
    call_id = None
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=False)
        if isinstance(obj, dict) and isinstance(obj.get("call_id"), str):
            call_id = obj["call_id"][:1024]
    except Exception:
        pass
    is_bytes = isinstance(data, (bytes, bytearray, memoryview))
    reason = getattr(exc, "reason", None) or exc.message or exc.code
    return DeadLetter(error_code=exc.code, reason=reason[:_REASON_MAX], source_topic=topic or "-",
                      source_partition=max(-1, partition), source_offset=max(-1, offset),
                      source_key=bytes(key) if key is not None else None,
                      source_value=bytes(data) if is_bytes else b"",
                      failed_at_ms=int(time.time() * 1000), component=component, call_id=call_id)


@lru_cache(maxsize=8)
def _codec_for(schema_dir: str) -> Codec:
    return Codec(schema_dir)


def get_codec(schema_dir: str | Path | None = None) -> Codec:
    """A codec per schema directory, loaded once (the schemas are read-only at run time)."""
    return _codec_for(str(Path(schema_dir) if schema_dir else DEFAULT_SCHEMA_DIR))


def encode(record: Record) -> bytes:
    return get_codec().encode(record)


def decode(data: bytes, expect: type | str | None = None) -> Record:
    return get_codec().decode(data, expect)
