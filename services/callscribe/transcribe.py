"""File transcription: whole-file by default, or exactly as the live service would.

* ``transcribe_file`` (whole file, the default of ``callscribe transcribe``): each channel is
  decoded at once with full context (:func:`transcribe_pcm`, shared with the Kafka worker's
  revised transcripts), as Whisper is meant to be used on a recording: VAD skips silence,
  beam search, each window conditioned on the previous text, word timestamps.  The
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


def _sentences(words: list[RawWord], pause_s: float) -> list[list[RawWord]]:
    """Words grouped into sentences at sentence-final punctuation and at pauses of at least
    ``pause_s`` (what ends a live sentence too)."""
    out: list[list[RawWord]] = [[]]
    for w in words:
        if out[-1] and w.start - out[-1][-1].end >= pause_s:
            out.append([])
        out[-1].append(w)
        t = w.text.strip()
        if t.endswith(_SENTENCE_END) and t.lower() not in _ABBREVIATIONS:
            out.append([])
    return [s for s in out if s]


#: clips: speech regions padded by this much, joined when closer than ``_CLIP_JOIN_S``
_CLIP_PAD_S = 0.3
_CLIP_JOIN_S = 3.0


def _clips(voiced: np.ndarray) -> list[float]:
    """Where to decode, on the recording's own timeline: the VAD's speech regions, padded and
    joined across pauses shorter than ``_CLIP_JOIN_S`` (so Whisper hears neighbouring
    sentences together, silences and all, and its timestamps need no remapping); the long
    silences between clips are skipped.  Each clip is decoded in 30 s windows, conditioned on
    the text before it.  Flat, as faster-whisper takes them: start, end, start, end, ..."""
    from callscribe.asr.vad import FRAME, SAMPLE_RATE

    frame_s = FRAME / SAMPLE_RATE
    idx = np.flatnonzero(voiced)
    if not len(idx):
        return []
    clips: list[list[float]] = []
    for i in idx:
        start, end = i * frame_s - _CLIP_PAD_S, (i + 1) * frame_s + _CLIP_PAD_S
        if clips and start - clips[-1][1] < _CLIP_JOIN_S:
            clips[-1][1] = end
        else:
            clips.append([max(0.0, start), end])
    total = len(voiced) * frame_s
    return [t for a, b in clips for t in (round(a, 3), round(min(b, total), 3))]


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
    out = [(ch, s) for ch, audio in enumerate(pcm) for s in transcribe_pcm(runtime, audio, opts)]
    out.sort(key=lambda p: (p[1].begin_time, p[0]))
    return out


def transcribe_pcm(runtime: Runtime, audio: np.ndarray, opts: StreamOptions, *,
                   pace: Callable[[], None] | None = None,
                   whisper: Any = None) -> list[FinalSentence]:
    """One channel decoded whole: float PCM at the engine's rate (16 kHz) in, its sentences
    (ids from 1, times in ms of ``audio``) out.  The one whole-file code path: ``callscribe
    transcribe`` and the Kafka worker's revised transcripts (pipeline/revisions.py) both call
    it; a sentence with no words left is skipped, so ids may have holes.  ``pace`` is called
    before each 30 s window is decoded (faster-whisper decodes its segments lazily): the
    worker blocks there while live decoding is behind, or raises to abandon the decode.
    ``whisper``: the faster-whisper model to decode with (default: the runtime's; the worker
    passes its low-priority copy)."""
    engine = runtime.engine
    fw = whisper or engine.whisper
    hook = make_final_hook(opts, runtime.settings, runtime.emotion)
    hints = [h for h in opts.language_hints if h and engine.supported_language(h)]
    fixed = hints[0] if len(hints) == 1 else None
    rate = engine.sample_rate
    audio = np.asarray(audio, np.float32).reshape(-1)
    voiced = _voiced(runtime, audio)
    clips = _clips(voiced)
    if not clips:
        return []
    if pace is not None:
        pace()
    segments, info = fw.transcribe(
        audio, language=fixed, multilingual=fixed is None,
        beam_size=runtime.settings.file_beam_size, clip_timestamps=clips,
        word_timestamps=True, condition_on_previous_text=True,
        initial_prompt=opts.context or None,
        hotwords=" ".join(h.text for h in opts.hotwords) or None)
    words = []
    for seg in segments:
        words += [RawWord(w.start, w.end, w.word, w.probability) for w in (seg.words or ())]
        if pace is not None:
            pace()
    pause_s = (opts.max_sentence_silence_ms or runtime.settings.max_sentence_silence_ms) / 1000
    out: list[FinalSentence] = []
    for sid, sent in enumerate(_sentences(words, pause_s), 1):
        sent = _trim_to_speech(sent, voiced)
        begin_ms, end_ms = int(sent[0].start * 1000), int(sent[-1].end * 1000)
        clip = audio[begin_ms * rate // 1000: end_ms * rate // 1000]
        language = fixed or _detect(fw, rate, clip, hints) or info.language
        rel = [RawWord(w.start - sent[0].start, w.end - sent[0].start,
                       _script(w.text, language), w.probability) for w in sent]
        ws = close_sentence(to_words(rel, begin_ms, end_ms, language), language)
        if not ws:
            continue
        final = FinalSentence(sid, begin_ms, end_ms, words_text(ws, language), tuple(ws),
                              language)
        out.append(hook(final, clip))
    return out


def _voiced(runtime: Runtime, audio: np.ndarray) -> np.ndarray:
    """Per 32 ms frame: does the service's VAD hear speech?"""
    from callscribe.asr.vad import VadState

    probs = np.concatenate([runtime.vad.probabilities(VadState(), audio[i:i + 1 << 20])
                            for i in range(0, len(audio), 1 << 20)] or [np.zeros(0)])
    return probs >= runtime.settings.vad_threshold


def _trim_to_speech(sent: list[RawWord], voiced: np.ndarray) -> list[RawWord]:
    """Whisper's alignment puts the first word of a segment at the start of its (padded) VAD
    chunk, up to ~0.7 s before the voice: move a sentence's first word start and last word end
    onto the voiced frames they contain, so sentence times are where the speech is."""
    from callscribe.asr.vad import FRAME, SAMPLE_RATE

    frame_s = FRAME / SAMPLE_RATE

    def frames(w: RawWord) -> np.ndarray:
        a, b = int(w.start / frame_s), int(np.ceil(w.end / frame_s))
        return np.flatnonzero(voiced[a:b]) + a

    first, last = sent[0], sent[-1]
    f = frames(first)
    if len(f):
        sent = [RawWord(max(first.start, f[0] * frame_s), first.end, first.text,
                        first.probability)] + sent[1:]
    last = sent[-1]
    f = frames(last)
    if len(f):
        end = max(last.start, min(last.end, (f[-1] + 1) * frame_s))
        sent = sent[:-1] + [RawWord(last.start, end, last.text, last.probability)]
    return sent


def _script(text: str, language: str | None) -> str:
    if language == "zh":
        import zhconv
        return zhconv.convert(text, "zh-cn")
    return text


def _detect(whisper, rate: int, clip: np.ndarray, hints: list[str]) -> str | None:
    """The language of one sentence (files can switch language), within ``hints``."""
    if len(clip) < rate // 2:
        return None
    _, _, probs = whisper.detect_language(clip)
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
