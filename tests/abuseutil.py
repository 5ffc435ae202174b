"""Raw HTTP and WebSocket helpers for the abuse tests (tests/test_abuse_*.py).

Hostile requests are written byte for byte (repeated headers, pipelined requests, odd query
strings), so they go over a plain socket; the server answers ``Connection: close``, so a
response is read to EOF.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field

from websockets.sync.client import connect

from neighbour import HOSTILE_KEY

QWEN_MODEL = "qwen3-asr-flash-realtime"


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> dict:
        return json.loads(self.body)


def exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)


def parse_responses(raw: bytes, head: bool = False) -> list[HttpResponse]:
    """Split a byte stream into HTTP responses (bodies by Content-Length; none for HEAD)."""
    out = []
    while raw:
        top, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {raw[:200]!r}"
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:]]
        r = HttpResponse(status, headers)  # type: ignore[arg-type]
        n = 0 if head else int(r.header("Content-Length") or 0)
        r.body, raw = rest[:n], rest[n:]
        out.append(r)
        if head:  # whatever follows a HEAD response is not a response
            r.body, raw = rest, b""
    return out


def request(port: int, method: str, path: str, headers: list[tuple[str, str]] | None = None,
            body: bytes = b"", host: str | None = None) -> HttpResponse:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    raw = exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    responses = parse_responses(raw, head=method == "HEAD")
    assert len(responses) == 1, responses
    return responses[0]


def bearer(key: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {key}")


def assert_error(r: HttpResponse, status: int, code: str, *words: str) -> dict:
    """The documented JSON error shape ``{"request_id", "code", "message"}``."""
    assert r.status == status, (r.status, r.body[:300])
    assert (r.header("Content-Type") or "").startswith("application/json"), r.headers
    doc = r.json()
    assert set(doc) == {"request_id", "code", "message"}, doc
    assert doc["code"] == code, doc
    for w in words:
        assert w in doc["message"], doc
    return doc


def run_task_ws(port: int, key: str = HOSTILE_KEY):
    return connect(f"ws://127.0.0.1:{port}/api-ws/v1/inference",
                   additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30)


def qwen_ws(port: int, key: str = HOSTILE_KEY):
    return connect(f"ws://127.0.0.1:{port}/api-ws/v1/realtime?model={QWEN_MODEL}",
                   additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30,
                   max_size=None)


def recv_json(ws, timeout: float = 30.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def run_task(task_id: str, model: str = "fun-asr-realtime", **params) -> str:
    return json.dumps({
        "header": {"streaming": "duplex", "task_id": task_id, "action": "run-task"},
        "payload": {"model": model, "task_group": "audio", "task": "asr",
                    "function": "recognition", "input": {},
                    "parameters": {"format": "pcm", "sample_rate": 16000, **params}}},
        ensure_ascii=False)


def finish_task(task_id: str) -> str:
    return json.dumps({"header": {"streaming": "duplex", "task_id": task_id,
                                  "action": "finish-task"}, "payload": {"input": {}}})
