"""``callscribe bench``: load, capacity search and soak, with a summary table, JSON and plots.

    callscribe bench abuse                      # issue 13's hostile cases (benchmark/abuse.py)
    callscribe bench load --mode standalone --clients 4
    callscribe bench capacity --mode standalone --max 12
    callscribe bench soak --mode standalone --clients 4 --minutes 10
    callscribe bench accuracy          # live vs whole-file WER/CER on the shared recordings

Results go to ``bench/results/<time>/`` (not committed): ``result.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from callscribe.settings import Settings


def add_bench_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: load, capacity search, soak, abuse")
    sub = p.add_subparsers(dest="bench_command", required=True)
    a = sub.add_parser("abuse", help="hostile clients beside a good session: /healthz latency, "
                                     "good session finish latency, RSS per case")
    a.add_argument("--audio", default=os.environ.get("CALLSCRIBE_TEST_AUDIO", "../shared/audio"),
                   help="folder with en_jfk_16k.wav")
    a.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    a.set_defaults(func=run_abuse_bench)
    for name, helptext in (("load", "one run at a fixed number of concurrent clients"),
                           ("capacity", "the largest N within the latency bounds"),
                           ("soak", "a fixed load for a set time: RSS and latency drift")):
        b = sub.add_parser(name, help=helptext)
        b.add_argument("--mode", choices=["standalone", "engine", "kafka"], default="standalone")
        b.add_argument("--audio", default=os.environ.get("CALLSCRIBE_TEST_AUDIO",
                                                         "../shared/audio"),
                       help="folder with MANIFEST.tsv and the real recordings")
        b.add_argument("--out", default="bench/results", help="results folder")
        b.add_argument("--max-sentence-silence", type=int, default=500, metavar="MS")
        b.add_argument("--kafka", default=None, metavar="BOOTSTRAP",
                       help="broker for --mode kafka (default: start the local one)")
        if name == "load":
            b.add_argument("--clients", type=int, default=4)
        elif name == "capacity":
            b.add_argument("--start", type=int, default=2)
            b.add_argument("--max", type=int, default=16)
            b.add_argument("--final-p95-ms", type=float, default=1500)
            b.add_argument("--partial-gap-ms", type=float, default=1000)
        else:
            b.add_argument("--clients", type=int, default=4)
            b.add_argument("--minutes", type=float, default=10)
        b.set_defaults(func=run_bench)
    a = sub.add_parser("accuracy", help="live vs whole-file error rates on the shared recordings")
    a.add_argument("--audio", default=os.environ.get("CALLSCRIBE_TEST_AUDIO", "../shared/audio"),
                   help="folder with MANIFEST.tsv and the real recordings")
    a.add_argument("--out", default="bench/results", help="results folder")
    a.add_argument("--max-sentence-silence", type=int, default=500, metavar="MS")
    a.add_argument("--alignments", type=int, default=8,
                   help="offsets (37 ms apart) at which the benchmark call is streamed")
    a.set_defaults(func=run_accuracy)


def _machine() -> dict:
    return {"cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def _table(rows: list[dict]) -> str:
    head = (f"{'mode':10s} {'N':>3s} {'ok':>3s} {'final p50/p95/p99 ms':>22s} "
            f"{'net p95':>8s} {'1st partial p95':>15s} {'gap p95':>8s} {'CPU s/s':>8s} "
            f"{'RSS MiB':>8s} {'WER':>6s} {'err':>4s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        f = r["final_ms"]
        lines.append(
            f"{r['mode']:10s} {r['clients']:3d} {r['sessions']:3d} "
            f"{f[50]!s:>6s}/{f[95]!s:>6s}/{f[99]!s:>6s}  {r['final_net_of_silence_ms'][95]!s:>8s} "
            f"{r['first_partial_ms'][95]!s:>15s} {r['partial_gap_ms'][95]!s:>8s} "
            f"{r['cpu_s_per_audio_s']:8.3f} {r['peak_rss_mib']:8.1f} {r['wer']!s:>6s} "
            f"{len(r['errors']):4d}"
            + (f"  kafka hop p50 ms: {r['kafka_hop_p50_ms']}" if "kafka_hop_p50_ms" in r else ""))
    return "\n".join(lines)


def _whole_file_wer(load: Any, settings: Settings) -> float:
    """Computed before the run, in this process (the model is loaded and closed here)."""
    from callscribe.benchmark.accuracy import whole_file_wer
    from callscribe.recognition.runtime import Runtime

    runtime = Runtime.create(settings)
    try:
        return whole_file_wer(runtime, load)
    finally:
        runtime.close()


def run_accuracy(args: argparse.Namespace, settings: Settings) -> int:
    from callscribe.benchmark import accuracy
    from callscribe.benchmark.runner import results_dir
    from callscribe.recognition.runtime import Runtime

    audio = Path(args.audio)
    runtime = Runtime.create(settings)
    try:
        doc = {"command": "accuracy", "machine": _machine(),
               "final_beam_size": settings.final_beam_size,
               "final_context_ms": settings.final_context_ms,
               "recordings": accuracy.recordings(runtime, audio, args.max_sentence_silence),
               "call": accuracy.call(runtime, audio, args.max_sentence_silence, args.alignments)}
    finally:
        runtime.close()
    out = results_dir(Path(args.out))
    (out / "result.json").write_text(json.dumps(doc, indent=2))
    print(accuracy.table(doc))
    print(f"\nresults: {out}")
    return 0


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    from callscribe.benchmark import plots
    from callscribe.benchmark.runner import RunConfig, results_dir, run_load, within_bounds
    from callscribe.benchmark.target import target
    from callscribe.benchmark.workload import build_workload

    load = build_workload(Path(args.audio))
    out = results_dir(Path(args.out))
    doc: dict = {"command": args.bench_command, "machine": _machine(),
                 "workload_s": round(load.duration_s, 1), "runs": [],
                 "wer_whole_file": round(_whole_file_wer(load, settings), 4)}
    with target(args.mode, settings, kafka=args.kafka) as tgt:
        if args.bench_command == "load":
            doc["runs"].append(run_load(RunConfig(args.mode, args.clients,
                                                  args.max_sentence_silence), load, **tgt))
        elif args.bench_command == "capacity":
            best = 0
            for n in range(args.start, args.max + 1, 2):
                fig = run_load(RunConfig(args.mode, n, args.max_sentence_silence), load, **tgt)
                doc["runs"].append(fig)
                print(_table([fig]).splitlines()[-1], flush=True)
                if not within_bounds(fig, args.final_p95_ms, args.partial_gap_ms):
                    break
                best = n
            doc["capacity"] = best
        else:
            doc["soak"] = []
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                fig = run_load(RunConfig(args.mode, args.clients, args.max_sentence_silence),
                               load, **tgt)
                fig["t_s"] = round(args.minutes * 60 - (end - time.monotonic()), 1)
                doc["runs"].append(fig)
                print(_table([fig]).splitlines()[-1], flush=True)
            doc["drift"] = plots.drift(doc["runs"])
    (out / "result.json").write_text(json.dumps(doc, indent=2))
    plots.write_all(doc, out)
    print(_table(doc["runs"]))
    wers = sorted({r["wer"] for r in doc["runs"] if r["wer"] is not None})
    print(f"\nWER: streaming finals {', '.join(map(str, wers)) or '-'}; the same model on each "
          f"whole recording at once {doc['wer_whole_file']}")
    if "capacity" in doc:
        print(f"\ncapacity ({args.mode}): {doc['capacity']} concurrent real-time streams")
    if "drift" in doc:
        print(f"\nsoak drift: {doc['drift']}")
    print(f"\nresults: {out}")
    return 0


def run_abuse_bench(args: argparse.Namespace, settings: Settings) -> int:
    from callscribe.benchmark.abuse import run_abuse

    return run_abuse(Path(args.audio), [c for c in args.cases.split(",") if c] or None)
