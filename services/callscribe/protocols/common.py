"""Shared pieces of the Sans-I/O protocol state machines: outputs, close codes, the model
catalogue, and the mapping from exceptions to wire error codes.

Nothing here does I/O.  A state machine queues *outputs*; the server adapter takes them in
order and acts on them: :class:`SendFrame` and :class:`Close` go to the socket, the other
commands drive the recognition runtime, :class:`TaskReport` goes to logs and metrics.
Every machine has the interface of :class:`Machine`, so one adapter
(:mod:`callscribe.gateway.connection`) serves them all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from callscribe import wire
from callscribe.errors import (CallscribeError, InvalidMessage, ModelNotFound,
                               SampleRateMismatch, SessionError, UnsupportedFormat)

# --- WebSocket close codes (documented in the README) --------------------------------------

#: normal closure: idle timeout, or the client closed
CLOSE_NORMAL = 1000
#: the server is shutting down (SIGTERM)
CLOSE_GOING_AWAY = 1001
#: a text frame that is not JSON (RFC 6455 "invalid frame payload data")
CLOSE_INVALID_PAYLOAD = 1007
#: the client broke the protocol or sent bad parameters/audio; task-failed says what
CLOSE_POLICY = 1008
#: a frame larger than the configured maximum
CLOSE_TOO_BIG = 1009
#: the server failed (engine error, internal error)
CLOSE_INTERNAL = 1011

#: audio formats of the run-task protocol (``format`` parameter)
FORMATS = ("pcm", "wav", "mp3", "opus", "speex", "aac", "amr")


#: ``max_sentence_silence`` when a run-task client does not send it (DashScope's default)
RUN_TASK_DEFAULT_SILENCE_MS = 1300


def dumps(obj: Any) -> str:
    """The one JSON encoding used on the wire (compact, UTF-8 text)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# --- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send this text frame."""

    text: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the WebSocket with this code and reason, after every frame queued before it."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A validated run-task request: what the adapter needs to open a recognition stream."""

    model: str
    format: str
    sample_rate: int
    language_hints: tuple[str, ...] = ()
    max_sentence_silence_ms: int | None = None
    vocabulary_id: str | None = None
    #: old-style ``payload.resources`` asr_phrase ids
    phrase_ids: tuple[str, ...] = ()
    heartbeat: bool = False
    disfluency_removal: bool = False
    itn: bool | None = None
    punctuation: bool = True
    semantic_punctuation: bool = False
    #: free-text context that biases recognition (Qwen ``corpus.text``)
    context: str | None = None
    #: Silero speech probability threshold; None: the server's setting
    vad_threshold: float | None = None
    #: False: silence never ends a sentence; the protocol commits (Qwen manual mode)
    endpointing: bool = True


@dataclass(frozen=True, slots=True)
class StartRecognition:
    task_id: str
    options: TaskOptions


@dataclass(frozen=True, slots=True)
class AudioData:
    task_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class FinishInput:
    task_id: str


@dataclass(frozen=True, slots=True)
class CommitInput:
    """End the current sentence after the audio sent so far (``AsyncStream.commit``); the
    stream answers with a ``Committed`` event.  ``discard``: drop it undecoded."""

    task_id: str
    discard: bool = False


@dataclass(frozen=True, slots=True)
class AbortRecognition:
    task_id: str


@dataclass(frozen=True, slots=True)
class TaskReport:
    """A task ended (finished, failed or abandoned): for logs and metrics."""

    task_id: str
    model: str
    outcome: str  # finished | failed | client_gone
    audio_ms: int
    sentences: int
    first_package_delay_ms: float | None
    last_package_delay_ms: float | None
    error_code: str | None = None
    error_message: str | None = None
    extra: dict = field(default_factory=dict)


Output = (SendFrame | Close | StartRecognition | AudioData | FinishInput | CommitInput
          | AbortRecognition | TaskReport)


