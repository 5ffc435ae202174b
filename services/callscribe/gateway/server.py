"""The asyncio WebSocket/HTTP server: moves bytes between sockets, the run-task state machine
and the recognition runtime.  All protocol decisions live in
:mod:`callscribe.protocols.run_task`; this module only executes its outputs.

Endpoints (one port): ``/api-ws/v1/inference`` (run-task WebSocket), ``POST
/api/v1/services/audio/asr/customization`` (vocabularies), ``/healthz``, ``/readyz`` (model
loaded, not draining), ``/metrics`` (Prometheus text).

Bounded memory per session: frames larger than ``max_frame_bytes`` close the connection
(1009) before their payload is read; at most ``MAX_QUEUED_FRAMES`` frames wait in websockets'
receive buffer; audio goes to the recognizer through ``await stream.put()``, which waits when
recognition falls behind, and while it waits this connection's socket is not read (TCP flow
control pushes back on the client).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
from typing import Any

import structlog
from opentelemetry import metrics, trace
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from callscribe.errors import CallscribeError, ConfigurationError
from callscribe.gateway.auth import ApiKeys
from callscribe.gateway.http import (VOCABULARY_PATH, error_response, handle_vocabulary,
                                     install_body_parser, response, text_response)
from callscribe.gateway.limits import Admission
from callscribe.protocols.common import (AbortRecognition, AudioData, Close, FinishInput,
                                         SendFrame, StartRecognition, TaskReport)
from callscribe.protocols.run_task import RunTaskProtocol
from callscribe.recognition.vocabulary import VocabularyNotFound, VocabularyStore
from callscribe.settings import Settings
from callscribe.telemetry import render_metrics

log = structlog.get_logger("callscribe.gateway")
INFERENCE_PATH = "/api-ws/v1/inference"
#: websockets' receive buffer high-water mark (frames) before it stops reading the socket
MAX_QUEUED_FRAMES = 8
#: after the drain grace, how long ended tasks get to flush before connections are cut
FLUSH_SECONDS = 15.0
_conn_ids = itertools.count(1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Metrics:
    def __init__(self) -> None:
        m = metrics.get_meter("callscribe")
        self.sessions = m.create_up_down_counter("callscribe.sessions.active",
                                                 description="open run-task WebSocket sessions")
        self.rejected = m.create_counter("callscribe.handshakes.rejected",
                                         description="handshakes refused (401, 503)")
        self.tasks = m.create_counter("callscribe.tasks", description="tasks by outcome")
        self.audio = m.create_counter("callscribe.audio.seconds", unit="s",
                                      description="audio received by tasks")
        self.first = m.create_histogram("callscribe.task.first_package_delay", unit="ms",
                                        description="first audio byte to first result")
        self.last = m.create_histogram("callscribe.task.last_package_delay", unit="ms",
                                       description="finish-task to task-finished")


class Gateway:
    """One process serving the run-task protocol; ``runtime`` may arrive later (loading)."""

    def __init__(self, settings: Settings, *, vocabulary: VocabularyStore, runtime: Any = None,
                 host: str | None = None, port: int | None = None, open_timeout: float = 10.0,
                 ping_interval: float | None = None) -> None:
        self.settings = settings
        self.host = settings.host if host is None else host
        self.port = settings.port if port is None else port
        self.keys = ApiKeys(settings.api_key_list())
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
        self.connections: set[_Connection] = set()
        self.draining = False
        self.metrics = _Metrics()
        self._server: Server | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; return the bound port."""
        self._server = await serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            process_response=self._process_response, create_connection=self._new_connection,
            open_timeout=self.open_timeout, ping_interval=self.ping_interval,
            max_size=self.settings.max_frame_bytes, max_queue=MAX_QUEUED_FRAMES,
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
        """Stop accepting; let running tasks finish for ``grace_s``, then end them cleanly
        (results for the audio received, then task-failed ``ServerShuttingDown``, close 1001);
        return when every connection is closed."""
        if self._server is None:
            return
        self.draining = True
        log.info("shutting down", connections=len(self.connections), grace_s=grace_s)
        self._server.close(close_connections=False)
        for conn in list(self.connections):
            conn.shutdown(grace_s)
        try:
            await asyncio.wait_for(self._server.wait_closed(), grace_s + FLUSH_SECONDS)
        except TimeoutError:
            log.warning("connections still open after the drain; cutting them",
                        remaining=len(self.connections))
            for conn in list(self.connections):
                conn.ws.transport.abort()
            await self._server.wait_closed()
        log.info("stopped")

    # --- handshake ---------------------------------------------------------------------------

    def _new_connection(self, protocol: Any, server: Server, **kwargs: Any) -> ServerConnection:
        install_body_parser(protocol)
        return ServerConnection(protocol, server, **kwargs)

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0].rstrip("/") or "/"
        if path == INFERENCE_PATH:
            key_id = self.keys.identify(request.headers.get("Authorization"))
            if key_id is None:
                self.metrics.rejected.add(1, {"status": 401})
                return text_response(401, "Unauthorized: missing or invalid API key "
                                     "(send Authorization: Bearer <key>)\n",
                                     {"WWW-Authenticate": "Bearer"})
            if self.draining or self.runtime is None or not self.ready:
                self.metrics.rejected.add(1, {"status": 503})
                why = "server is shutting down" if self.draining else "model is loading"
                return text_response(503, f"Service Unavailable: {why}; retry later\n",
                                     {"Retry-After": "5"})
            conn.callscribe_key = key_id  # type: ignore[attr-defined]
            return None
        if path == "/healthz":
            return text_response(200, "ok\n")
        if path == "/readyz":
            if self.ready:
                return text_response(200, "ready\n")
            why = "draining" if self.draining else "model loading"
            return text_response(503, f"not ready: {why}\n")
        if path == "/metrics":
            body, ctype = render_metrics()
            return response(200, body, ctype)
        if path == VOCABULARY_PATH:
            key_id = self.keys.identify(request.headers.get("Authorization"))
            if key_id is None:
                return error_response(401, "InvalidApiKey", "missing or invalid API key "
                                      "(send Authorization: Bearer <key>)")
            return await handle_vocabulary(request, key_id, self.vocabulary)  # type: ignore
        return text_response(404, f"Not Found: {path}\n")

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
        c = _Connection(self, ws, getattr(ws, "callscribe_key", "anonymous"))
        self.connections.add(c)
        self.metrics.sessions.add(1)
        try:
            await c.run()
        finally:
            self.connections.discard(c)
            self.metrics.sessions.add(-1)
            slot = getattr(ws, "callscribe_slot", None)
            if slot is not None:
                slot.release()


