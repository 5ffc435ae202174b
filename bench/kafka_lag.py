"""N concurrent real-time calls on ONE pipeline worker: the lag figures over time.

    .venv/bin/python bench/kafka_lag.py                    # 8 calls, a local broker
    .venv/bin/python bench/kafka_lag.py --clients 4 --file call.wav --bootstrap 127.0.0.1:9092

Starts a broker (unless --bootstrap), runs ``callscribe topics create`` and one
``callscribe worker``, streams the recording as N calls in real time (``produce_file`` with
``realtime``, starts 0.5 s apart), and samples the worker's /metrics every --every seconds
until every call's summary is out: live sessions, in-flight audio, the backlog (the
autoscaling figure), the group's committed lag (sum and largest partition), the fetch lag
and paused partitions.  Prints one row per sample, then where the autoscaling triggers would
fire: the chart's backlog trigger (ceil(backlog / 30 s) workers) and the old committed-lag
trigger (ceil(lag / 100 records) workers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "services"))

from callscribe.benchmark.target import local_broker, worker_process  # noqa: E402
from callscribe.pipeline.codec import AudioOptions, CallSummary, decode  # noqa: E402
from callscribe.pipeline.producer import AudioProducer, produce_file  # noqa: E402
from callscribe.settings import load_settings  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict:
    out: dict = {}
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out.setdefault(smp.name, {})[smp.labels.get("partition")] = smp.value
    return out


def sample(url: str, t: float) -> dict:
    m = scrape(url)
    one = lambda n: next(iter(m.get(n, {None: 0.0}).values()))  # noqa: E731
    committed = m.get("callscribe_worker_committed_lag", {})
    return {"t": round(t, 1), "sessions": int(one("callscribe_worker_sessions")),
            "inflight_s": round(one("callscribe_worker_inflight_audio_seconds"), 1),
            "backlog_s": round(one("callscribe_worker_backlog_audio_seconds"), 1),
            "committed_lag": int(sum(committed.values())),
            "committed_lag_max_partition": int(max(committed.values(), default=0)),
            "fetch_lag": int(sum(m.get("callscribe_worker_consumer_lag", {}).values())),
            "paused": int(one("callscribe_worker_paused_partitions")),
            "oldest_call_s": round(one("callscribe_worker_oldest_call_age_seconds"), 1)}


async def wait_summaries(settings, calls: set[str], timeout: float) -> None:
    consumer = AIOKafkaConsumer(settings.kafka_topic_transcripts,
                                bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        end = time.monotonic() + timeout
        while calls and time.monotonic() < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    rec = decode(r.value)
                    if isinstance(rec, CallSummary):
                        calls.discard(rec.call_id)
    finally:
        await consumer.stop()


async def run(args, settings, url: str) -> list[dict]:
    rows: list[dict] = []
    t0 = time.monotonic()
    calls = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(args.clients)]
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            rows.append(await asyncio.to_thread(sample, url, time.monotonic() - t0))
            print(json.dumps(rows[-1]), flush=True)
            try:
                await asyncio.wait_for(stop.wait(), args.every)
            except TimeoutError:
                pass

    async def one(i: int, call: str, producer: AudioProducer) -> None:
        await asyncio.sleep(i * 0.5)
        await produce_file(args.file, call, None, True, settings=settings, producer=producer,
                           options=AudioOptions(language_hints=("en",)))

    task = asyncio.create_task(sampler())
    async with AudioProducer(settings) as producer:
        await asyncio.gather(*(one(i, c, producer) for i, c in enumerate(calls)))
    await wait_summaries(settings, set(calls), 300)
    rows.append(await asyncio.to_thread(sample, url, time.monotonic() - t0))
    stop.set()
    await task
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--file", default=str(REPO.parent / "shared" / "audio" /
                                          "en_de_multilingual.mp3"))
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--partitions", type=int, default=12)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="callscribe-lag-"))
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(local_broker(tmp / "kafka"))
        tag = uuid.uuid4().hex[:6]
        env = {**os.environ, "CALLSCRIBE_KAFKA_BOOTSTRAP": bootstrap,
               "CALLSCRIBE_KAFKA_TOPIC_AUDIO": f"lag-{tag}.audio",
               "CALLSCRIBE_KAFKA_TOPIC_TRANSCRIPTS": f"lag-{tag}.transcripts",
               "CALLSCRIBE_KAFKA_TOPIC_PARTIALS": f"lag-{tag}.partials",
               "CALLSCRIBE_KAFKA_TOPIC_DEAD_LETTERS": f"lag-{tag}.dead",
               "CALLSCRIBE_KAFKA_AUDIO_PARTITIONS": str(args.partitions),
               "CALLSCRIBE_KAFKA_WORKER_GROUP": f"lag-{tag}-worker",
               "CALLSCRIBE_KAFKA_WORKER_DATA_DIR": str(tmp / "worker"),
               "CALLSCRIBE_LOG_FORMAT": "json"}
        os.environ.update(env)
        settings = load_settings()
        port = free_port()
        with worker_process(env, tmp / "worker.log", port):
            rows = asyncio.run(run(args, settings, f"http://127.0.0.1:{port}/metrics"))
    print(f"\n{args.clients} real-time calls of {Path(args.file).name}, one worker, "
          f"{os.cpu_count()} CPUs")
    for key in ("sessions", "inflight_s", "backlog_s", "committed_lag",
                "committed_lag_max_partition", "fetch_lag", "paused"):
        vals = [r[key] for r in rows if r["sessions"]] or [0]
        vals.sort()
        print(f"  {key:28} p50 {vals[len(vals) // 2]:>7}  max {vals[-1]:>7}")
    keda = [(r["t"], math.ceil(r["backlog_s"] / 30)) for r in rows]
    old = [(r["t"], math.ceil(r["committed_lag"] / 100)) for r in rows]
    first = lambda xs: next((t for t, n in xs if n > 1), None)  # noqa: E731
    print(f"  backlog trigger (30 s/worker): most workers asked {max(n for _, n in keda)}, "
          f"first asks for >1 at t={first(keda)}")
    print(f"  old committed-lag trigger (100 records/worker): most workers asked "
          f"{max(n for _, n in old)}, first asks for >1 at t={first(old)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
