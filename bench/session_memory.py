"""RSS cost of idle recognition sessions (one loaded model serves them all).

    python bench/session_memory.py [--sessions 200]

Each session is fed 2 s of silence (so its VAD state and pre-roll buffer exist), then kept.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np

from callscribe.recognition.runtime import Runtime, StreamOptions
from callscribe.settings import load_settings


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    args = ap.parse_args()
    rt = Runtime.create(load_settings())
    silence = np.zeros(32000, np.float32)
    warm = rt.new_session(StreamOptions())
    warm.accept_waveform(silence)
    warm.process()
    gc.collect()
    base = rss_kib()
    sessions = []
    for _ in range(args.sessions):
        s = rt.new_session(StreamOptions())
        s.accept_waveform(silence)
        s.process()
        sessions.append(s)
    gc.collect()
    grown = rss_kib() - base
    print(f"process RSS with model loaded: {base / 1024:.1f} MiB")
    print(f"{args.sessions} idle sessions: +{grown / 1024:.2f} MiB, "
          f"{grown / args.sessions:.1f} KiB per session")
    rt.close()


if __name__ == "__main__":
    main()
