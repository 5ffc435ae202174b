"""The protocol-agnostic connection adapter: one per WebSocket, whatever the protocol.

It moves bytes between the socket, a Sans-I/O protocol state machine (anything with the
:class:`~callscribe.protocols.common.Machine` interface: run-task, Qwen realtime) and the
recognition runtime, and executes the machine's outputs in order.  Every protocol decision
lives in the machine; auth, admission, frame limits, metrics, logs and the drain are the
gateway's (:mod:`callscribe.gateway.server`) and the same for every protocol.

Audio and commits go to the recognizer under one lock, in output order, through ``await
stream.put()``, which waits when recognition falls behind; while it waits this connection's
socket is not read (TCP flow control pushes back on the client).

Frames to send wait in a bounded outbox: above ``CALLSCRIBE_MAX_OUTBOX_BYTES`` of unsent
frames the socket is not read until the client has read its results down to half of that;
a client that stays above the bound for ``CALLSCRIBE_SLOW_READER_TIMEOUT_S`` is closed with
1008 ``client does not read its results`` (its unsent frames are dropped; the close frame is
sent if the socket takes it within 2 s, else the TCP connection is cut).

Timers are the machine's deadlines, armed as loop timers.  A timer that fires while frames
from this client wait, received but not yet handled (the loop was busy with other sessions'
work), does nothing: handling those frames re-arms it, so no client is timed out because the
server was late reading it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from callscribe.errors import CallscribeError
from callscribe.protocols.common import (CLOSE_POLICY, AbortRecognition, AudioData, Close,
                                         CommitInput, FinishInput, Machine, SendFrame,
                                         StartRecognition, TaskReport)
from callscribe.recognition.vocabulary import VocabularyNotFound

if TYPE_CHECKING:
    from callscribe.gateway.server import Gateway

log = structlog.get_logger("callscribe.gateway")
_conn_ids = itertools.count(1)
#: close reason (code 1008) for a client that does not read its results (README)
SLOW_READER_REASON = "client does not read its results"
#: how long the close frame of a slow reader may take to be accepted before TCP is cut (s)
SLOW_READER_CLOSE_S = 2.0


class Connection:
    """Adapter for one WebSocket: feeds the state machine and executes its outputs."""

    def __init__(self, gw: Gateway, ws: ServerConnection, key_id: str, proto: Machine) -> None:
        self.gw = gw
        self.ws = ws
        self.key_id = key_id
        self.loop = asyncio.get_running_loop()
        self.proto = proto
        self.log = log.bind(conn=next(_conn_ids), key=key_id, protocol=proto.name)
        self.stream: Any = None
        self.stream_tid: str | None = None
        self.pump: asyncio.Task | None = None
        self._outbox: collections.deque[SendFrame | Close] = collections.deque()
        self._outbox_bytes = 0
        self._max_outbox = gw.settings.max_outbox_bytes
        #: set while the outbox is below its bound: the reader may read the next frame
        self._room = asyncio.Event()
        self._room.set()
        self._writer_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._input_lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._bg: set[asyncio.Task] = set()
        self._spans: dict[str, Any] = {}

    async def run(self) -> None:
        writer = self._writer_task = asyncio.create_task(self._writer())
        lost_code = None
        try:
            await self._drain()  # what the protocol says on connect (Qwen: session.created)
            async for message in self.ws:
                if isinstance(message, str):
                    self.proto.receive_text(message)
                else:
                    self.proto.receive_binary(message)
                await self._drain()
                if not self._room.is_set() and not await self._wait_for_room():
                    lost_code = "SlowReader"
                    break
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
            for span in self._spans.values():
                span.end()
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
                    if isinstance(out, SendFrame):
                        self._outbox_bytes += len(out.text)
                        if self._outbox_bytes > self._max_outbox:
                            self._room.clear()
                    self._wake.set()
                elif isinstance(out, AudioData):
                    await self._put(out)
                elif isinstance(out, StartRecognition):
                    await self._start(out)
                elif isinstance(out, FinishInput):
                    await self._finish(out.task_id)
                elif isinstance(out, CommitInput):
                    await self._commit(out)
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
                    self._outbox_bytes -= len(item.text)
                    if self._outbox_bytes <= self._max_outbox // 2:
                        self._room.set()
                else:
                    await self.ws.close(item.code, item.reason)
                    return
            except ConnectionClosed:
                return

    async def _wait_for_room(self) -> bool:
        """The outbox is over its bound: wait (not reading) until the client reads its results;
        False when it did not within the deadline, after closing the connection."""
        timeout = self.gw.settings.slow_reader_timeout_s
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
            return True
        except TimeoutError:
            pass
        self.log.warning("closing a client that does not read its results",
                         unsent_bytes=self._outbox_bytes, unsent_frames=len(self._outbox),
                         timeout_s=timeout, close_code=CLOSE_POLICY)
        if self._writer_task is not None:
            self._writer_task.cancel()
        self._outbox.clear()
        self._outbox_bytes = 0
        try:
            await asyncio.wait_for(self.ws.close(CLOSE_POLICY, SLOW_READER_REASON),
                                   SLOW_READER_CLOSE_S)
        except (TimeoutError, ConnectionClosed):
            pass
        self.ws.transport.abort()
        return False

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
        if len(self.ws.recv_messages.frames):
            # the client did send: its frames wait behind other work; handling them re-arms
            # the timer (and this one looks again in a second in case they do not)
            self._timer = self.loop.call_later(1.0, self._on_timer)
            return
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
                itn=s.itn_enabled if o.itn is None else o.itn, partials=True,
                context=o.context, vad_threshold=o.vad_threshold, endpointing=o.endpointing,
                progress=True, extra={"task_id": tid}))
        except Exception as exc:  # reported to the client as task-failed
            self._log_exc("task start failed", tid, exc)
            self.proto.recognition_failed(tid, exc)
            return
        self.stream, self.stream_tid = stream, tid
        span = self._spans[tid] = trace.get_tracer("callscribe").start_span(
            self.proto.name, attributes={"task_id": tid, "model": o.model, "format": o.format})
        stream.trace_context = trace.set_span_in_context(span)
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

    async def _commit(self, cmd: CommitInput) -> None:
        async with self._input_lock:
            stream = self.stream
            if stream is None or self.stream_tid != cmd.task_id:
                return
            try:
                await stream.commit(cmd.discard)
            except Exception as exc:
                self._log_exc("commit failed", cmd.task_id, exc)
                self.proto.recognition_failed(cmd.task_id, exc)

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
        attrs = m.task_attrs(r.model, self.proto.name)
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
