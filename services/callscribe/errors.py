"""One exception root for callscribe.

Library code raises these; only the edges (protocol state machines, CLI, worker) map them
to wire codes or exit statuses.  ``retriable`` says whether trying the same thing again may
succeed (a transient fault) or not (bad input, bad configuration).
"""

from __future__ import annotations


class CallscribeError(Exception):
    """Root of every error callscribe raises on purpose."""

    #: short machine-readable code, stable across releases
    code: str = "InternalError"
    #: whether retrying the same operation may succeed
    retriable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigurationError(CallscribeError):
    """A setting is missing or invalid; the message says what to change."""

    code = "ConfigurationError"


# --- audio -------------------------------------------------------------------------------


class AudioError(CallscribeError):
    """Base for problems with the audio a client sent."""

    code = "InvalidAudio"


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


class EngineError(CallscribeError):
    """Inference failed. Usually transient (out of memory, a thread pool shut down)."""

    code = "EngineError"
    retriable = True


# --- sessions ----------------------------------------------------------------------------


class SessionError(CallscribeError):
    """A recognition session was used wrongly (fed after close, bad options)."""

    code = "InvalidParameter"


class Overloaded(CallscribeError):
    """Admission refused: too many sessions or too much queued audio."""

    code = "Overloaded"
    retriable = True


# --- HTTP API (gateway/http.py maps these to ``{"request_id", "code", "message"}``) ------


class HttpError(CallscribeError):
    """An HTTP API request refused before it reached its handler; ``status`` is the HTTP
    status of the JSON error response."""

    status: int = 400
    code = "InvalidParameter"


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
