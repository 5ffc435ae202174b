"""The hostile clients of ``callscribe bench abuse`` (issue 13), one function per case.

Each returns a short string: what the hostile client got.  Sizes and deadlines are bounded so
the whole benchmark runs in a few minutes; the measuring is in :mod:`callscribe.benchmark.abuse`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

GOOD_KEY = "sk-bench-good"
HOSTILE_KEY = "sk-bench-hostile"
QWEN = "qwen3-asr-flash-realtime"


# --- client helpers ----------------------------------------------------------------------------


def ws_run_task(port: int, key: str = HOSTILE_KEY, host: str | None = None, **kw):
    headers = {"Authorization": f"Bearer {key}"}
    return connect(f"ws://{host or '127.0.0.1'}:{port}/api-ws/v1/inference",
                   additional_headers=headers, open_timeout=30, max_size=None,
                   ping_interval=None, **kw)


def ws_qwen(port: int, key: str = HOSTILE_KEY):
    return connect(f"ws://127.0.0.1:{port}/api-ws/v1/realtime?model={QWEN}",
                   additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30,
                   max_size=None, ping_interval=None)


def recv(ws, timeout: float = 60) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def qwen_outcome(ws, also: dict[str, str]) -> str:
    """What a Qwen session answered until it closed (or went quiet for 120 s): each error's
    code, and ``also[type]`` for the event types named there."""
    got = []
    try:
        while True:
            m = recv(ws, 120)
            if m["type"] == "error":
                got.append(m["error"]["code"])
            elif m["type"] in also:
                got.append(also[m["type"]])
    except (ConnectionClosed, TimeoutError):
        pass
    return ", ".join(got) or "nothing"


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
        return qwen_outcome(ws, {"session.finished": "session.finished"})


def wav_header(channels: int, rate: int) -> bytes:
    """8-bit PCM, so 65535 channels still fit block_align (a 16-bit field)."""
    align = channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * align, align, 8)
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
            ws.send(wav_header(65535, 8000) + bytes(65535 * 8))
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
        return qwen_outcome(ws, {"conversation.item.input_audio_transcription.completed": "item"})


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



def case_drain(srv) -> str:
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
