"""The Qwen-ASR realtime session configuration: the model names and ``session.update``.

``session.update`` arrives in either shape the ``dashscope`` SDK sends (the legacy top-level
``input_audio_format`` + ``sample_rate``, or ``session.audio.input.format = {type,
sample_rate}``); :func:`parse_session` validates either into a :class:`Config`, raising a
:class:`~callscribe.errors.RequestError` subclass with the parameter path for the ``error``
event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from callscribe.errors import AppendTooLarge, BufferTooLong, InvalidValue
from callscribe.wire import finite_number

MODEL = "qwen3-asr-flash-realtime"
#: the model and its dated snapshots (``qwen3-asr-flash-realtime-2025-10-27``)
MODEL_RE = re.compile(r"^qwen3-asr-flash-realtime(-\d{4}-\d{2}-\d{2})?$")
#: accepted ``input_audio_format`` values -> decoder format ("pcm16": the SDK's legacy default)
FORMATS = {"pcm": "pcm", "pcm16": "pcm", "opus": "opus"}
SAMPLE_RATES = (16000, 8000)
DEFAULT_THRESHOLD = 0.2
DEFAULT_SILENCE_MS = 800
#: ``language`` of ``.text`` / ``.completed`` events when nothing was heard yet and the session
#: has no language hint (e.g. a manual commit of silence): never null
DEFAULT_LANGUAGE = "en"


def model_problem(model: str | None) -> str:
    """The error text for a missing or unsupported ``?model=`` (never shows a Python None)."""
    use = f"use {MODEL} or a dated snapshot ({MODEL}-YYYY-MM-DD)"
    if not model:
        return (f"the model query parameter is missing: connect to "
                f"/api-ws/v1/realtime?model={MODEL} ({use})")
    return f"model {model!r} is not supported here; {use}"


def vad_probability(threshold: float, base: float) -> float:
    """Qwen's ``turn_detection.threshold`` (-1..1, default 0.2, higher = less sensitive) as a
    Silero speech probability: piecewise linear through (-1, 0.05), (0.2, ``base``, the
    server's tuned ``CALLSCRIBE_VAD_THRESHOLD``) and (1, 0.95)."""
    if threshold >= DEFAULT_THRESHOLD:
        return round(base + (threshold - DEFAULT_THRESHOLD) / 0.8 * (0.95 - base), 4)
    return round(base - (DEFAULT_THRESHOLD - threshold) / 1.2 * (base - 0.05), 4)


@dataclass(frozen=True)
class Config:
    format: str = "pcm"
    sample_rate: int = 16000
    language: str | None = None
    corpus: str | None = None
    vad: bool = True
    threshold: float = DEFAULT_THRESHOLD
    silence_ms: int = DEFAULT_SILENCE_MS


def session_object(c: Config, session_id: str, model: str) -> dict[str, Any]:
    """The ``session`` of ``session.created`` / ``session.updated``."""
    tr: dict[str, Any] = {}
    if c.language:
        tr["language"] = c.language
    if c.corpus:
        tr["corpus"] = {"text": c.corpus}
    return {"id": session_id, "object": "realtime.session", "model": model,
            "modalities": ["text"], "input_audio_format": c.format,
            "sample_rate": c.sample_rate, "input_audio_transcription": tr,
            "turn_detection": {"type": "server_vad", "threshold": c.threshold,
                               "silence_duration_ms": c.silence_ms} if c.vad else None}


def _number(v: Any) -> bool:
    """An int or a finite float: NaN, Infinity and 1e400 (read as infinity) are not numbers
    a parameter can take."""
    return finite_number(v)


def parse_session(s: dict[str, Any], cur: Config) -> Config:
    """``cur`` updated by a ``session.update`` body, in either shape the SDK sends (legacy
    ``input_audio_format`` + ``sample_rate``, or ``audio.input.format = {type, sample_rate}``).
    Absent keys keep their value; unknown keys are ignored."""
    fmt, rate = s.get("input_audio_format"), s.get("sample_rate")
    fp, rp = "session.input_audio_format", "session.sample_rate"
    audio = s.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    new = inp.get("format") if isinstance(inp, dict) else None
    if isinstance(new, dict):
        fmt, rate = new.get("type"), new.get("sample_rate")
        fp, rp = "session.audio.input.format.type", "session.audio.input.format.sample_rate"
    out = cur
    if fmt is not None:
        if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
            raise InvalidValue(f"Invalid value: {fmt!r}. Supported values are: 'pcm', 'opus'.", fp)
        out = replace(out, format=FORMATS[fmt.lower()])
    if rate is not None:
        if rate not in SAMPLE_RATES or isinstance(rate, bool):
            raise InvalidValue(f"Invalid value: {rate!r}. Supported sample rates are 16000 and "
                               "8000 (Hz).", rp)
        out = replace(out, sample_rate=int(rate))
    tr = s.get("input_audio_transcription")
    if isinstance(tr, dict) and "language" in tr:
        lang = tr["language"]
        if lang is not None and (not isinstance(lang, str) or not 0 < len(lang) <= 16):
            raise InvalidValue(f"Invalid value: {lang!r}. language is a code such as 'zh' or "
                               "'en'.",
                               "session.input_audio_transcription.language")
        out = replace(out, language=lang.strip().lower() if lang else None)
    if isinstance(tr, dict) and "corpus" in tr:
        corpus = tr["corpus"]
        text = corpus.get("text") if isinstance(corpus, dict) else None
        if text is not None and not isinstance(text, str):
            raise InvalidValue("corpus.text must be a string",
                               "session.input_audio_transcription.corpus.text")
        out = replace(out, corpus=(text.strip() or None) if text else None)
    if "turn_detection" in s:
        td = s["turn_detection"]
        if td is None:
            return replace(out, vad=False)
        if not isinstance(td, dict):
            raise InvalidValue("turn_detection must be an object or null",
                               "session.turn_detection")
        if td.get("type", "server_vad") != "server_vad":
            raise InvalidValue(f"Invalid value: {td.get('type')!r}. Supported values are: "
                               "'server_vad' (or turn_detection: null for manual commits).",
                               "session.turn_detection.type")
        th = td.get("threshold", DEFAULT_THRESHOLD)
        if not _number(th) or not -1.0 <= th <= 1.0:
            raise InvalidValue(f"Invalid value: {th!r}. threshold is a number from -1 to 1.",
                               "session.turn_detection.threshold")
        sil = td.get("silence_duration_ms", DEFAULT_SILENCE_MS)
        if not _number(sil) or sil != int(sil) or not 200 <= sil <= 6000:
            raise InvalidValue(f"Invalid value: {sil!r}. silence_duration_ms is an integer from "
                               "200 to 6000.",
                               "session.turn_detection.silence_duration_ms")
        out = replace(out, vad=True, threshold=float(th), silence_ms=int(sil))
    return out


def check_pcm_append(audio_b64: str, cfg: Config, uncommitted_ms: float, max_append_ms: int,
                     max_item_ms: int) -> float:
    """The duration (ms) of a pcm append, measured from its base64 length before anything is
    decoded (0 for other formats, whose length is known only once decoded).

    Raises RequestError ``input_audio_buffer_too_long`` in manual mode when the append would
    take the audio since the last commit (``uncommitted_ms``) over ``max_item_ms`` (the append
    is refused and not transcribed; the audio before it stays), and ``audio_too_large`` when
    the append alone is over ``max_append_ms`` (the session's buffer,
    ``CALLSCRIBE_MAX_BUFFERED_AUDIO_MS``)."""
    if cfg.format != "pcm":
        return 0.0
    nbytes = len(audio_b64) // 4 * 3 - audio_b64[-2:].count("=")
    ms = nbytes // 2 * 1000 / cfg.sample_rate
    if not cfg.vad and uncommitted_ms + ms > max_item_ms:
        raise BufferTooLong(
            f"this append would take the audio since the last commit to "
            f"{(uncommitted_ms + ms) / 1000:.1f} s; at most {max_item_ms // 1000} s fit in one "
            "item: commit first. The append was refused; the audio before it is kept", "audio")
    if ms > max_append_ms:
        raise AppendTooLarge(f"one append carries {ms / 1000:.1f} s of audio; at most "
                             f"{max_append_ms / 1000:g} s (CALLSCRIBE_MAX_BUFFERED_AUDIO_MS) may "
                             "be sent in one event", "audio")
    return ms