class _Connection:
    """Adapter for one WebSocket: feeds the state machine and executes its outputs."""

    def __init__(self, gw: Gateway, ws: ServerConnection, key_id: str) -> None:
        self.gw = gw
        self.ws = ws
        self.key_id = key_id
        self.loop = asyncio.get_running_loop()
        s = gw.settings
        self.proto = RunTaskProtocol(clock=self.loop.time, max_frame_bytes=s.max_frame_bytes,
                                     max_task_seconds=s.max_task_seconds, default_itn=s.itn_enabled)
        self.log = log.bind(conn=next(_conn_ids), key=key_id)
        self.stream: Any = None
        self.stream_tid: str | None = None
        self.pump: asyncio.Task | None = None
        self._outbox: collections.deque[SendFrame | Close] = collections.deque()
        self._wake = asyncio.Event()
        self._input_lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._bg: set[asyncio.Task] = set()
        self._spans: dict[str, Any] = {}

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        self._arm_timer()
        lost_code = None
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    self.proto.receive_text(message)
                else:
                    self.proto.receive_binary(message)
                await self._drain()
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                lost_code = "FrameTooLarge"
        finally:
            self.proto.connection_lost(error_code=lost_code)
            await self._drain()
            if self._timer:
                self._timer.cancel()
            await self._abort(self.stream_tid)
            for t in list(self._bg):
                t.cancel()
            self._wake.set()
            writer.cancel()

    def shutdown(self, grace_s: float) -> None:
        self.proto.shutdown(grace_s)
        self._spawn(self._drain())

    # --- outputs -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        while outputs := self.proto.outputs():
            for out in outputs:
                if isinstance(out, (SendFrame, Close)):
                    self._outbox.append(out)
                    self._wake.set()
                elif isinstance(out, AudioData):
                    await self._put(out)
                elif isinstance(out, StartRecognition):
                    await self._start(out)
                elif isinstance(out, FinishInput):
                    await self._finish(out.task_id)
                elif isinstance(out, AbortRecognition):
                    await self._abort(out.task_id)
                elif isinstance(out, TaskReport):
                    self._report(out)
        self._arm_timer()

    async def _writer(self) -> None:
        """The only sender: frames in protocol order, then the close."""
        while True:
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            item = self._outbox.popleft()
            try:
                if isinstance(item, SendFrame):
                    await self.ws.send(item.text)
                else:
                    await self.ws.close(item.code, item.reason)
                    return
            except ConnectionClosed:
                return

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    def _arm_timer(self) -> None:
        at = self.proto.next_deadline()
        if at == self._timer_at:
            return
        if self._timer:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer) if at is not None else None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.proto.handle_timers()
        self._spawn(self._drain())

    # --- recognition -------------------------------------------------------------------------

    async def _start(self, cmd: StartRecognition) -> None:
        from callscribe.recognition.runtime import StreamOptions  # the runtime is optional here

        o, s, tid = cmd.options, self.gw.settings, cmd.task_id
        self.log.info("task starting", task_id=tid, model=o.model, format=o.format,
                      sample_rate=o.sample_rate, vocabulary_id=o.vocabulary_id)
        try:
            hotwords = []
            if o.vocabulary_id:
                hotwords += await asyncio.to_thread(self.gw.vocabulary.hotwords, self.key_id,
                                                    o.vocabulary_id)
            for pid in o.phrase_ids:
                try:
                    hotwords += await asyncio.to_thread(self.gw.vocabulary.hotwords,
                                                        self.key_id, pid)
                except VocabularyNotFound:
                    self.log.warning("asr_phrase resource ignored: not a vocabulary id",
                                     task_id=tid, resource_id=pid)
            stream = self.gw.runtime.open_stream(StreamOptions(
                format=o.format, sample_rate=o.sample_rate, language_hints=o.language_hints,
                max_sentence_silence_ms=o.max_sentence_silence_ms or s.max_sentence_silence_ms,
                hotwords=tuple(hotwords), disfluency_removal=o.disfluency_removal,
                itn=s.itn_enabled if o.itn is None else o.itn, partials=True))
        except Exception as exc:  # reported to the client as task-failed
            self._log_exc("task start failed", tid, exc)
            self.proto.recognition_failed(tid, exc)
            return
        self.stream, self.stream_tid = stream, tid
        self._spans[tid] = trace.get_tracer("callscribe").start_span(
            "run-task", attributes={"task_id": tid, "model": o.model, "format": o.format})
        self.pump = asyncio.create_task(self._pump(tid, stream))
        self.proto.recognition_started(tid)

    async def _put(self, cmd: AudioData) -> None:
        async with self._input_lock:
            stream = self.stream
            if stream is None or self.stream_tid != cmd.task_id:
                return
            try:
                await stream.put(cmd.data)
            except Exception as exc:
                self._log_exc("audio rejected", cmd.task_id, exc)
                self.proto.recognition_failed(cmd.task_id, exc)
                return
            self.proto.audio_consumed(cmd.task_id, stream.audio_ms)

    async def _finish(self, tid: str) -> None:
        async with self._input_lock:
            stream = self.stream
            if stream is None or self.stream_tid != tid:
                return
            try:
                await stream.finish()
            except Exception as exc:
                self._log_exc("finish failed", tid, exc)
                self.proto.recognition_failed(tid, exc)

    async def _pump(self, tid: str, stream: Any) -> None:
        try:
            async for ev in stream.events():
                self.proto.recognition_event(tid, ev, audio_ms=stream.audio_ms)
                await self._drain()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log_exc("recognition failed", tid, exc)
            self.proto.recognition_failed(tid, exc)
        else:
            self.proto.recognition_finished(tid, audio_ms=stream.audio_ms)
            if self.stream is stream:
                self.stream = self.stream_tid = self.pump = None
            await stream.aclose()
        await self._drain()

    async def _abort(self, tid: str | None) -> None:
        if tid is None or self.stream_tid != tid:
            return
        stream, pump = self.stream, self.pump
        self.stream = self.stream_tid = self.pump = None
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
        if stream is not None:
            try:
                await stream.aclose()
            except Exception as exc:
                self._log_exc("stream close failed", tid, exc)

    def _log_exc(self, what: str, tid: str, exc: BaseException) -> None:
        if isinstance(exc, CallscribeError):
            self.log.info(what, task_id=tid, error_code=exc.code, error=exc.message)
        else:
            self.log.error(what, task_id=tid, exc_info=exc)

    def _report(self, r: TaskReport) -> None:
        m = self.gw.metrics
        attrs = {"model": r.model}
        m.tasks.add(1, {**attrs, "outcome": r.outcome, "error_code": r.error_code or ""})
        m.audio.add(r.audio_ms / 1000, attrs)
        if r.first_package_delay_ms is not None:
            m.first.record(r.first_package_delay_ms, attrs)
        if r.last_package_delay_ms is not None:
            m.last.record(r.last_package_delay_ms, attrs)
        span = self._spans.pop(r.task_id, None)
        if span is not None:
            span.set_attribute("outcome", r.outcome)
            span.end()
        self.log.info("task ended", task_id=r.task_id, model=r.model, outcome=r.outcome,
                      audio_ms=r.audio_ms, sentences=r.sentences,
                      first_package_delay_ms=r.first_package_delay_ms,
                      last_package_delay_ms=r.last_package_delay_ms, error_code=r.error_code,
                      error=r.error_message)
