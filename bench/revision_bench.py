"""Live final delay on ONE pipeline worker with revised transcripts on, then off.

    .venv/bin/python bench/revision_bench.py                 # 6 calls, 3 s apart, a local broker
    .venv/bin/python bench/revision_bench.py --calls 8 --gap 3 --file call.wav

Starts a broker (unless --bootstrap); for each mode (``CALLSCRIBE_KAFKA_WORKER_REVISIONS``
true and false, ``--rounds`` pairs in alternating order) creates fresh topics and starts one ``callscribe worker``, then streams the
recording as N calls in real time, each starting ``--gap`` s after the previous, so the
revisions of the calls that have ended run while later calls are live.  Prints, per mode,
each final's delay (wall time it was published minus the wall time its last audio was
produced: ``created_at_ms - (call start + end_ms)``) as p50 / p95 / max, and with revisions
on how long after its summary each call's revised transcript was complete and how many
revisions ran while a call was live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "services"))
sys.path.insert(0, str(REPO / "bench"))

from callscribe.benchmark.target import local_broker, worker_process  # noqa: E402

from callscribe.pipeline.codec import (AudioOptions, CallSummary, RevisedTranscript,  # noqa: E402
                                       TranscriptEvent, decode)
from callscribe.pipeline.producer import AudioProducer, produce_file  # noqa: E402
from callscribe.settings import load_settings  # noqa: E402


async def collect(settings, calls: set[str], revisions: bool, channels: int,
                  timeout: float) -> list:
    """(arrival wall ms, record) of the calls until every summary (and revision) is out."""
    consumer = AIOKafkaConsumer(settings.kafka_topic_transcripts,
                                bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    out: list = []
    summaries: set[str] = set()
    revised: dict[tuple[str, int], set[int]] = {}
    counts: dict[tuple[str, int], int] = {}

    def done() -> bool:
        if summaries != calls:
            return False
        return not revisions or (len(counts) == channels * len(calls) and all(
            len(revised[k]) >= max(1, n) for k, n in counts.items()))
    try:
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    rec = decode(r.value)
                    out.append((r.timestamp, rec))
                    if isinstance(rec, CallSummary):
                        summaries.add(rec.call_id)
                    elif isinstance(rec, RevisedTranscript):
                        k = (rec.call_id, rec.channel)
                        counts[k] = rec.sentence_count
                        revised.setdefault(k, set()).add(rec.sentence_id)
    finally:
        await consumer.stop()
    if not done():
        raise SystemExit(f"not done within {timeout} s")
    return out


async def run_mode(args, settings) -> tuple[list, dict[str, float], dict[str, float]]:
    calls = [f"rb-{uuid.uuid4().hex[:6]}-{i}" for i in range(args.calls)]
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}

    async def one(i: int, call: str, producer: AudioProducer) -> None:
        await asyncio.sleep(i * args.gap)
        starts[call] = time.time() * 1000
        await produce_file(args.file, call, ["agent", "customer"] if args.stereo else None,
                           True, settings=settings, producer=producer,
                           options=AudioOptions(language_hints=("en",)))
        ends[call] = time.time() * 1000

    async with AudioProducer(settings) as producer:
        task = asyncio.gather(*(one(i, c, producer) for i, c in enumerate(calls)))
        records = await collect(settings, set(calls), args.revisions,
                                2 if args.stereo else 1, 600)
        await task
    return records, starts, ends


def pct(vals: list[float], q: float) -> float:
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--gap", type=float, default=3.0, help="seconds between call starts")
    ap.add_argument("--file", default=str(REPO.parent / "shared" / "audio" /
                                          "en_jfk_16k.wav"))
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--rounds", type=int, default=2,
                    help="on/off pairs, alternating which goes first (load drifts)")
    args = ap.parse_args()
    args.stereo = "stereo" in Path(args.file).name
    tmp = Path(tempfile.mkdtemp(prefix="callscribe-rev-"))
    results = []
    modes = [m for r in range(args.rounds) for m in ((True, False) if r % 2 == 0
                                                       else (False, True))]
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(local_broker(tmp / "kafka"))
        for revisions in modes:
            tag = uuid.uuid4().hex[:6]
            env = {**os.environ, "CALLSCRIBE_KAFKA_BOOTSTRAP": bootstrap,
                   "CALLSCRIBE_KAFKA_TOPIC_AUDIO": f"rb-{tag}.audio",
                   "CALLSCRIBE_KAFKA_TOPIC_TRANSCRIPTS": f"rb-{tag}.transcripts",
                   "CALLSCRIBE_KAFKA_TOPIC_PARTIALS": f"rb-{tag}.partials",
                   "CALLSCRIBE_KAFKA_TOPIC_DEAD_LETTERS": f"rb-{tag}.dead",
                   "CALLSCRIBE_KAFKA_TOPIC_ANALYTICS": f"rb-{tag}.analytics",
                   "CALLSCRIBE_KAFKA_AUDIO_PARTITIONS": "4",
                   "CALLSCRIBE_KAFKA_WORKER_GROUP": f"rb-{tag}-worker",
                   "CALLSCRIBE_KAFKA_WORKER_DATA_DIR": str(tmp / "worker"),
                   "CALLSCRIBE_KAFKA_WORKER_REVISIONS": str(revisions).lower(),
                   "CALLSCRIBE_LOG_FORMAT": "json"}
            os.environ.update(env)
            settings = load_settings()
            with worker_process(env, tmp / f"worker-{revisions}.log"):
                args.revisions = revisions
                results.append((revisions, asyncio.run(run_mode(args, settings))))
    print(f"\n{args.calls} real-time calls of {Path(args.file).name}, {args.gap:g} s apart, "
          f"one worker, {os.cpu_count()} CPUs")
    for revisions, (records, starts, ends) in results:
        delays = [rec.created_at_ms - (starts[rec.call_id] + rec.end_ms) for _, rec in records
                  if isinstance(rec, TranscriptEvent) and rec.final and rec.call_id in starts]
        line = (f"  revisions {'on ' if revisions else 'off'}: {len(delays)} finals, delay "
                f"p50 {pct(delays, 0.5):.0f} ms, p95 {pct(delays, 0.95):.0f} ms, "
                f"max {max(delays):.0f} ms")
        if revisions:
            summary_at = {rec.call_id: ts for ts, rec in records
                          if isinstance(rec, CallSummary)}
            done_at: dict[str, int] = {}
            for ts, rec in records:
                if isinstance(rec, RevisedTranscript):
                    done_at[rec.call_id] = max(done_at.get(rec.call_id, 0), ts)
            lag = [done_at[c] - summary_at[c] for c in summary_at]
            live = sum(1 for c in done_at if any(starts[o] < done_at[c] < ends[o]
                                                 for o in starts if o != c))
            line += (f"; revised transcript complete {pct(lag, 0.5):.0f} ms (p50), "
                     f"{max(lag):.0f} ms (max) after the summary; {live} of {len(done_at)} "
                     "revisions finished while another call was live")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
