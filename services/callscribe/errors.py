"""One exception root for callscribe.

Library code raises these; only the edges (protocol state machines, CLI, worker) map them
to wire codes or exit statuses.  ``retriable`` says whether trying the same thing again may
succeed (a transient fault) or not (bad input, bad configuration); ``client_fault`` says
whose fault it is when it ends a WebSocket task (the protocols close with 1008 for the
client's fault, 1011 for the server's).

The catalogue follows aiokafka's ``errors.py``: one class per wire code, with ``code``,
``retriable`` and ``client_fault`` set on the class, never per call (the constructor takes
only the message).  :data:`CODES` maps a wire code to its class and :func:`for_code` builds
the error for a code received from elsewhere (a Kafka worker's transcript record).
"""

from __future__ import annotations


class CallscribeError(Exception):
    """Root of every error callscribe raises on purpose."""

    #: short machine-readable code, stable across releases
    code: str = "InternalError"
    #: whether retrying the same operation may succeed
    retriable: bool = False
    #: the client's fault (close 1008: bad audio, bad parameters, a broken protocol) or the
    #: server's (close 1011); an error is the server's unless its class says otherwise (and a
    #: class that sets ``retriable = True`` is the server's fault unless it says otherwise)
    client_fault: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("retriable") and "client_fault" not in cls.__dict__:
            cls.client_fault = False
        if "code" in cls.__dict__:
            CODES.setdefault(cls.code, cls)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


#: wire code -> the (most general) class that carries it; filled as classes are defined
CODES: dict[str, type[CallscribeError]] = {CallscribeError.code: CallscribeError}


def for_code(code: str, message: str) -> CallscribeError:
    """The catalogue's error for ``code`` (an unknown code: an internal error)."""
    return CODES.get(code, CallscribeError)(message)


class ConfigurationError(CallscribeError):
    """A setting is missing or invalid; the message says what to change."""

    code = "ConfigurationError"
    client_fault = False


# --- audio -------------------------------------------------------------------------------


class AudioError(CallscribeError):
    """Base for problems with the audio a client sent."""

    code = "InvalidAudio"
    client_fault = True


class UnsupportedFormat(AudioError):
    code = "UnsupportedFormat"


class CorruptAudio(AudioError):
    code = "CorruptAudio"


class SampleRateMismatch(AudioError):
    code = "SampleRateMismatch"


class AudioTooLarge(AudioError):
    code = "AudioTooLarge"


class DecodeLimitExceeded(AudioTooLarge):
    """One input (a run-task frame, a Qwen append) decodes to more audio than a session may
    buffer (``CALLSCRIBE_MAX_BUFFERED_AUDIO_MS``); the decoder stopped before producing it."""


# --- model / engine ----------------------------------------------------------------------


class ModelError(CallscribeError):
    """The model is missing, partial or corrupt; the message says how to fix it."""

    code = "ModelError"
    client_fault = False


class EngineError(CallscribeError):
    """Inference failed. Usually transient (out of memory, a thread pool shut down)."""

    code = "EngineError"
    retriable = True
    client_fault = False


class DecodeFailed(EngineError):
    """A Kafka worker's decode still failed after its retries (``pipeline/flow.py``); here so
    that a gateway rebuilding a worker's transcript error (:func:`for_code`) knows the code."""

    code = "DecodeFailed"
    retriable = False


# --- sessions ----------------------------------------------------------------------------


class SessionError(CallscribeError):
    """A recognition session was used wrongly (fed after close, bad options)."""

    code = "InvalidParameter"
    client_fault = True


class ModelNotFound(SessionError):
    """The request names a model this server does not serve."""

    code = "ModelNotFound"


class RecognitionEndedEarly(CallscribeError):
    """Recognition ended on its own before the client finished its input: a server-side
    failure (``InternalError``, close 1011, as the README says)."""

    code = "InternalError"


class SilenceTimeout(SessionError):
    """A run-task task heard no speech for the silence timeout (closes 1000)."""

    code = "SilenceTimeout"


