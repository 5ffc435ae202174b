"""The asyncio WebSocket/HTTP server: handshakes (auth, admission), routing, metrics, drain.

Endpoints (one port): ``/api-ws/v1/inference`` (run-task WebSocket,
:mod:`callscribe.protocols.run_task`), ``/api-ws/v1/realtime?model=...`` (Qwen-ASR realtime,
:mod:`callscribe.protocols.qwen_realtime`), ``POST /api/v1/services/audio/asr/customization``
(vocabularies), ``/healthz``, ``/readyz`` (model loaded, not draining), ``/metrics``
(Prometheus text).  Both WebSocket protocols share everything here and the one adapter in
:mod:`callscribe.gateway.connection`; only the state machine differs.

Bounded memory per session: frames larger than the endpoint's limit close the connection
(1009) before their payload is read; at most the endpoint's ``max_queue`` frames wait in
websockets' receive buffer; audio goes to the recognizer with backpressure (see connection).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

import structlog
from opentelemetry import metrics
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from callscribe.errors import ConfigurationError, HttpError
from callscribe.gateway.auth import ApiKeys
from callscribe.gateway.connection import Connection
from callscribe.gateway.http import (VOCABULARY_PATH, check_no_key_request, error_response,
                                     handle_vocabulary, header, install_body_parser,
                                     is_loopback, refusal, response, text_response,
                                     without_body)
from callscribe.gateway.limits import Admission
from callscribe.gateway.static import StaticFiles
from callscribe.gateway.tokens import (AUTH_INFO_PATH, MAX_TOKENS, TOKENS_PATH, TokenStore,
                                       handle_auth_info, handle_tokens)
from callscribe.protocols import qwen_realtime
from callscribe.protocols.common import Machine, model_family
from callscribe.protocols.run_task import RunTaskProtocol
from callscribe.recognition.vocabulary import Quota, VocabularyStore
from callscribe.settings import Settings
from callscribe.telemetry import render_metrics

log = structlog.get_logger("callscribe.gateway")
INFERENCE_PATH = "/api-ws/v1/inference"
REALTIME_PATH = "/api-ws/v1/realtime"
#: websockets' receive buffer high-water mark (frames) before it stops reading the socket
MAX_QUEUED_FRAMES = 8
#: after the drain grace, how long ended tasks get to flush before connections are cut
FLUSH_SECONDS = 15.0


@dataclass(frozen=True)
class Endpoint:
    """A WebSocket protocol on this server: its frame limit, receive queue and machine."""

    max_frame_bytes: int
    max_queue: int
    #: (loop clock, query parameters) -> a fresh state machine for one connection
    make: Callable[[Callable[[], float], dict[str, str]], Machine]


def endpoints(s: Settings) -> dict[str, Endpoint]:
    def run_task(clock: Callable[[], float], query: dict[str, str]) -> Machine:
        return RunTaskProtocol(clock=clock, max_frame_bytes=s.max_frame_bytes,
                               max_task_seconds=s.max_task_seconds, default_itn=s.itn_enabled)

    def realtime(clock: Callable[[], float], query: dict[str, str]) -> Machine:
        return qwen_realtime.QwenRealtimeProtocol(
            clock=clock, model=query.get("model"), default_vad_threshold=s.vad_threshold,
            max_task_seconds=s.max_task_seconds, max_append_ms=s.max_buffered_audio_ms)

    return {INFERENCE_PATH: Endpoint(s.max_frame_bytes, MAX_QUEUED_FRAMES, run_task),
            # a Qwen append carries up to 15 MiB of base64: a bigger frame, fewer queued
            REALTIME_PATH: Endpoint(qwen_realtime.MAX_FRAME_BYTES, 2, realtime)}


class _Metrics:
    def __init__(self) -> None:
        m = metrics.get_meter("callscribe")
        self.sessions = m.create_up_down_counter("callscribe.sessions.active",
                                                 description="open WebSocket sessions")
        self.rejected = m.create_counter("callscribe.handshakes.rejected",
                                         description="handshakes refused (401, 503)")
        self.tasks = m.create_counter("callscribe.tasks", description="tasks by outcome")
        self.audio = m.create_counter("callscribe.audio.seconds", unit="s",
                                      description="audio received by tasks")
        self.first = m.create_histogram("callscribe.task.first_package_delay", unit="ms",
                                        description="first audio byte to first result")
        self.last = m.create_histogram("callscribe.task.last_package_delay", unit="ms",
                                       description="finish-task to task-finished")

    @staticmethod
    def task_attrs(model: str, protocol: str) -> dict[str, str]:
        """Metric attributes of a task: the model *family* (a closed set), never the name the
        client sent (any ``fun-asr-realtime-YYYY-MM-DD`` would be a new series)."""
        return {"model": model_family(model), "protocol": protocol}


class Gateway:
    """One process serving both WebSocket protocols; ``runtime`` may arrive later (loading)."""

    def __init__(self, settings: Settings, *, vocabulary: VocabularyStore, runtime: Any = None,
                 host: str | None = None, port: int | None = None, open_timeout: float = 10.0,
                 ping_interval: float | None = None) -> None:
        self.settings = settings
        self.host = settings.host if host is None else host
        self.port = settings.port if port is None else port
        self.keys = ApiKeys(settings.api_key_list())
        #: single-use WebSocket tokens (``?token=``) for browsers; and the captions page
        per_key = settings.token_max_per_key
        self.tokens = TokenStore(settings.token_ttl_s, max_per_key=per_key,
                                 max_tokens=max(MAX_TOKENS,
                                                per_key * max(1, len(settings.api_key_list()))))
        self.vocabulary_quota = Quota(settings.vocabulary_max_per_key,
                                      settings.vocabulary_max_bytes_per_key)
        self.static = StaticFiles()
        if not self.keys.enabled and not is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to listen on {self.host} without API keys: set CALLSCRIBE_API_KEYS "
                "(comma-separated) or listen on 127.0.0.1")
        self.vocabulary = vocabulary
        self.runtime = runtime
        self.admission = Admission(settings.max_sessions, settings.max_sessions_per_key)
        self.open_timeout = open_timeout
        # No server pings by default: clients ping (the SDK every 30 s) and websockets answers;
        # websocket-client (the v2 SDK) only answers pings while the caller reads, so a client
        # that streams a long file before reading would be cut.  Dead peers are found by the
        # protocol's 23 s / 60 s timers instead.
        self.ping_interval = ping_interval
        self.endpoints = endpoints(settings)
        self.connections: set[Connection] = set()
        self.draining = False
        self._drain_grace = 0.0
        #: set whenever no connection is open (the drain waits on it)
        self._idle = asyncio.Event()
        self._idle.set()
        self.metrics = _Metrics()
        #: one /metrics rendering at a time, off the event loop
        self._render_lock = asyncio.Lock()
        self._server: Server | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; return the bound port."""
        self._server = await serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            process_response=self._process_response, create_connection=self._new_connection,
            open_timeout=self.open_timeout, ping_interval=self.ping_interval,
            max_size=max(e.max_frame_bytes for e in self.endpoints.values()),
            max_queue=MAX_QUEUED_FRAMES,
            compression=None, server_header="callscribe")
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening", host=self.host, port=self.port, auth=self.keys.enabled,
                 note=None if self.keys.enabled else
                 "no API keys configured: authentication is off, loopback only")
        return self.port

    def set_runtime(self, runtime: Any) -> None:
        self.runtime = runtime

    @property
    def ready(self) -> bool:
        rt = self.runtime
        return rt is not None and bool(getattr(rt, "ready", True)) and not self.draining

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Drain: new handshakes get HTTP 503 and ``/readyz`` 503 (the port stays open, so
        clients and load balancers get an answer, not "connection refused"); running tasks and
        realtime sessions get ``grace_s`` to finish, then are ended cleanly (results for the
        audio received, then ``ServerShuttingDown`` as task-failed or a server_error event,
        close 1001).  When the last session is gone (or ``grace_s`` + the flush time has
        passed) the port closes; return when every connection is closed."""
        if self._server is None:
            return
        self.draining = True
        self._drain_grace = grace_s
        log.info("shutting down", connections=len(self.connections), grace_s=grace_s)
        for conn in list(self.connections):
            conn.shutdown(grace_s)
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s + FLUSH_SECONDS)
        except TimeoutError:
            log.warning("connections still open after the drain; cutting them",
                        remaining=len(self.connections))
            for conn in list(self.connections):
                conn.ws.transport.abort()
        self._server.close(close_connections=False)
        await self._server.wait_closed()
        log.info("stopped")

    # --- handshake ---------------------------------------------------------------------------

    def _new_connection(self, protocol: Any, server: Server, **kwargs: Any) -> ServerConnection:
        install_body_parser(protocol)
        return ServerConnection(protocol, server, **kwargs)

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Every request, in one place: no-key guard, routing, refusals (:class:`HttpError` ->
        the JSON error shape), and ``HEAD`` (the GET response without its body)."""
        try:
            if not self.keys.enabled:
                # open (loopback, no keys) mode: any web page the user visits could otherwise
                # reach the local service (cross-site requests, DNS rebinding)
                check_no_key_request(request)
            resp = await self._route(conn, request)
        except HttpError as exc:
            if exc.status == 403:
                self.metrics.rejected.add(1, {"status": 403})
            resp = refusal(exc)
        except Exception:
            log.exception("request failed", method=request.method,
                          path=request.path.partition("?")[0][:200])
            resp = error_response(500, "InternalError", "internal server error; see the "
                                  "server log")
        if resp is not None and request.method == "HEAD":
            return without_body(resp)
        return resp

    async def _route(self, conn: ServerConnection, request: Request) -> Response | None:
        raw_path, _, query = request.path.partition("?")
        path = raw_path.rstrip("/") or "/"
        endpoint = self.endpoints.get(path)
        if endpoint is not None:
            key_id = self._ws_key(request, query)
            if key_id is None:
                self.metrics.rejected.add(1, {"status": 401})
                return text_response(401, "Unauthorized: missing or invalid API key "
                                     "(send Authorization: Bearer <key>), or an invalid, "
                                     "expired or already used ?token=\n",
                                     {"WWW-Authenticate": "Bearer"})
            if self.draining or self.runtime is None or not self.ready:
                self.metrics.rejected.add(1, {"status": 503})
                why = "server is shutting down" if self.draining else "model is loading"
                return text_response(503, f"Service Unavailable: {why}; retry later\n",
                                     {"Retry-After": "5"})
            conn.callscribe_key = key_id  # type: ignore[attr-defined]
            conn.callscribe_endpoint = endpoint  # type: ignore[attr-defined]
            conn.callscribe_query = {k: v[0] for k, v in parse_qs(query).items()}  # type: ignore
            # this endpoint's limits, in force from the first frame (no frame can arrive before
            # the handshake response)
            conn.protocol.max_message_size = endpoint.max_frame_bytes
            conn.recv_messages.high, conn.recv_messages.low = \
                endpoint.max_queue, endpoint.max_queue // 4
            return None
        if path == "/healthz":
            return text_response(200, "ok\n")
        if path == "/readyz":
            if self.ready:
                return text_response(200, "ready\n")
            why = "draining" if self.draining else "model loading"
            return text_response(503, f"not ready: {why}\n", {"Retry-After": "5"})
        if path == "/metrics":
            async with self._render_lock:  # rendering is work proportional to the series
                body, ctype = await asyncio.to_thread(render_metrics)
            return response(200, body, ctype)
        if path == VOCABULARY_PATH:
            key_id = self.keys.identify(header(request, "Authorization"))
            if key_id is None:
                return error_response(401, "InvalidApiKey", "missing or invalid API key "
                                      "(send Authorization: Bearer <key>)")
            return await handle_vocabulary(request, key_id, self.vocabulary,  # type: ignore
                                           self.vocabulary_quota)
        if path == TOKENS_PATH:
            return handle_tokens(request, self.keys, self.tokens)
        if path == AUTH_INFO_PATH:
            return handle_auth_info(request, self.keys, self.tokens)
        page = self.static.serve(request, path)
        if page is not None:
            return page
        return text_response(404, f"Not Found: {path[:200]}\n")

    def _ws_key(self, request: Request, query: str) -> str | None:
        """The key id of a WebSocket handshake: a ``?token=`` from ``POST /api/v1/tokens``
        (consumed here, whatever happens next) when present, else the Bearer header."""
        token = parse_qs(query).get("token")
        if token is not None:
            return self.tokens.redeem(token[0])
        return self.keys.identify(header(request, "Authorization"))

    def _process_response(self, conn: ServerConnection, request: Request,
                          resp: Response) -> Response | None:
        if resp.status_code != 101:
            return None
        key_id = getattr(conn, "callscribe_key", "anonymous")
        slot, reason = self.admission.try_acquire(key_id)
        if slot is None:
            self.metrics.rejected.add(1, {"status": 503})
            return text_response(503, f"Service Unavailable: {reason}\n", {"Retry-After": "1"})
        conn.callscribe_slot = slot  # type: ignore[attr-defined]
        # released when the TCP connection is gone, whatever happens after this point
        conn.connection_lost_waiter.add_done_callback(lambda _f: slot.release())
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        endpoint: Endpoint = ws.callscribe_endpoint  # type: ignore[attr-defined]
        proto = endpoint.make(asyncio.get_running_loop().time,
                              ws.callscribe_query)  # type: ignore[attr-defined]
        c = Connection(self, ws, getattr(ws, "callscribe_key", "anonymous"), proto)
        attrs = {"protocol": proto.name}
        self.connections.add(c)
        self._idle.clear()
        self.metrics.sessions.add(1, attrs)
        if self.draining:  # admitted just before the drain began
            c.shutdown(self._drain_grace)
        try:
            await c.run()
        finally:
            self.connections.discard(c)
            if not self.connections:
                self._idle.set()
            self.metrics.sessions.add(-1, attrs)
            slot = getattr(ws, "callscribe_slot", None)
            if slot is not None:
                slot.release()
