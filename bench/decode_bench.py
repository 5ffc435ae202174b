"""Decode cost and accuracy of the engine's decode strategies on the shared recordings.

    python bench/decode_bench.py [--audio ../shared/audio]

Prints, per strategy: real-time factor (wall), CPU seconds per audio second, and the pooled
WER (English) / CER (Mandarin) against the manifest transcripts.  Also the full streaming
session (VAD + partials + finals) as ``callscribe transcribe`` runs it.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

from callscribe.benchmark.metrics import error_rate  # noqa: E402

from callscribe.asr.engine import DecodeRequest  # noqa: E402
from callscribe.audio import decode_bytes  # noqa: E402
from callscribe.recognition.runtime import Runtime, StreamOptions  # noqa: E402
from callscribe.settings import load_settings  # noqa: E402
from callscribe.transcribe import transcribe_live  # noqa: E402

FILES = ["en_jfk_16k.wav", "en_librispeech_1995-1837-0001.wav", "en_ps_librivox_0870.wav",
         "en_ps_librivox_0880.wav", "en_ps_librivox_0890.wav", "en_ldc93s1_16k.wav",
         "en_ldc93s1_8k.wav", "zh_aishell_BAC009S0724W0121.wav", "zh_funasr_sample.wav"]


def load(audio_dir: Path):
    with open(audio_dir / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        manifest = {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}
    return [(name, manifest[name]["transcript"], "zh" if name.startswith("zh") else "en",
             decode_bytes((audio_dir / name).read_bytes(), "wav")[0]) for name in FILES]


def measure(label, items, fn, rows):
    cpu0, wall0 = time.process_time(), time.perf_counter()
    pairs = {"en": [], "zh": []}
    audio_s = 0.0
    for name, ref, lang, audio in items:
        pairs[lang].append((ref, fn(name, audio)))
        audio_s += len(audio) / 16000
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rows.append((label, wall / audio_s, cpu / audio_s, error_rate(pairs["en"], "en"),
                 error_rate(pairs["zh"], "zh")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--audio", default=os.environ.get("CALLSCRIBE_TEST_AUDIO", "../shared/audio"))
    args = ap.parse_args()
    audio_dir = Path(args.audio)
    settings = load_settings()
    rt = Runtime.create(settings)
    eng = rt.engine
    items = load(audio_dir)
    rows: list = []
    eng.decode(DecodeRequest(audio=items[0][3]))  # warm-up

    def final(window):
        def fn(name, audio):
            old = eng.min_final_window_s
            eng.min_final_window_s = window
            try:
                return eng.decode(DecodeRequest(audio=audio)).text
            finally:
                eng.min_final_window_s = old
        return fn

    measure("final, padded to 30 s (whisper default)", items, final(30.0), rows)
    measure("final, padded to max(10 s, 2x)", items, final(10.0), rows)
    measure("final, padded to max(6 s, 2x) [default]", items, final(6.0), rows)
    measure("final, padded to max(4 s, 2x)", items, final(4.0), rows)
    measure("partial (len+1 s, timestamp mode)", items,
            lambda n, a: eng.decode(DecodeRequest(audio=a, partial=True)).text, rows)

    def partial_stream(name, audio):
        # the partial load of one sentence: a decode every 1 s of audio
        text = ""
        for end in range(16000, len(audio) + 1, 16000):
            text = eng.decode(DecodeRequest(audio=audio[:end], partial=True)).text
        return eng.decode(DecodeRequest(audio=audio)).text if not text else text
    measure("partials every 1 s over the whole utterance", items, partial_stream, rows)

    def session(name, audio):
        path = audio_dir / name
        return " ".join(s.text for _, s in transcribe_live(rt, path, StreamOptions(partials=True)))
    measure("streaming session (VAD + partials + finals)", items, session, rows)

    print(f"{'strategy':48s} {'RTF':>6s} {'CPU s/s':>8s} {'WER en':>7s} {'CER zh':>7s}")
    for label, rtf, cps, wer, cer in rows:
        print(f"{label:48s} {rtf:6.3f} {cps:8.3f} {wer:7.3f} {cer:7.3f}")
    audio_total = sum(len(a) for *_, a in items) / 16000
    print(f"\n{len(items)} files, {audio_total:.1f} s of audio, compute_type={settings.compute_type},"
          f" cpu_threads={settings.cpu_threads}, cores={os.cpu_count()}")
    rt.close()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
