"""``callscribe bench abuse``: the hostile cases of issue 13 against a live ``callscribe serve``.

One server subprocess (the real model, API keys, a free port).  For each case a good session
on its own key streams the JFK recording at real-time pace while the hostile client acts on
another key; a thread polls ``/healthz`` every 20 ms.  Printed per case: the worst
``/healthz`` latency during the case, the good session's outcome and finish latency
(finish-task to task-finished), the server's RSS (``/proc/PID/status``) before and after,
and what the hostile client got.  Targets: ``/healthz`` <= 100 ms, RSS change <= 100 MB.

The hostile actions are bounded (sizes and deadlines) so a full run takes a few minutes.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


from callscribe.benchmark.abuse_cases import (
    GOOD_KEY, HOSTILE_KEY, case_amr, case_drain, case_http_malformed, case_metric_labels,
    case_ogg, case_pipelined_and_head, case_qwen_big_append, case_qwen_manual_70s,
    case_qwen_nonfinite, case_qwen_update_flood, case_rebinding, case_superscript_rate,
    case_surrogate_ids, case_token_flood, case_vocabulary_flood, case_wav_channels,
    finish_task, recv, run_task, ws_run_task)
from callscribe.benchmark.runner import ServerProcess

HEALTHZ_TARGET_MS = 100.0
RSS_TARGET_MB = 100.0


# --- the server and what is measured ---------------------------------------------------------


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB (NaN once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class HealthPoller:
    """GET /healthz every 20 ms (after the previous answer) on a thread; the worst latency."""

    def __init__(self, port: int) -> None:
        self.port, self.worst_ms, self.failures = port, 0.0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthPoller:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(120)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                            timeout=60) as r:
                    r.read()
            except OSError:
                self.failures += 1
            self.worst_ms = max(self.worst_ms, (time.monotonic() - t0) * 1000)
            self._stop.wait(0.02)


@dataclass
class Good:
    """The well-behaved session: JFK at real-time pace on GOOD_KEY (run-task, raw)."""

    port: int
    pcm: bytes
    outcome: str | None = None
    finals: list[str] = field(default_factory=list)
    finish_ms: float | None = None
    streaming: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Good:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.streaming.wait(60)
        return self

    def join(self) -> None:
        self._t.join(180)

    def _run(self) -> None:
        try:
            with ws_run_task(self.port, GOOD_KEY) as ws:
                tid = uuid.uuid4().hex
                ws.send(run_task(tid, "fun-asr-realtime", "pcm", 16000))
                if recv(ws)["header"]["event"] != "task-started":
                    self.outcome = "no task-started"
                    return
                self.streaming.set()
                step, t0 = 3200, time.monotonic()
                for i, off in enumerate(range(0, len(self.pcm), step)):
                    ws.send(self.pcm[off:off + step])
                    time.sleep(max(0.0, t0 + (i + 1) * 0.1 - time.monotonic()))
                sent = time.monotonic()
                ws.send(finish_task(tid))
                while True:
                    h = (msg := recv(ws, 120))["header"]
                    if h["event"] == "result-generated":
                        s = msg["payload"]["output"]["sentence"]
                        if s.get("sentence_end"):
                            self.finals.append(s["text"])
                    elif h["event"] in ("task-finished", "task-failed"):
                        self.finish_ms = (time.monotonic() - sent) * 1000
                        self.outcome = h["event"] if h["event"] == "task-finished" else \
                            f"task-failed {h.get('error_code')}"
                        return
        except Exception as exc:  # reported in the table
            self.outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
        finally:
            self.streaming.set()


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    healthz_ms: float
    good: str
    finish_ms: float | None
    rss_before: float
    rss_after: float
    hostile: str


def settle(port: int, deadline_s: float = 180.0) -> None:
    """Until /healthz answers within 1 s (what an earlier case left running is done)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as r:
                r.read()
        except OSError:
            return  # the server is gone: the case reports it
        if time.monotonic() - t0 < 1.0:
            return
        time.sleep(0.5)


def run_case(name: str, srv: ServerProcess, pcm: bytes, baseline: list[str] | None,
             action: Callable[[], str]) -> Row:
    pid = srv.proc.pid
    settle(srv.port)
    before = rss_mib(pid)
    with HealthPoller(srv.port) as hp:
        good = Good(srv.port, pcm).start()
        try:
            hostile = action()
        except Exception as exc:  # a hostile client's failure is a figure, not the end
            hostile = f"{type(exc).__name__}: {str(exc)[:80]}"
        good.join()
    after = rss_mib(pid)
    outcome = good.outcome or "?"
    if baseline is not None and outcome == "task-finished" and good.finals != baseline:
        outcome += " (finals differ)"
    return Row(name, hp.worst_ms, outcome, good.finish_ms, before, after, hostile)