class RequestTimeout(SessionError):
    """A run-task task received no data for the no-data timeout (DashScope's code)."""

    code = "CLIENT_ERROR"


class ProtocolError(SessionError):
    """The client broke the protocol; ``code`` names the rule (see README).  Bare: a bad
    parameter (``InvalidParameter``)."""


class InvalidMessage(ProtocolError):
    """A control message that is not JSON or has no ``header`` object."""

    code = "InvalidMessage"


class UnknownAction(ProtocolError):
    code = "UnknownAction"


class FrameTooLarge(ProtocolError):
    code = "FrameTooLarge"


class TaskNotStarted(ProtocolError):
    """Audio or a control message before run-task / task-started."""

    code = "TaskNotStarted"


class TaskAlreadyRunning(ProtocolError):
    code = "TaskAlreadyRunning"


class DuplicateTaskId(ProtocolError):
    code = "DuplicateTaskId"


# --- Qwen-ASR realtime request errors (the vendor's lower-case codes) ----------------------


class RequestError(ProtocolError):
    """A Qwen-ASR realtime client error: answered with an ``error`` event naming ``param``;
    the session stays (unless the protocol closes it)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidValue(RequestError):
    code = "invalid_value"


class InvalidJson(RequestError):
    code = "invalid_json"


class InvalidEvent(RequestError):
    code = "invalid_event"


class UnknownEventType(RequestError):
    code = "unknown_event_type"


class SessionFinishing(RequestError):
    code = "session_finishing"


class SessionNotConfigured(RequestError):
    code = "session_not_configured"


class SessionAlreadyStarted(RequestError):
    code = "session_already_started"


class BinaryFrame(RequestError):
    code = "binary_frame"


class AppendTooLarge(RequestError):
    """One append (or one decode) carries more audio than a session may buffer."""

    code = "audio_too_large"


class InvalidBase64(RequestError):
    code = "invalid_base64"


class CommitInVadMode(RequestError):
    code = "commit_in_vad_mode"


class CommitEmpty(RequestError):
    code = "input_audio_buffer_commit_empty"


class BufferTooLong(RequestError):
    """Manual mode: too much audio since the last commit."""

    code = "input_audio_buffer_too_long"


class IdleTimeout(RequestError):
    code = "idle_timeout"


class ServerShuttingDown(CallscribeError):
    """The server is draining (SIGTERM): reconnect to another instance.  The protocols close
    with 1001 (going away) themselves."""

    code = "ServerShuttingDown"
    retriable = True


class Overloaded(CallscribeError):
    """Admission refused: too many sessions or too much queued audio, or the Kafka pipeline
    is not connected (yet)."""

    code = "Overloaded"
    retriable = True


# --- Kafka pipeline ----------------------------------------------------------------------


class KafkaFailure(CallscribeError):
    """Kafka refused the client or a record with a non-retriable error, or the topics are
    missing (the aiokafka error is chained as ``__cause__``)."""

    code = "KafkaError"
    client_fault = False


class PipelineTimeout(CallscribeError):
    """The Kafka workers did not finish a call within ``CALLSCRIBE_KAFKA_RESULT_TIMEOUT_S`` of
    the end of its input."""

    code = "PipelineTimeout"


# --- HTTP API (gateway/http.py maps these to ``{"request_id", "code", "message"}``) ------


class HttpError(CallscribeError):
    """An HTTP API request refused before it reached its handler; ``status`` is the HTTP
    status of the JSON error response."""

    status: int = 400
    code = "InvalidParameter"
    client_fault = True


class BadRequest(HttpError):
    """Malformed request: a repeated header, an unreadable query parameter or JSON body."""

    status = 400
    code = "InvalidParameter"


class ForbiddenOrigin(HttpError):
    """No-key (loopback) mode: a ``Host`` that is not a loopback name, or an ``Origin`` of
    another site (DNS rebinding, cross-site requests)."""

    status = 403
    code = "Forbidden"


class QuotaExceeded(HttpError):
    """A per-API-key quota (tokens, vocabularies) is used up; the message names the setting."""

    status = 429
    code = "Throttling"
    retriable = True
