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

import base64
import json
import os
import signal
import socket
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from callscribe.benchmark.runner import ServerProcess

GOOD_KEY = "sk-bench-good"
HOSTILE_KEY = "sk-bench-hostile"
HEALTHZ_TARGET_MS = 100.0
RSS_TARGET_MB = 100.0
QWEN = "qwen3-asr-flash-realtime"


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


# --- client helpers ----------------------------------------------------------------------------


def ws_run_task(port: int, key: str = HOSTILE_KEY, host: str | None = None, **kw):
    headers = {"Authorization": f"Bearer {key}"}
    return connect(f"ws://{host or '127.0.0.1'}:{port}/api-ws/v1/inference",
                   additional_headers=headers, open_timeout=30, max_size=None, **kw)


def ws_qwen(port: int, key: str = HOSTILE_KEY):
    return connect(f"ws://127.0.0.1:{port}/api-ws/v1/realtime?model={QWEN}",
                   additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30,
                   max_size=None)


def recv(ws, timeout: float = 60) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def run_task(tid: str, model: str, fmt: str, rate, **params) -> str:
    return json.dumps({"header": {"streaming": "duplex", "task_id": tid, "action": "run-task"},
                       "payload": {"model": model, "task_group": "audio", "task": "asr",
                                   "function": "recognition", "input": {},
                                   "parameters": {"format": fmt, "sample_rate": rate,
                                                  **params}}}, ensure_ascii=False)


def finish_task(tid: str) -> str:
    return json.dumps({"header": {"streaming": "duplex", "task_id": tid,
                                  "action": "finish-task"}, "payload": {"input": {}}})


def until_end(ws, timeout: float = 90) -> str:
    """Read to task-finished / task-failed / close; what the client got."""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            msg = recv(ws, max(0.1, end - time.monotonic()))
            h = msg.get("header", {})
            if h.get("event") == "task-failed":
                return f"task-failed {h.get('error_code')}"
            if h.get("event") == "task-finished":
                return "task-finished"
            if msg.get("type") == "error":
                return f"error {msg['error']['code']}"
    except ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else 'without close frame'}"
    except TimeoutError:
        return f"no answer in {timeout:g} s"
    return f"no answer in {timeout:g} s"


def http(port: int, raw: bytes, timeout: float = 30) -> str:
    """Send raw request bytes; the status line(s) and the JSON code of the first response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    statuses = [ln.split(b" ")[1].decode() for ln in data.split(b"\r\n")
                if ln.startswith(b"HTTP/1.1 ")]
    code = ""
    if b'"code"' in data:
        try:
            code = json.loads(data.partition(b"\r\n\r\n")[2])["code"]
        except ValueError:
            pass
    return "+".join(statuses) + (f" {code}" if code else "") if statuses else "no response"


def post(port: int, path: str, body: bytes, *headers: str, key: str = HOSTILE_KEY) -> str:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}",
             "Content-Type: application/json", *headers]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return http(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


VOCAB = "/api/v1/services/audio/asr/customization"


def vocab(action: str, **inp) -> bytes:
    return json.dumps({"model": "speech-biasing", "input": {"action": action, **inp}}).encode()


# --- audio-path cases (issue items 1, 2, 3, 7) -------------------------------------------------


def amr_frames(size: int) -> bytes:
    """``#!AMR\\n`` then one-byte NO_DATA frames (type 15, 20 ms each) up to ``size`` bytes."""
    return b"#!AMR\n" + b"\x7c" * (size - 6)


