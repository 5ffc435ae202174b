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
    #: 800 keeps partials at most ~1 s apart in wall time (a partial decode takes 0.1-0.3 s).
    partial_interval_ms: int = Field(default=800, ge=0, le=10000)
    #: Audio time (ms) from a sentence's onset to its first partial; 0: the partial interval.
    #: 300 lowered the first partial p95 from ~1.4 s to ~0.9 s (bench, 4 streams) for ~5 % CPU.
    #: The first partial is a short decode (the audio so far + 1 s), so it is cheap.
    first_partial_ms: int = Field(default=300, ge=0, le=10000)
    #: Silero VAD speech probability threshold.
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: Audio (ms) a session may hold unprocessed before it refuses more (backpressure).
    max_buffered_audio_ms: int = Field(default=60000, ge=1000, le=600000)
    #: Beam width of live final decodes (1 = greedy; partials are always greedy).  Measured on
    #: the benchmark call with left context: beam 1, 2 and 5 within 0.5 WER points of each
    #: other, beam 5 +15-40 % decode CPU, so greedy by default.
    final_beam_size: int = Field(default=1, ge=1, le=10)
    #: Beam width of whole-file decoding (``callscribe transcribe``, revised transcripts).
    file_beam_size: int = Field(default=5, ge=1, le=10)
    #: Left context of a final decode: up to this much of the previous sentence's audio is
    #: decoded in front of the sentence, its text forced as the decoder prefix (0 disables).
    final_context_ms: int = Field(default=3000, ge=0, le=10000)
    #: Inverse text normalisation (numbers as digits) by default.
    itn_enabled: bool = True
    #: Emotion estimator for final sentences (``text+prosody``: text sentiment + prosody).
    emotion_estimator: str = "text+prosody"

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
    #: Bytes of results that may wait to be sent to one client.  Above it the server stops
    #: reading that client (TCP flow control slows it) until it reads its results.
    max_outbox_bytes: int = Field(default=1 << 20, ge=64 * 1024, le=256 << 20)
    #: A client whose unsent results stay above ``max_outbox_bytes`` for this long (s) is
    #: closed with 1008 "client does not read its results".
    slow_reader_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    #: Longest task (seconds of audio) accepted.
    max_task_seconds: int = Field(default=4 * 3600, ge=10)
    #: SQLite file for hotword vocabularies.
    vocabulary_db: Path = Field(
        default_factory=lambda: _default_cache_dir() / "vocabularies.sqlite3")
    #: Lifetime (s) of a WebSocket token from ``POST /api/v1/tokens`` (``?token=`` on the
    #: WebSocket URL, for browsers; single use).  Also the most a client's
    #: ``expire_in_seconds`` may ask for.
    token_ttl_s: int = Field(default=60, ge=1, le=1800)
    #: Outstanding (issued, unused, unexpired) WebSocket tokens one API key may hold; HTTP 429
    #: beyond.  The process holds at most this many per configured key, so one key minting
    #: tokens as fast as it can never locks another key out.
    token_max_per_key: int = Field(default=1000, ge=1, le=100000)
    #: Vocabularies one API key may store (HTTP 403 ``VocabularyQuotaExceeded`` beyond).
    vocabulary_max_per_key: int = Field(default=100, ge=1, le=100000)
    #: Total size (bytes of stored entries, ~100 bytes per entry) of one API key's
    #: vocabularies; a full 500-entry vocabulary is 25-50 KB.
    vocabulary_max_bytes_per_key: int = Field(default=4 << 20, ge=1024, le=1 << 30)

    # --- logs ----------------------------------------------------------------------------
    #: ``json`` for production, ``console`` for a terminal, ``auto`` picks by isatty.
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Put transcript text in logs (off: only lengths and ids).
    log_transcripts: bool = False
    #: OpenTelemetry traces are exported over OTLP/HTTP to this collector
    #: (e.g. ``http://otel-collector:4318``); empty: no trace exporter.
    otlp_endpoint: str = ""

    # --- kafka ---------------------------------------------------------------------------
    # The Kafka pipeline (services/callscribe/pipeline/): records are msgpack, described by
    # the JSON Schemas in schemas/.  All channels of a call share one key (call_id), so they
    # meet in one partition of every topic.
    #: Bootstrap servers, comma separated ``host:port`` (``callscribe produce --bootstrap``
    #: overrides it).
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: Client id prefix the brokers see in their logs and quotas.
    kafka_client_id: str = "callscribe"
    #: Topic of AudioChunk records (producer -> worker), keyed by call_id.
    kafka_topic_audio: str = Field(default="callscribe.audio", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    #: Topic of final TranscriptEvent and CallSummary records (worker -> consumers), keyed by
    #: call_id; the summary of a call comes after its last transcript in the same partition.
    kafka_topic_transcripts: str = Field(default="callscribe.transcripts",
                                         pattern=r"^[A-Za-z0-9._-]{1,249}$")
    #: Topic of partial (final=false) TranscriptEvent records for live views, keyed by call_id.
    kafka_topic_partials: str = Field(default="callscribe.partials",
                                      pattern=r"^[A-Za-z0-9._-]{1,249}$")
    #: Whether partials are published (and their topic made by ``callscribe topics create``).
    kafka_partials_enabled: bool = True
    #: Topic of DeadLetter records: input that could not be decoded, with the reason.
    kafka_topic_dead_letters: str = Field(default="callscribe.dead-letters",
                                          pattern=r"^[A-Za-z0-9._-]{1,249}$")
    #: Partitions of the audio topic: the upper bound on worker parallelism.  Changing it on a
    #: live topic moves calls between partitions; ``callscribe topics create`` never alters a
    #: topic.
    kafka_audio_partitions: int = Field(default=12, ge=1, le=10000)
    #: Partitions of the transcripts topic (same as audio keeps a call's input and output
    #: co-partitioned).
    kafka_transcripts_partitions: int = Field(default=12, ge=1, le=10000)
    #: Partitions of the partials topic.
    kafka_partials_partitions: int = Field(default=12, ge=1, le=10000)
    #: Partitions of the dead-letter topic.
    kafka_dead_letters_partitions: int = Field(default=1, ge=1, le=10000)
    #: Replication factor of the topics ``callscribe topics create`` makes (1 for a single
    #: broker; 3 in production).
    kafka_replication_factor: int = Field(default=1, ge=1, le=32)
    #: Retention of the audio topic (ms): long enough to replay a worker's backlog.
    kafka_audio_retention_ms: int = Field(default=24 * 3600 * 1000, ge=60000)
    #: Deadline (s) for every Kafka operation: a send not acknowledged within it, a start or
    #: topic check not done within it, fails with BrokerUnavailable.
    kafka_deadline_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    #: First backoff (ms) between retries of a retriable Kafka error; doubles up to 5 s.
    kafka_retry_backoff_ms: int = Field(default=100, ge=1, le=60000)
    #: Records the producer may have sent but not yet acknowledged (the bounded buffer); a
    #: full buffer makes ``send`` wait, for at most the deadline.
    kafka_max_pending: int = Field(default=1000, ge=1, le=1000000)
    #: Producer linger (ms): how long a batch waits for more records before it is sent.
    #: 0: at once (records still batch while a request is in flight).  Every final crosses
    #: three sends (audio chunk, write-ahead table record, transcript), so each ms here costs
    #: up to 3 ms of final latency; 5 ms measured +10 ms p50 over 0 at 4 streams.
    kafka_linger_ms: int = Field(default=0, ge=0, le=1000)
    #: Audio per AudioChunk (ms) the producer sends.
    kafka_chunk_ms: int = Field(default=100, ge=10, le=1000)
    #: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: SASL mechanism when the protocol is SASL_*.
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    #: SASL user name (required with SASL_*).
    kafka_sasl_username: str = ""
    #: SASL password (required with SASL_*); never logged.
    kafka_sasl_password: str = Field(default="", repr=False)
    #: CA bundle (PEM) that signs the brokers' certificates; empty: the system's CAs.
    kafka_ssl_cafile: Path | None = None
    #: Client certificate (PEM) for mutual TLS; empty: none.
    kafka_ssl_certfile: Path | None = None
    #: Private key (PEM) of the client certificate.
    kafka_ssl_keyfile: Path | None = None
    #: Password of an encrypted private key.
    kafka_ssl_key_password: str = Field(default="", repr=False)
    #: Check that a broker's certificate names the host connected to (leave on).
    kafka_ssl_check_hostname: bool = True
    #: Directory of the record schemas (``*.schema.json``); empty: ``schemas/`` of the checkout.
    kafka_schema_dir: Path | None = None
    # The pipeline worker (``callscribe worker``, pipeline/worker.py).
    #: Consumer group of the workers (also the faust app id: the table of published sentences
    #: is the compacted topic ``<group>-calls-changelog``).
    kafka_worker_group: str = Field(default="callscribe-worker",
                                    pattern=r"^[A-Za-z0-9._-]{1,200}$")
    #: A (call, channel) with no new chunk for this long (s) is closed as if it had ended; its
    #: CallSummary says ``end_reason: idle_timeout``.  Keep it above any producer or broker
    #: outage to ride out: chunks that arrive after it are dropped (and counted as late).
    kafka_worker_idle_timeout_s: float = Field(default=60.0, ge=1.0, le=86400.0)
    #: Bound on audio (ms) one worker holds received but not yet recognised, over all its
    #: calls (~64 kB per second of audio).  Above half of it partials stop; at it the audio
    #: partitions are paused and consumption waits; below half they resume.
    kafka_worker_max_inflight_audio_ms: int = Field(default=120000, ge=1000, le=3600000)
    #: Retries of a failing decode (EngineError) before the chunks of the failed span go to
    #: the dead-letter topic and the call gets an error event (the worker goes on).
    kafka_worker_decode_retries: int = Field(default=3, ge=0, le=20)
    #: Backoff (ms) before the first decode retry; doubles with every retry (max 5 s).
    kafka_worker_retry_backoff_ms: int = Field(default=200, ge=1, le=60000)
    #: Later chunks (per channel) held while an out-of-order seq is missing; a gap still open
    #: after this many is given up (filled with silence) and counted.
    kafka_worker_reorder_window: int = Field(default=50, ge=1, le=10000)
    #: Consumer-group session timeout (s): how soon a dead worker's partitions move on.
    kafka_worker_session_timeout_s: float = Field(default=10.0, ge=6.0, le=300.0)
    #: How often (s) a worker commits the audio offsets that are safe (see pipeline/worker.py).
    kafka_worker_commit_interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    #: ``serve --kafka``: seconds the gateway waits, after a task's input ended, for the
    #: workers to finish the call (its CallSummary) before the task fails.
    kafka_result_timeout_s: float = Field(default=120.0, gt=0.0, le=86400.0)
    #: How long (s) a worker remembers a call that ended (its summary is out): a late or
    #: duplicate record for it in that time is dead-lettered (``CallEnded``), never a new
    #: call.  The memory is the worker table (a small record per channel, moved with the
    #: partition); past this age, or past ``kafka_worker_ended_max`` channels, the oldest go
    #: and a record for such a call would open it again (a new call with the same call_id).
    #: Default: the audio topic's default retention, so no replay can outlive it.
    kafka_worker_ended_retention_s: float = Field(default=86400.0, ge=60.0, le=30 * 86400.0)
    #: The most ended channels one worker remembers (~1 kB each in memory); beyond it the
    #: oldest are forgotten first (see ``kafka_worker_ended_retention_s``).
    kafka_worker_ended_max: int = Field(default=50000, ge=100, le=10000000)
    #: The largest record the brokers take (bytes): the topics' ``max.message.bytes``
    #: (broker default 1048588).  A dead letter is cut to fit under it: the original value is
    #: truncated and its sha256 and size kept, with its topic, partition, offset and key.
    kafka_max_message_bytes: int = Field(default=1048576, ge=16384, le=100 * 1048576)
    #: The worker's local state directory (faust's data dir, ``<dir>/<group>-data``); nothing
    #: in it needs to survive a restart (the table's store is in memory).
    kafka_worker_data_dir: Path = Field(
        default_factory=lambda: _default_cache_dir() / "worker")
    #: Port of the worker's Prometheus ``/metrics`` (0: any free port, logged; -1: none).
    metrics_port: int = Field(default=9464, ge=-1, le=65535)
    #: Revised transcripts: when a call ends, each channel is decoded again as a whole (as
    #: ``callscribe transcribe`` decodes a file) in one thread at nice 19 with its own copy
    #: of the model (~160 MB), waiting while live decoding is behind, and published as
    #: ``revised_transcript`` records (after the CallSummary, on the transcripts topic).
    #: Needs ``revised_transcript.schema.json`` in the schema directory (without it the
    #: worker logs that revisions are off).
    kafka_worker_revisions: bool = True
    #: Ended channels held in memory waiting for their revision; more wait in the worker
    #: table (never dropped) and are queued as the queue drains.
    kafka_worker_revisions_queue: int = Field(default=1000, ge=1, le=1000000)
    #: The longest channel (s of audio) revised; a longer one gets no revision (logged and
    #: counted ``too_long``): its whole audio is held in memory while it is decoded (~230 MB
    #: per hour at 16 kHz).
    kafka_worker_revision_max_audio_s: float = Field(default=3600.0, ge=10.0, le=6 * 3600.0)
    #: Seconds a revision waits after its call ended before it starts (0: at once).  Tests use
    #: it to stop a worker with a revision queued; a deployment may use it to let a burst of
    #: live traffic pass before revising.
    kafka_worker_revision_delay_s: float = Field(default=0.0, ge=0.0, le=86400.0)
    # --- end kafka -----------------------------------------------------------------------

    # --- analytics (services/callscribe/analytics/) ----------------------------------------
    #: PII redacted from finals and partials before they leave the worker: comma separated
    #: CARD, PHONE, EMAIL, IBAN, BANK_ACCOUNT, CN_ID, SSN, or ``all`` / ``none``.  A call's
    #: ``options.redaction`` (``callscribe produce --redact``) overrides it.
    redact_entities: str = "all"
    #: ``mask``: an entity becomes its tag (``[CARD]``); ``drop``: it is removed.
    redact_mode: Literal["mask", "drop"] = "mask"
    #: ``callscribe serve`` (standalone): redact finals and partials sent to WebSocket clients
    #: with the same entities and mode (off: clients get what was said).
    gateway_redact: bool = False
    #: Topic for the *unredacted* finals (same records before redaction, keyed by call_id);
    #: empty: the original text never leaves the worker.  Restrict its ACLs.
    kafka_topic_clear_transcripts: str = Field(default="",
                                               pattern=r"^([A-Za-z0-9._-]{1,249})?$")
    #: Topic of CategoryEvent records (categories of the rules file as they match).
    kafka_topic_analytics: str = Field(default="callscribe.analytics",
                                       pattern=r"^[A-Za-z0-9._-]{1,249}$")
    #: Call characteristics (talk, non-talk, interruptions, speed, loudness, polarity by
    #: quarter) in the CallSummary.
    analytics_enabled: bool = True
    #: Categories: a rules file (JSON or YAML, schemas/category_rules.schema.json); empty:
    #: no categories.  Read and validated at start.
    analytics_rules_file: Path | None = None

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, v: Path | None) -> Path | None:
        if v is not None and str(v) and not v.is_dir():
            raise ValueError(f"{v} is not a directory; point it at a CTranslate2 Whisper model "
                             "directory or unset it to use the bundled model")
        return v if v is not None and str(v) else None

    @field_validator("redact_entities")
    @classmethod
    def _known_entities(cls, v: str) -> str:
        from callscribe.analytics.redact import parse_entities

        try:
            parse_entities(v)
        except Exception as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("analytics_rules_file")
    @classmethod
    def _rules_file_exists(cls, v: Path | None) -> Path | None:
        if v is None or not str(v):
            return None
        if not v.is_file():
            raise ValueError(f"{v}: no such rules file (JSON or YAML; unset it for no "
                             "categories)")
        return v

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
