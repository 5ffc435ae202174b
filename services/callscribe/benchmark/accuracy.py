"""Accuracy on every shared recording with a reference transcript: live vs whole-file.

``callscribe bench accuracy`` prints, pooled per language (WER for English, CER for Mandarin):

* ``live``: the finals the live service sends (``transcribe --live``: streaming sessions fed
  in 100 ms steps, partials on, ``max_sentence_silence`` as given);
* ``whole-file``: ``transcribe`` (each channel decoded at once, beam search, full context);
* ``call``: the benchmark call (the English recordings joined with 1.5 s pauses) streamed live
  at 8 alignments (37 ms apart), against each recording decoded whole: short sentences cut
  at short pauses are where live decoding loses context.

Recordings: every file in ``MANIFEST.tsv`` with language ``en`` or ``zh`` and a verbatim
transcript (the stereo call per channel; the en/de music-licence file has only a summary,
the VAD sets have none).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callscribe.benchmark.metrics import error_rate
from callscribe.benchmark.workload import Workload, build_workload
from callscribe.recognition.events import FinalSentence
from callscribe.recognition.runtime import Runtime, StreamOptions
from callscribe.transcribe import transcribe_file, transcribe_live


@dataclass(frozen=True)
class Recording:
    name: str
    language: str
    #: the reference transcript per channel
    references: tuple[str, ...]


def corpus(audio_dir: Path) -> list[Recording]:
    with open(audio_dir / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for r in rows:
        lang = (r.get("language") or "").split(" ")[0]  # "zh (Mandarin)" -> "zh"
        text = r.get("transcript", "").strip()
        if lang not in ("en", "zh") or not text or r["file"].startswith("vad_"):
            continue
        if int(r.get("channels") or 1) > 1:
            refs = tuple(part.split(":", 1)[1].strip() for part in text.split("|"))
        else:
            refs = (text,)
        out.append(Recording(r["file"], lang, refs))
    return out


def _by_channel(results: list[tuple[int, FinalSentence]], channels: int) -> list[str]:
    return [" ".join(s.text for c, s in results if c == ch) for ch in range(channels)]


def _opts(rec: Recording, audio_dir: Path, silence_ms: int) -> StreamOptions:
    rate = 16000 if rec.name.endswith(".raw") else None
    return StreamOptions(partials=True, language_hints=(rec.language,), sample_rate=rate,
                         max_sentence_silence_ms=silence_ms)


def recordings(runtime: Runtime, audio_dir: Path, silence_ms: int = 500) -> dict:
    """Pooled error rates per language and mode, and the CPU each mode took."""
    pairs: dict[str, dict[str, list]] = {"live": {}, "whole-file": {}}
    cpu: dict[str, float] = {"live": 0.0, "whole-file": 0.0}
    audio_s = 0.0
    for rec in corpus(audio_dir):
        path = audio_dir / rec.name
        fmt = "pcm" if rec.name.endswith(".raw") else None
        for mode, run in (("live", transcribe_live), ("whole-file", transcribe_file)):
            t0 = time.process_time()
            results = run(runtime, path, _opts(rec, audio_dir, silence_ms), audio_format=fmt)
            cpu[mode] += time.process_time() - t0
            hyps = _by_channel(results, len(rec.references))
            pairs[mode].setdefault(rec.language, []).extend(zip(rec.references, hyps))
        audio_s += max((s.end_time for _, s in results), default=0) / 1000
    return {mode: {lang: {"error_rate": round(error_rate(p, lang), 4), "recordings": len(p)}
                   for lang, p in by_lang.items()} | {"cpu_s": round(cpu[mode], 1)}
            for mode, by_lang in pairs.items()}


def _stream(runtime: Runtime, load: Workload, silence_ms: int) -> str:
    pcm = np.frombuffer(load.pcm, "<i2").astype(np.float32) / 32768
    session = runtime.new_session(StreamOptions(partials=True, max_sentence_silence_ms=silence_ms,
                                                language_hints=("en",)))
    events = []
    for off in range(0, len(pcm), 1600):
        session.accept_waveform(pcm[off:off + 1600])
        events += session.process()
    session.input_finished()
    while session.has_work():
        events += session.process()
    return " ".join(e.text for e in events if isinstance(e, FinalSentence))


def call(runtime: Runtime, audio_dir: Path, silence_ms: int = 500, alignments: int = 8) -> dict:
    """The benchmark call streamed live at ``alignments`` offsets vs each recording whole."""
    load = build_workload(audio_dir)
    t0 = time.process_time()
    live = [(load.reference, _stream(runtime, load.for_client(i), silence_ms))
            for i in range(alignments)]
    live_cpu = time.process_time() - t0
    pcm = np.frombuffer(load.pcm, "<i2").astype(np.float32) / 32768
    call_whole = " ".join(s.text for _, s in _whole(runtime, pcm))
    return {"live_wer": round(error_rate(live, "en"), 4),
            "whole_file_wer": round(whole_file_wer(runtime, load), 4),
            "call_whole_file_wer": round(error_rate([(load.reference, call_whole)], "en"), 4),
            "live_cpu_s_per_audio_s": round(live_cpu / (alignments * load.duration_s), 3),
            "alignments": alignments}


def whole_file_wer(runtime: Runtime, load: Workload) -> float:
    """WER of ``transcribe`` (whole-file decoding) on each recording of the workload: the
    baseline the live finals are held to."""
    pairs = [(ref, " ".join(s.text for _, s in _whole(runtime, audio)))
             for ref, audio in load.utterances]
    return error_rate(pairs, "en")


def _whole(runtime: Runtime, audio: np.ndarray) -> list[tuple[int, FinalSentence]]:
    import tempfile
    import wave

    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        with wave.open(f.name, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        return transcribe_file(runtime, Path(f.name),
                               StreamOptions(partials=False, language_hints=("en",)))


def table(doc: dict) -> str:
    lines = [f"{'mode':12s} {'English WER':>12s} {'Mandarin CER':>13s} {'CPU s':>7s}"]
    for mode in ("live", "whole-file"):
        r = doc["recordings"][mode]
        lines.append(f"{mode:12s} {r.get('en', {}).get('error_rate', '-')!s:>12s} "
                     f"{r.get('zh', {}).get('error_rate', '-')!s:>13s} {r['cpu_s']:7.1f}")
    c = doc["call"]
    lines.append(f"call ({c['alignments']} alignments): live WER {c['live_wer']}; whole-file: the "
                 f"call {c['call_whole_file_wer']}, each recording {c['whole_file_wer']}; live "
                 f"CPU {c['live_cpu_s_per_audio_s']} s per audio s")
    return "\n".join(lines)
