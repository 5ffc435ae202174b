"""CPU cost of call analytics per call-minute, against the cost of recognising the call.

Recognises a stereo call (default: the analytics test call, built from ../shared/audio and
espeak-ng PII sentences by tests/analytics_call.py; or ``--file`` any stereo recording) once,
measuring the process CPU time, then repeats what the worker adds per call:

* loudness on every 100 ms chunk of both channels (``loudness_update``);
* redaction of every final and of partials (one per word of each final, the worst case of
  the 800 ms partial interval: each a longer prefix, as they come while a sentence grows);
* the channel accumulators and live categories (``note_final``) with a 7-rule file;
* the summary's characteristics and end-of-call categories (``summarise``).

Prints CPU ms per call-minute for each step and the total as a percentage of recognition's
CPU per call-minute (the target is under 2 %).

    python bench/analytics_bench.py [--file stereo.wav] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from callscribe.analytics.categories import parse_rules  # noqa: E402
from callscribe.analytics.characteristics import loudness_update  # noqa: E402
from callscribe.analytics.live import CallAnalytics  # noqa: E402
from callscribe.analytics.redact import Redactor  # noqa: E402
from callscribe.pipeline.calls import ChannelRecord  # noqa: E402
from callscribe.pipeline.codec import transcript_from_final, transcript_from_partial  # noqa: E402
from callscribe.recognition.events import Partial  # noqa: E402
from callscribe.recognition.runtime import Runtime, StreamOptions  # noqa: E402
from callscribe.settings import load_settings  # noqa: E402
from callscribe.transcribe import transcribe_file  # noqa: E402


def cpu() -> float:
    return time.process_time()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=None, help="a stereo recording")
    ap.add_argument("--repeat", type=int, default=20, help="analytics passes to average")
    args = ap.parse_args()
    if args.file is None:
        from analytics_call import build_call
        from test_analytics_pipeline import RULES

        tmp = Path(tempfile.mkdtemp(prefix="analytics-bench-"))
        args.file, _ = build_call(HERE.parent.parent / "shared" / "audio", tmp)
        rules = parse_rules(RULES)
    else:
        rules = parse_rules({"version": 1, "categories": []})
    with wave.open(str(args.file)) as w:
        ch, rate = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, ch)
    minutes = len(pcm) / rate / 60
    pcm = pcm.T.astype(np.float32) / 32768.0

    settings = load_settings()
    runtime = Runtime.create(settings)
    try:
        t0 = cpu()
        results = transcribe_file(runtime, args.file,
                                  StreamOptions(language_hints=("en",), partials=False))
        recog = cpu() - t0
    finally:
        runtime.close()

    ca = CallAnalytics(Redactor(), rules)
    finals = [(c, transcript_from_final("bench", c, "agent" if c == 0 else "customer", s,
                                        "e", "m")) for c, s in results]
    partials = []
    for c, ev in finals:
        words = ev.text.split(" ")
        for k in range(1, len(words) + 1):
            text = " ".join(words[:k])
            partials.append(transcript_from_partial(
                "bench", c, ev.role, Partial(ev.sentence_id, ev.begin_ms, ev.end_ms, text, "",
                                             "en"), "e", "m"))
    steps = {"loudness": 0.0, "redact_finals": 0.0, "redact_partials": 0.0,
             "note_final": 0.0, "summary": 0.0}
    for _ in range(args.repeat):
        records = {0: ChannelRecord(role="agent"), 1: ChannelRecord(role="customer")}
        t = cpu()
        for c in range(min(2, ch)):
            for i in range(0, pcm.shape[1], rate // 10):
                loudness_update(records[c].loud, pcm[c, i:i + rate // 10])
        steps["loudness"] += cpu() - t
        t = cpu()
        red = [ca.redact(ev) for _, ev in finals]
        steps["redact_finals"] += cpu() - t
        t = cpu()
        for p in partials:
            ca.redact(p)
        steps["redact_partials"] += cpu() - t
        t = cpu()
        for (c, ev), r in zip(finals, red):
            ca.note_final(records[c], ev, r)
        steps["note_final"] += cpu() - t
        t = cpu()
        ca.summarise(records, int(minutes * 60000))
        steps["summary"] += cpu() - t
    per_min = {k: v / args.repeat / minutes * 1000 for k, v in steps.items()}
    total = sum(per_min.values())
    recog_per_min = recog / minutes * 1000
    print(json.dumps({
        "file": str(args.file), "call_minutes": round(minutes, 3), "finals": len(finals),
        "partials_redacted": len(partials),
        "recognition_cpu_ms_per_call_minute": round(recog_per_min, 1),
        "analytics_cpu_ms_per_call_minute": {k: round(v, 3) for k, v in per_min.items()},
        "analytics_total_cpu_ms_per_call_minute": round(total, 2),
        "analytics_share_of_recognition_percent": round(100 * total / recog_per_min, 3),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