def case_amr(port: int, size: int) -> str:
    with ws_run_task(port) as ws:
        tid = uuid.uuid4().hex
        ws.send(run_task(tid, "paraformer-realtime-8k-v2", "amr", 8000))
        if recv(ws)["header"]["event"] != "task-started":
            return "no task-started"
        ws.send(amr_frames(size))
        ws.send(finish_task(tid))
        return until_end(ws)


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else \
                (crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], seq: int, granule: int, flags: int = 0) -> bytes:
    lacing = b""
    for p in packets:
        lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
    head = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, 1, seq, 0, len(lacing))
    page = head + lacing + b"".join(packets)
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def ogg_one_byte_packets(size: int) -> bytes:
    """An Ogg Opus stream whose audio packets are one TOC byte each (20 ms of silence)."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 4) + b"evil" + struct.pack("<I", 0)
    out = [_ogg_page([head], 0, 0, 2), _ogg_page([tags], 1, 0)]
    n, seq = 0, 2
    while sum(map(len, out)) < size:
        n += 255
        out.append(_ogg_page([b"\xf8"] * 255, seq, n * 960))
        seq += 1
    return b"".join(out)


def case_ogg(port: int, size: int) -> str:
    with ws_run_task(port) as ws:
        tid = uuid.uuid4().hex
        ws.send(run_task(tid, "fun-asr-realtime", "opus", 16000))
        if recv(ws)["header"]["event"] != "task-started":
            return "no task-started"
        data = ogg_one_byte_packets(size)
        for off in range(0, len(data), 1 << 20):
            ws.send(data[off:off + (1 << 20)])
        ws.send(finish_task(tid))
        return until_end(ws)


def case_qwen_big_append(port: int) -> str:
    with ws_qwen(port) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "session.update", "session": {
            "input_audio_format": "pcm", "sample_rate": 16000}}))
        recv(ws)
        audio = base64.b64encode(bytes(11 << 20)).decode()
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        ws.send(json.dumps({"type": "session.finish"}))
        got = []
        try:
            while True:
                m = recv(ws, 120)
                if m["type"] == "error":
                    got.append(m["error"]["code"])
                if m["type"] == "session.finished":
                    got.append("session.finished")
        except (ConnectionClosed, TimeoutError):
            pass
        return ", ".join(got) or "nothing"


def wav_header(channels: int, rate: int) -> bytes:
    align = channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * align, align, 16)
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
            + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF))


def case_wav_channels(port: int, rss: Callable[[], float]) -> str:
    conns, got = [], []
    try:
        for _ in range(3):
            ws = ws_run_task(port)
            conns.append(ws)
            tid = uuid.uuid4().hex
            ws.send(run_task(tid, "paraformer-realtime-8k-v1", "wav", 8000))
            if recv(ws)["header"]["event"] != "task-started":
                got.append("no task-started")
                continue
            ws.send(wav_header(65535, 8000) + bytes(65535 * 2 * 4))
        for ws in conns:
            try:
                got.append(until_end(ws, 5))
            except Exception as exc:
                got.append(type(exc).__name__)
        got.append(f"RSS with 3 open {rss():.0f} MiB")
    finally:
        for ws in conns:
            ws.close()
    return ", ".join(got)


def case_qwen_update_flood(port: int, total: int = 200 << 20) -> str:
    """session.update events with a 64 KiB corpus (echoed in session.updated), never read."""
    corpus = "x" * (64 << 10)
    ev = json.dumps({"type": "session.update", "session": {"input_audio_transcription": {
        "corpus": {"text": corpus}}}})
    sent = 0
    end = time.monotonic() + 60
    try:
        with ws_qwen(port) as ws:
            ws.socket.settimeout(10)  # a server that stops reading makes the send wait
            while sent < total and time.monotonic() < end:
                ws.send(ev)
                sent += len(ev)
    except (ConnectionClosed, OSError, TimeoutError) as exc:
        return f"sent {sent >> 20} MiB, then {type(exc).__name__}"
    return f"sent {sent >> 20} MiB"


def case_qwen_manual_70s(port: int, pcm: bytes) -> str:
    with ws_qwen(port) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "session.update", "session": {
            "input_audio_format": "pcm", "sample_rate": 16000, "turn_detection": None}}))
        recv(ws)
        audio = (pcm * 7)[:70 * 32000]
        for off in range(0, len(audio), 32000):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(audio[off:off + 32000]).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "session.finish"}))
        got = []
        try:
            while True:
                m = recv(ws, 120)
                if m["type"] == "error":
                    got.append(m["error"]["code"])
                elif m["type"].endswith("transcription.completed"):
                    got.append("item")
        except (ConnectionClosed, TimeoutError):
            pass
        return ", ".join(got) or "nothing"


# --- HTTP/API cases (items 4, 5, 6, 8, 9, 10) --------------------------------------------------


def case_superscript_rate(port: int) -> str:
    with ws_run_task(port) as ws:
        ws.send(run_task(uuid.uuid4().hex, "fun-asr-realtime", "pcm", "¹⁶⁰⁰⁰"))
        return until_end(ws, 30)


def case_qwen_nonfinite(port: int) -> str:
    got = []
    with ws_qwen(port) as ws:
        recv(ws)
        for v in ("NaN", "Infinity", "1e400"):
            ws.send('{"type": "session.update", "session": {"turn_detection": {"type": '
                    '"server_vad", "silence_duration_ms": %s}}}' % v)
            m = recv(ws, 30)
            got.append(m["error"]["code"] if m["type"] == "error" else m["type"])
    return ", ".join(got)


def case_surrogate_ids(port: int) -> str:
    with ws_run_task(port) as ws:
        ws.send(run_task("x", "fun-asr-realtime", "pcm", 16000).replace('"x"', '"\\ud800"'))
        a = until_end(ws, 30)
    with ws_qwen(port) as ws:
        recv(ws)
        ws.send('{"type": "session.update", "event_id": "\\ud800", "session": {}}')
        try:
            m = recv(ws, 30)
            b = m["error"]["code"] if m["type"] == "error" else m["type"]
        except ConnectionClosed as exc:
            b = f"closed {exc.rcvd.code if exc.rcvd else 'without close frame'}"
    return f"task_id: {a}; event_id: {b}"


def case_http_malformed(port: int) -> str:
    two_auth = (f"POST /api/v1/tokens HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0"
                f"\r\nAuthorization: Bearer {HOSTILE_KEY}\r\nAuthorization: Bearer x\r\n\r\n")
    return "; ".join([
        "2 Authorization: " + http(port, two_auth.encode()),
        "expire ²: " + post(port, "/api/v1/tokens?expire_in_seconds=%C2%B2", b""),
        "surrogate: " + post(port, VOCAB, vocab(
            "create_vocabulary", target_model="fun-asr-realtime", prefix="s",
            vocabulary=[{"text": "x", "weight": 4}]).replace(b'"x"', b'"\\ud800"')),
        "100k deep: " + post(port, VOCAB, b"[" * 100_000 + b"]" * 100_000),
        "page_index 1e17: " + post(port, VOCAB, vocab("list_vocabulary", page_index=10**17)),
    ])


def case_pipelined_and_head(port: int) -> str:
    one = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    a = http(port, (one + one).encode())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    body = len(data.partition(b"\r\n\r\n")[2])
    return f"pipelined: {a}; HEAD /metrics body {body} bytes"


def case_token_flood(port: int, n: int = 3000) -> str:
    counts: dict[str, int] = {}
    for _ in range(n):
        r = post(port, "/api/v1/tokens", b"")
        counts[r] = counts.get(r, 0) + 1
        if r.startswith("429"):
            break
    good = post(port, "/api/v1/tokens", b"", key=GOOD_KEY)
    return f"{counts}; other key then: {good}"


def case_vocabulary_flood(port: int, n: int = 300) -> str:
    words = [{"text": f"w{i} alpha bravo charlie delta", "weight": 3, "lang": "en"}
             for i in range(480)]
    counts: dict[str, int] = {}
    for _ in range(n):
        r = post(port, VOCAB, vocab("create_vocabulary", target_model="fun-asr-realtime",
                                    prefix="flood", vocabulary=words))
        counts[r] = counts.get(r, 0) + 1
        if r.startswith(("403", "429")):
            break
    return str(counts)


def case_metric_labels(port: int, tasks: int = 500) -> str:
    with ws_run_task(port) as ws:
        for i in range(tasks):
            tid = uuid.uuid4().hex
            ws.send(run_task(tid, f"fun-asr-realtime-{2030 + i // 365:04d}-"
                                  f"{1 + i % 12:02d}-{1 + i % 28:02d}", "pcm", 16000))
            if recv(ws)["header"]["event"] != "task-started":
                break
            ws.send(finish_task(tid))
            while recv(ws)["header"]["event"] != "task-finished":
                pass
    worst, size = 0.0, 0
    for _ in range(5):
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            size = len(r.read())
        worst = max(worst, (time.monotonic() - t0) * 1000)
    return f"{tasks} tasks; /metrics {size // 1024} KB, scrape <= {worst:.0f} ms"


def case_rebinding(port: int) -> str:
    """No-key server: DNS-rebinding-shaped handshake, cross-site text/plain vocabulary POST."""
    evil = f"evil.example:{port}"
    hs = (f"GET /api-ws/v1/inference HTTP/1.1\r\nHost: {evil}\r\nOrigin: http://{evil}\r\n"
          "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
          "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    body = vocab("create_vocabulary", target_model="fun-asr-realtime", prefix="x",
                 vocabulary=[{"text": "x", "weight": 4}])
    xsite = post(port, VOCAB, body, "Origin: http://evil.example", key="")
    return f"rebinding handshake: {http(port, hs.encode())}; cross-site POST: {xsite}"


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


def run_case(name: str, srv: ServerProcess, pcm: bytes, baseline: list[str] | None,
             action: Callable[[], str]) -> Row:
    pid = srv.proc.pid
    before = rss_mib(pid)
    with HealthPoller(srv.port) as hp:
        good = Good(srv.port, pcm).start()
        try:
            hostile = action()
        except (OSError, InvalidStatus, ConnectionClosed, ValueError, KeyError) as exc:
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
            print_row(run_case("no-key-rebinding", o, pcm, baseline,
                               lambda: case_rebinding(o.port)))
    return 0


def case_drain(srv: ServerProcess) -> str:
    """SIGTERM while the good session streams (--drain-seconds 30): what new clients get."""
    port = srv.port
    time.sleep(2)  # the good session is two seconds into its recording
    os.kill(srv.proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    ready = "?"
    while time.monotonic() - t0 < 5:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                ready = str(r.status)
        except urllib.error.HTTPError as e:
            ready = str(e.code)
            break
        except OSError as e:
            ready = type(e).__name__
            break
        time.sleep(0.02)
    try:
        ws_run_task(port).close()
        hs = "101"
    except InvalidStatus as e:
        hs = str(e.response.status_code)
    except OSError as e:
        hs = type(e).__name__
    return f"/readyz {ready}; new handshake {hs}"