class Machine(Protocol):
    """What the connection adapter drives: a protocol state machine for one WebSocket.

    ``task_id`` in the recognition callbacks is the id the machine put in
    :class:`StartRecognition`; callbacks for any other id are ignored."""

    #: protocol name for logs, metrics and traces
    name: str

    def outputs(self) -> list[Output]: ...
    def receive_text(self, text: str) -> None: ...
    def receive_binary(self, data: bytes) -> None: ...
    def recognition_started(self, task_id: str) -> None: ...
    def audio_consumed(self, task_id: str, audio_ms: int) -> None: ...
    def recognition_event(self, task_id: str, event: Any, *,
                          audio_ms: int | None = None) -> None: ...
    def recognition_finished(self, task_id: str, *, audio_ms: int | None = None) -> None: ...
    def recognition_failed(self, task_id: str, error: BaseException) -> None: ...
    def connection_lost(self, error_code: str | None = None) -> None: ...
    def shutdown(self, grace_s: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def handle_timers(self) -> None: ...


# --- errors ----------------------------------------------------------------------------------


def wire_error(exc: BaseException) -> tuple[str, str, int]:
    """(error_code, error_message, close code) for an exception raised while serving a task.

    callscribe's own errors carry their code and a message written for the user; anything
    else is an internal error whose details stay in the server log.
    """
    if isinstance(exc, CallscribeError):
        return exc.code, exc.message, CLOSE_POLICY if exc.client_fault else CLOSE_INTERNAL
    return "InternalError", f"internal server error ({type(exc).__name__}); see the server log", \
        CLOSE_INTERNAL


# --- model catalogue -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    #: accepted sample rates; empty: any rate in ``any_rate_range``
    sample_rates: tuple[int, ...]
    any_rate_range: tuple[int, int] = (8000, 48000)

    def check_rate(self, rate: int) -> str | None:
        """None when ``rate`` is fine, else the message explaining the rule."""
        if self.sample_rates:
            if rate in self.sample_rates:
                return None
            need = " or ".join(str(r) for r in self.sample_rates)
            return f"sample_rate {rate} not supported for model {self.name}: it takes {need} Hz"
        lo, hi = self.any_rate_range
        if lo <= rate <= hi:
            return None
        return (f"sample_rate {rate} not supported for model {self.name}: "
                f"it takes any rate from {lo} to {hi} Hz")


#: every model name runs on the configured engine; only the sample-rate rule differs
MODELS: dict[str, ModelSpec] = {
    "fun-asr-realtime": ModelSpec("fun-asr-realtime", (16000,)),
    "paraformer-realtime-v2": ModelSpec("paraformer-realtime-v2", ()),
    "paraformer-realtime-8k-v2": ModelSpec("paraformer-realtime-8k-v2", (8000,)),
    "paraformer-realtime-v1": ModelSpec("paraformer-realtime-v1", (16000,)),
    "paraformer-realtime-8k-v1": ModelSpec("paraformer-realtime-8k-v1", (8000,)),
}

#: dated snapshots, e.g. ``fun-asr-realtime-2025-11-07``, follow their family's rule
_SNAPSHOT = re.compile(r"^(?P<base>fun-asr-realtime)-(?P<date>\d{4}-\d{2}-\d{2})$")


def resolve_model(name: str) -> ModelSpec | None:
    spec = MODELS.get(name)
    if spec is not None:
        return spec
    m = _SNAPSHOT.match(name)
    if m:
        base = MODELS[m.group("base")]
        return ModelSpec(name, base.sample_rates, base.any_rate_range)
    return None


def model_names() -> str:
    return ", ".join(list(MODELS) + ["fun-asr-realtime-YYYY-MM-DD"])


#: every value the ``model`` metric label can take (a closed set: clients choose model names)
MODEL_FAMILIES = frozenset([*MODELS, "qwen3-asr-flash-realtime", "other"])
_DATED = re.compile(r"^(?P<base>.+?)-\d{4}-\d{2}-\d{2}$")


def model_family(name: str) -> str:
    """The canonical model a name belongs to (``fun-asr-realtime-2025-11-07`` ->
    ``fun-asr-realtime``), ``other`` for anything unknown: a metric label, never the
    client's string."""
    m = _DATED.match(name)
    base = m.group("base") if m else name
    return base if base in MODEL_FAMILIES else "other"


# --- run-task parameters ---------------------------------------------------------------------


def parse_run_task_options(payload: Any, *, default_itn: bool = True) -> TaskOptions:
    """Validate a run-task payload; raise SessionError subclasses with a clear message."""
    def bad(msg: str) -> SessionError:
        return SessionError(msg)

    if not isinstance(payload, dict):
        raise InvalidMessage("run-task payload must be an object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise bad("payload.model is required (e.g. fun-asr-realtime)")
    spec = resolve_model(model)
    if spec is None:
        raise ModelNotFound(f"model {model!r} is not supported; supported models: "
                            f"{model_names()}")
    params = payload.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise bad("payload.parameters must be an object")
    fmt = params.get("format")
    if not isinstance(fmt, str) or not fmt:
        raise bad(f"parameters.format is required: one of {', '.join(FORMATS)}")
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UnsupportedFormat(f"format {fmt!r} is not supported; use one of "
                                f"{', '.join(FORMATS)}")
    rate = params.get("sample_rate")
    if isinstance(rate, str):  # "16000" is accepted; "¹⁶⁰⁰⁰" (str.isdigit() is true) is not
        try:
            rate = wire.parse_int(rate)
        except wire.WireError:
            pass  # refused below
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise bad("parameters.sample_rate is required and must be an integer (Hz)")
    problem = spec.check_rate(rate)
    if problem:
        raise SampleRateMismatch(problem)

    hints = params.get("language_hints")
    if hints is None:
        hints = []
    elif isinstance(hints, str):
        hints = [hints]
    if not isinstance(hints, list) or not all(isinstance(h, str) for h in hints):
        raise bad("parameters.language_hints must be a list of language codes")
    # the contract's default for the run-task family (Qwen's silence_duration_ms defaults to 800)
    silence = params.get("max_sentence_silence", RUN_TASK_DEFAULT_SILENCE_MS)
    if silence is not None:
        if not isinstance(silence, int) or isinstance(silence, bool) \
                or not 200 <= silence <= 6000:
            raise bad(f"parameters.max_sentence_silence {silence!r} is out of range: "
                      "an integer from 200 to 6000 (ms)")
    vocab = params.get("vocabulary_id")
    if vocab is not None and (not isinstance(vocab, str) or not vocab):
        raise bad("parameters.vocabulary_id must be a string")
    phrase_ids = []
    resources = payload.get("resources") or []
    if isinstance(resources, list):
        for r in resources:
            if isinstance(r, dict) and r.get("resource_type") == "asr_phrase" \
                    and isinstance(r.get("resource_id"), str):
                phrase_ids.append(r["resource_id"])

    def flag(name: str, default: bool | None) -> bool | None:
        v = params.get(name)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise bad(f"parameters.{name} must be true or false")

    return TaskOptions(
        model=model, format=fmt, sample_rate=rate,
        language_hints=tuple(h.strip().lower() for h in hints if h.strip()),
        max_sentence_silence_ms=silence, vocabulary_id=vocab,
        phrase_ids=tuple(phrase_ids),
        heartbeat=bool(flag("heartbeat", False)),
        disfluency_removal=bool(flag("disfluency_removal_enabled", False)),
        itn=flag("inverse_text_normalization_enabled", default_itn),
        punctuation=bool(flag("punctuation_prediction_enabled", True)),
        semantic_punctuation=bool(flag("semantic_punctuation_enabled", False)),
    )
