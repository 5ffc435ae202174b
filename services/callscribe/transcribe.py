"""File transcription: whole-file by default, or exactly as the live service would.

* ``transcribe_file`` (whole file, the default of ``callscribe transcribe``): each channel is
  decoded at once with full context, as Whisper is meant to be used on a recording: VAD skips
  silence, beam search, each window conditioned on the previous text, word timestamps.  The
  words are then grouped into sentences at sentence-final punctuation and get the same
  post-processing as live finals (hotword correction, ITN, emotion, language).
* ``transcribe_live`` (``--live``): the file is read in 64 KiB chunks through the streaming
  decoder; each channel gets its own ``RecognitionSession`` (channels are never mixed) fed in
  100 ms steps, exactly as a live stream would be: the finals the service would have sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any
from pathlib import Path

import numpy as np

from callscribe.analytics.characteristics import loudness_update
from callscribe.asr.engine import RawWord
from callscribe.audio import open_decoder, sniff_format
from callscribe.errors import UnsupportedFormat
from callscribe.recognition.events import FinalSentence
from callscribe.recognition.postprocess import make_final_hook
from callscribe.recognition.runtime import Runtime, StreamOptions
from callscribe.recognition.words import close_sentence, to_words, words_text

_EXT = {".wav": "wav", ".mp3": "mp3", ".opus": "opus", ".ogg": None, ".spx": "speex",
        ".aac": "aac", ".m4a": "m4a", ".mp4": "m4a", ".amr": "amr", ".flac": "flac",
        ".pcm": "pcm", ".raw": "pcm", ".s16le": "pcm", ".ulaw": "mulaw", ".mulaw": "mulaw",
        ".alaw": "alaw", ".g711u": "mulaw", ".g711a": "alaw"}
_RAW = {"pcm", "mulaw", "alaw"}
STEP = 1600  # 100 ms at 16 kHz


def guess_format(path: Path, head: bytes) -> str:
    fmt = sniff_format(head)
    if fmt:
        return fmt
    ext = path.suffix.lower()
    if ext in _EXT and _EXT[ext]:
        return _EXT[ext]
    raise UnsupportedFormat(f"cannot tell the audio format of {path}; pass --audio-format "
                            "(pcm, wav, mp3, opus, speex, aac, m4a, amr, flac, mulaw, alaw)")


def _open(runtime: Runtime, path: Path, opts: StreamOptions, audio_format: str | None):
    with open(path, "rb") as f:
        head = f.read(4096)
    fmt = audio_format or guess_format(path, head)
    rate = opts.sample_rate if fmt in _RAW else None
    if fmt in _RAW and rate is None:
        rate = 16000
    return open_decoder(fmt, rate, target_rate=runtime.engine.sample_rate)


def _read_all(path: Path, decoder, progress: Callable[[int], None] | None) -> np.ndarray:
    parts = []
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            parts.append(decoder.feed(block))
            if progress:
                progress(len(block))
    parts.append(decoder.finish())
    parts = [p if p.ndim == 2 else p[None] for p in parts if p.size]
    return np.concatenate(parts, axis=1) if parts else np.zeros((1, 0), np.float32)


_SENTENCE_END = tuple(".?!。？！")
#: a period after these ends no sentence
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "vs.",
                            "etc.", "e.g.", "i.e.", "no.", "mt.", "u.s.", "inc.", "ltd."})


def _sentences(words: list[RawWord]) -> list[list[RawWord]]:
    """Words grouped into sentences at sentence-final punctuation."""
    out: list[list[RawWord]] = [[]]
    for w in words:
        out[-1].append(w)
        t = w.text.strip()
        if t.endswith(_SENTENCE_END) and t.lower() not in _ABBREVIATIONS:
            out.append([])
    return [s for s in out if s]


def _levels(levels: dict | None, pcm: np.ndarray) -> None:
    """Analytics: each channel's loudness accumulator, and ``levels["samples"]`` per channel."""
    if levels is None:
        return
    for ch in range(pcm.shape[0]):
        loudness_update(levels.setdefault(ch, [0.0, 0.0, 0.0]), pcm[ch])
    levels["samples"] = levels.get("samples", 0) + pcm.shape[1]


