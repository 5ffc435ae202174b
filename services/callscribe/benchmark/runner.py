"""Run a load: start the service (or the in-process recognizer), N paced clients, measure.

Modes: ``standalone`` (``callscribe serve`` in a subprocess, run-task over WebSocket),
``engine`` (the recognizer in this process, no service: the limit the service approaches).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callscribe.benchmark.clients import ClientResult, engine_client, run_task_client
from callscribe.benchmark.workload import Workload

TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class ServerProcess:
    """``callscribe serve`` on a free port; waits for /readyz with a deadline."""

    def __init__(self, env: dict[str, str] | None = None, extra_args: list[str] | None = None):
        self.port = _free_port()
        self.env = {**os.environ, "CALLSCRIBE_LOG_LEVEL": "warning", **(env or {})}
        self.args = extra_args or []
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callscribe.cli", "serve", "--port", str(self.port), *self.args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)  # polling a child process's readiness: no event to wait on
        raise RuntimeError("server not ready within 120 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api-ws/v1/inference"


@dataclass
class RunConfig:
    mode: str = "standalone"
    clients: int = 4
    max_sentence_silence: int = 500
    stagger_s: float = 3.0
    repeat: int = 1


async def _clients(cfg: RunConfig, load: Workload, url: str | None, runtime) -> list[ClientResult]:
    deadline = 120.0

    async def one(i: int) -> ClientResult:
        await asyncio.sleep(cfg.stagger_s * i / max(1, cfg.clients))
        out = None
        for _ in range(cfg.repeat):
            if cfg.mode == "engine":
                out = await engine_client(i, runtime, load.for_client(i),
                                          cfg.max_sentence_silence, deadline)
            else:
                out = await run_task_client(i, url, "bench", load.for_client(i),
                                            cfg.max_sentence_silence,
                                            deadline)
        return out

    return list(await asyncio.gather(*(one(i) for i in range(cfg.clients))))


def _histogram(url: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of one Prometheus histogram (+inf included)."""
    import re

    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[float, float] = {}
    for m in re.finditer(rf'^{name}_bucket{{[^}}]*le="([^"]+)"[^}}]*}} ([0-9.e+]+)$', text, re.M):
        out[float(m.group(1))] = out.get(float(m.group(1)), 0.0) + float(m.group(2))
    return out


def _hop_p50(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Median from the difference of two cumulative bucket snapshots (linear in a bucket)."""
    bounds = sorted(after)
    diff = [after[b] - before.get(b, 0.0) for b in bounds]
    if not diff or diff[-1] <= 0:
        return None
    half, lo, prev = diff[-1] / 2, 0.0, 0.0
    for b, c in zip(bounds, diff):
        if c >= half:
            if b == float("inf"):
                return lo
            return round(lo + (b - lo) * (half - prev) / max(c - prev, 1e-9), 1)
        lo, prev = b, c
    return None


def run_load(cfg: RunConfig, load: Workload, *, server: ServerProcess | None = None,
             runtime=None, hop_metrics: dict[str, str] | None = None,
             extra_pids: list[int] | None = None) -> dict:
    """One run at a fixed concurrency; returns the figures (see ``summarise``).  CPU and
    memory are those of the serving processes (gateway, and the worker in Kafka mode)."""
    pid = server.proc.pid if server else os.getpid()
    pids = [pid, *(extra_pids or [])]
    names = {"produce_to_worker": "callscribe_kafka_hop_produce_to_worker_milliseconds",
             "worker_to_gateway": "callscribe_kafka_hop_worker_to_gateway_milliseconds"}
    hops0 = {k: _histogram(u, names[k]) for k, u in (hop_metrics or {}).items()}
    cpu0, wall0 = sum(map(proc_cpu_s, pids)), time.monotonic()
    results = asyncio.run(_clients(cfg, load, server.url if server else None, runtime))
    cpu, wall = sum(map(proc_cpu_s, pids)) - cpu0, time.monotonic() - wall0
    figures = summarise(results, load, cfg)
    if hop_metrics:
        figures["kafka_hop_p50_ms"] = {
            k: _hop_p50(hops0[k], _histogram(u, names[k])) for k, u in hop_metrics.items()}
    audio_s = load.duration_s * cfg.clients * cfg.repeat
    figures.update(mode=cfg.mode, clients=cfg.clients, wall_s=round(wall, 2),
                   cpu_s_per_audio_s=round(cpu / audio_s, 4),
                   peak_rss_mib=round(sum(proc_rss_kib(p, "VmHWM") for p in pids) / 1024, 1),
                   rss_mib=round(sum(proc_rss_kib(p) for p in pids) / 1024, 1))
    return figures


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def summarise(results: list[ClientResult], load: Workload, cfg: RunConfig) -> dict:
    from callscribe.benchmark.metrics import error_rate

    first_partial, final, gaps, max_gaps = [], [], [], []
    for r in results:
        for s in r.sentences.values():
            start = r.sent_at(s.begin_ms)
            if s.partials:
                first_partial.append((s.partials[0] - start) * 1000)
                # cadence: time between consecutive partials of one sentence
                g = [(b - a) * 1000 for a, b in zip(s.partials, s.partials[1:])]
                gaps.extend(g)
                if g:
                    max_gaps.append(max(g))
            if s.final_at is not None and s.speech_end_ms is not None:
                final.append((s.final_at - r.sent_at(s.speech_end_ms)) * 1000)
    ok = [r for r in results if not r.error]
    wer = error_rate([(load.reference, r.text()) for r in ok], "en") if ok else None
    return {
        "sessions": len(ok), "errors": [r.error for r in results if r.error],
        "first_partial_ms": {q: _pct(first_partial, q) for q in (50, 95, 99)},
        "final_ms": {q: _pct(final, q) for q in (50, 95, 99)},
        "final_net_of_silence_ms": {q: (None if (v := _pct(final, q)) is None
                                        else round(v - cfg.max_sentence_silence, 1))
                                    for q in (50, 95, 99)},
        "partial_gap_ms": {q: _pct(gaps, q) for q in (50, 95, 99)},
        "max_partial_gap_p95_ms": _pct(max_gaps, 95),
        "first_package_ms_p50": _pct([r.first_package_ms for r in ok if r.first_package_ms], 50),
        "last_package_ms_p50": _pct([r.last_package_ms for r in ok if r.last_package_ms], 50),
        "sentences": len(final), "wer": None if wer is None else round(wer, 4),
    }


def within_bounds(fig: dict, final_p95_ms: float = 1500, partial_gap_ms: float = 1000) -> bool:
    return (not fig["errors"] and fig["final_ms"][95] is not None
            and fig["final_ms"][95] <= final_p95_ms
            and (fig["partial_gap_ms"][95] or 0) <= partial_gap_ms)


def results_dir(root: Path) -> Path:
    d = root / time.strftime("%Y%m%d-%H%M%S")
    d.mkdir(parents=True, exist_ok=True)
    return d