def print_row(r: Row) -> None:
    ok_h = "ok" if r.healthz_ms <= HEALTHZ_TARGET_MS else "OVER"
    d = r.rss_after - r.rss_before
    ok_r = "ok" if d * 1.048576 <= RSS_TARGET_MB else "OVER"
    fin = f"{r.finish_ms:8.0f}" if r.finish_ms is not None else "       -"
    print(f"{r.case:24s} {r.healthz_ms:8.0f} {ok_h:4s} {fin} {r.good[:28]:28s} "
          f"{r.rss_before:7.0f} {r.rss_after:7.0f} {d:+7.0f} {ok_r:4s} {r.hostile}", flush=True)


def run_abuse(audio_dir: Path, only: list[str] | None = None) -> int:
    # SIGTERM (e.g. timeout(1)) unwinds the with-blocks, so the server subprocess is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pcm = (audio_dir / "en_jfk_16k.wav").read_bytes()[44:]
    db = Path(tempfile.mkdtemp(prefix="callscribe-abuse-")) / "v.sqlite3"
    env = {"CALLSCRIBE_API_KEYS": f"{GOOD_KEY},{HOSTILE_KEY}",
           "CALLSCRIBE_VOCABULARY_DB": str(db)}
    print(f"targets: /healthz <= {HEALTHZ_TARGET_MS:.0f} ms, RSS change <= {RSS_TARGET_MB:.0f} MB"
          f"; good session = JFK (11 s) at real-time pace on another key\n")
    print(f"{'case':24s} {'healthz':>8s} {'':4s} {'finishms':>8s} {'good session':28s} "
          f"{'RSS0':>7s} {'RSS1':>7s} {'dRSS':>7s} {'':4s} hostile client got")
    with ServerProcess(env, ["--drain-seconds", "30"]) as srv:
        port = srv.port
        base = Good(port, pcm).start()
        base.join()
        baseline = base.finals
        print(f"{'(idle baseline)':24s} {'':8s} {'':4s} {base.finish_ms or 0:8.0f} "
              f"{base.outcome or '?':28s}", flush=True)
        cases: list[tuple[str, Callable[[], str]]] = [
            ("control (no hostile)", lambda: "-"),  # the noise floor of this machine
            ("amr-1MiB-nodata", lambda: case_amr(port, 1 << 20)),
            ("amr-64KiB-nodata", lambda: case_amr(port, 64 << 10)),
            ("ogg-opus-64KiB-1byte", lambda: case_ogg(port, 64 << 10)),
            ("qwen-11MiB-append", lambda: case_qwen_big_append(port)),
            ("wav-65535ch-x3", lambda: case_wav_channels(port, lambda: rss_mib(srv.proc.pid))),
            ("qwen-update-200MiB", lambda: case_qwen_update_flood(port)),
            ("qwen-manual-70s", lambda: case_qwen_manual_70s(port, pcm)),
            ("superscript-rate", lambda: case_superscript_rate(port)),
            ("qwen-nonfinite-silence", lambda: case_qwen_nonfinite(port)),
            ("surrogate-ids", lambda: case_surrogate_ids(port)),
            ("http-malformed", lambda: case_http_malformed(port)),
            ("pipelined+HEAD", lambda: case_pipelined_and_head(port)),
            ("token-flood", lambda: case_token_flood(port)),
            ("vocabulary-flood", lambda: case_vocabulary_flood(port)),
            ("metric-label-flood", lambda: case_metric_labels(port)),
        ]
        for name, action in cases:
            if only and name not in only:
                continue
            print_row(run_case(name, srv, pcm, baseline, action))
        if not only or "drain" in only:
            print_row(run_case("drain (SIGTERM)", srv, pcm, baseline,
                               lambda: case_drain(srv)))
    if not only or "no-key-rebinding" in only:
        with ServerProcess({"CALLSCRIBE_API_KEYS": "",
                            "CALLSCRIBE_VOCABULARY_DB": str(db.with_name("open.sqlite3"))}) as o:
            Good(o.port, pcm).start().join()  # warm up (first-session allocations), as above
            print_row(run_case("no-key-rebinding", o, pcm, baseline,
                               lambda: case_rebinding(o.port)))
    return 0