def transcribe_file(runtime: Runtime, path: Path, opts: StreamOptions, *,
                    audio_format: str | None = None,
                    progress: Callable[[int], None] | None = None,
                    levels: dict | None = None) -> list[tuple[int, FinalSentence]]:
    """Whole-file transcription: ``(channel, sentence)`` pairs in time order.  ``levels``
    (analytics) gets each channel's loudness (see :func:`_levels`)."""
    pcm = _read_all(path, _open(runtime, path, opts, audio_format), progress)
    _levels(levels, pcm)
    engine = runtime.engine
    hook = make_final_hook(opts, runtime.settings, runtime.emotion)
    hints = [h for h in opts.language_hints if h and engine.supported_language(h)]
    fixed = hints[0] if len(hints) == 1 else None
    rate = engine.sample_rate
    out: list[tuple[int, FinalSentence]] = []
    for ch, audio in enumerate(pcm):
        segments, info = engine.whisper.transcribe(
            audio, language=fixed, multilingual=fixed is None,
            beam_size=runtime.settings.final_beam_size, vad_filter=True, word_timestamps=True,
            condition_on_previous_text=True, initial_prompt=opts.context or None,
            hotwords=" ".join(h.text for h in opts.hotwords) or None)
        words = [RawWord(w.start, w.end, w.word, w.probability)
                 for seg in segments for w in (seg.words or ())]
        for sid, sent in enumerate(_sentences(words), 1):
            begin_ms, end_ms = int(sent[0].start * 1000), int(sent[-1].end * 1000)
            clip = audio[begin_ms * rate // 1000: end_ms * rate // 1000]
            language = fixed or _detect(engine, clip, hints) or info.language
            rel = [RawWord(w.start - sent[0].start, w.end - sent[0].start,
                           _script(w.text, language), w.probability) for w in sent]
            ws = close_sentence(to_words(rel, begin_ms, end_ms, language), language)
            if not ws:
                continue
            final = FinalSentence(sid, begin_ms, end_ms, words_text(ws, language), tuple(ws),
                                  language)
            out.append((ch, hook(final, clip)))
    out.sort(key=lambda p: (p[1].begin_time, p[0]))
    return out


def _script(text: str, language: str | None) -> str:
    if language == "zh":
        import zhconv
        return zhconv.convert(text, "zh-cn")
    return text


def _detect(engine, clip: np.ndarray, hints: list[str]) -> str | None:
    """The language of one sentence (files can switch language), within ``hints``."""
    if len(clip) < engine.sample_rate // 2:
        return None
    _, _, probs = engine.whisper.detect_language(clip)
    allowed = [(code, p) for code, p in probs if not hints or code in hints]
    return allowed[0][0] if allowed else None


def transcribe_live(runtime: Runtime, path: Path, opts: StreamOptions, *,
                    audio_format: str | None = None,
                    progress: Callable[[int], None] | None = None,
                    levels: dict | None = None) -> list[tuple[int, FinalSentence]]:
    """The finals the live service would send for this audio: ``(channel, sentence)`` pairs
    in time order."""
    decoder = _open(runtime, path, opts, audio_format)
    sessions: list = []
    out: list[tuple[int, FinalSentence]] = []

    def feed(pcm: np.ndarray) -> None:
        if pcm.ndim == 1:
            pcm = pcm[None]
        while len(sessions) < pcm.shape[0]:
            sessions.append(runtime.new_session(opts))
        _levels(levels, pcm)
        for i in range(0, pcm.shape[1], STEP):
            for ch, session in enumerate(sessions):
                session.accept_waveform(pcm[ch, i:i + STEP])
                out.extend((ch, ev) for ev in session.process() if isinstance(ev, FinalSentence))

    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            feed(decoder.feed(block))
            if progress:
                progress(len(block))
    feed(decoder.finish())
    for ch, session in enumerate(sessions):
        session.input_finished()
        while session.has_work():
            out.extend((ch, ev) for ev in session.process() if isinstance(ev, FinalSentence))
    out.sort(key=lambda p: (p[1].begin_time, p[0]))
    return out


def sentence_dict(channel: int, s: FinalSentence) -> dict:
    d = {"sentence_id": s.sentence_id, "channel": channel, "begin_time": s.begin_time,
         "end_time": s.end_time, "text": s.text, "language": s.language,
         "words": [asdict(w) for w in s.words]}
    if s.emotion is not None:
        d["emotion"] = asdict(s.emotion)
    return d


def _ts(ms: int, sep: str) -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(results: list[tuple[int, FinalSentence]], fmt: str, *, file: str | None = None) -> str:
    channels = {ch for ch, _ in results}
    label = (lambda ch: f"[ch{ch}] ") if len(channels) > 1 else (lambda ch: "")
    if fmt == "json":
        doc: dict = {"sentences": [sentence_dict(ch, s) for ch, s in results]}
        if file is not None:
            doc = {"file": file, **doc}
        return json.dumps(doc, ensure_ascii=False)
    if fmt == "text":
        return "\n".join(f"{label(ch)}[{_ts(s.begin_time, '.')[3:]} {s.language or '?'}"
                         f"{' ' + s.emotion.polarity if s.emotion else ''}] {s.text}"
                         for ch, s in results)
    lines: list[str] = ["WEBVTT", ""] if fmt == "vtt" else []
    sep = "." if fmt == "vtt" else ","
    for i, (ch, s) in enumerate(results, 1):
        if fmt == "srt":
            lines.append(str(i))
        lines.append(f"{_ts(s.begin_time, sep)} --> {_ts(s.end_time, sep)}")
        lines.append(label(ch) + s.text)
        lines.append("")
    return "\n".join(lines)


def iter_outputs(runtime: Runtime, files: list[Path], opts: StreamOptions, fmt: str,
                 audio_format: str | None, progress_factory, *, live: bool = False,
                 analytics: Any = None, roles: tuple[str, ...] | None = None) -> Iterator[str]:
    """One output per file; with ``analytics`` (a CallAnalytics) the JSON analytics document
    (:func:`callscribe.analytics.offline.analyse_recording`) instead of ``fmt``."""
    run = transcribe_live if live else transcribe_file
    for path in files:
        size = path.stat().st_size
        levels: dict | None = {} if analytics is not None else None
        with progress_factory(path, size) as bar:
            results = run(runtime, path, opts, audio_format=audio_format,
                          progress=bar.update if bar else None, levels=levels)
        if analytics is None:
            yield render(results, fmt, file=str(path) if len(files) > 1 else None)
            continue
        yield json.dumps(analyse_file(results, levels or {}, analytics, roles, runtime,
                                      str(path)), ensure_ascii=False)


def analyse_file(results: list[tuple[int, FinalSentence]], levels: dict, analytics: Any,
                 roles: tuple[str, ...] | None, runtime: Runtime, file: str) -> dict:
    from callscribe.analytics.offline import analyse_recording
    from callscribe.pipeline.producer import default_roles

    n = sum(1 for k in levels if isinstance(k, int)) or 1
    names = tuple(roles) if roles else default_roles(n)
    doc = analyse_recording(
        results, roles=names,
        duration_ms=int(levels.get("samples", 0)) * 1000 // runtime.engine.sample_rate,
        levels={k: v for k, v in levels.items() if isinstance(k, int)}, analytics=analytics,
        engine=runtime.engine.name, model=runtime.engine.model_name)
    return {"file": file, **doc}
