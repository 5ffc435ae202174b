"""The DashScope run-task duplex protocol (``/api-ws/v1/inference``) as a Sans-I/O state machine.

One :class:`RunTaskProtocol` per WebSocket connection.  Feed it what happens —
:meth:`~RunTaskProtocol.receive_text`, :meth:`~RunTaskProtocol.receive_binary`,
recognition events and outcomes, timer expiries — and take :meth:`~RunTaskProtocol.outputs`:
frames to send (exact JSON text) and commands for the adapter, in order.  It never touches a
socket, a thread or the real clock (``clock`` is injected; the adapter arms one loop timer at
:meth:`~RunTaskProtocol.next_deadline`).

States: IDLE (no task) → STARTING (run-task accepted, stream being opened) → RUNNING
(task-started sent) → FINISHING (finish-task received, flushing) → IDLE (task-finished sent,
the connection may carry a new task) … CLOSED.  Any failure sends task-failed and closes:
a failed connection is not reused.

Audio, continue-task and finish-task that arrive while STARTING (sent right after run-task,
before the client saw task-started, as the Java SDK does) are accepted and handled in order
once the task started; before run-task they fail with TaskNotStarted.

Timers: the 23 s no-data timer is wall-clock (a client that stops sending); SilenceTimeout
counts *audio* time, on the recognizer's :class:`~callscribe.recognition.events.Progress`
(60 s of processed audio without speech, whatever the pace).  A stream that reports no
progress (the Kafka pipeline's) falls back to 60 s of wall-clock time without results.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Callable

from callscribe import wire
from callscribe.errors import (AudioTooLarge, CallscribeError, DuplicateTaskId, FrameTooLarge,
                               InvalidMessage, ProtocolError, RecognitionEndedEarly,
                               RequestTimeout, ServerShuttingDown, SilenceTimeout,
                               TaskAlreadyRunning, TaskNotStarted, UnknownAction)
from callscribe.protocols.common import (CLOSE_GOING_AWAY, CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL,
                                         CLOSE_TOO_BIG, AbortRecognition, AudioData, Close,
                                         FinishInput, Output, SendFrame,
                                         StartRecognition, TaskOptions, TaskReport, dumps,
                                         parse_run_task_options, wire_error)
from callscribe.recognition.events import (Emotion, Event, FinalSentence, Partial, Progress,
                                           SpeechStarted, SpeechStopped)

#: no frame from the client for this long during a task: task-failed CLIENT_ERROR
NO_DATA_TIMEOUT_S = 23.0
#: continuous silence (no speech) for this long without ``heartbeat``: task-failed, close
SILENCE_TIMEOUT_S = 60.0
#: no run-task for this long on an idle connection: close
IDLE_TIMEOUT_S = 60.0
#: with ``heartbeat``, a heartbeat result after this much silence since the last result
HEARTBEAT_INTERVAL_S = 10.0
MAX_TASK_ID_LEN = 128
#: models for which DashScope returns ``emo_tag`` / ``emo_confidence`` (with semantic
#: punctuation off); every model gets callscribe's own ``emotion`` object instead
VENDOR_EMOTION_MODELS = frozenset({"paraformer-realtime-8k-v2"})


def emotion_fields(emo: Emotion | None, options: TaskOptions) -> dict[str, Any]:
    """The emotion fields of a final: ``emotion`` {label, polarity, confidence} (callscribe's
    own, every model; null when no estimate was made), plus the vendor's ``emo_tag`` /
    ``emo_confidence`` where the vendor has them."""
    own = None if emo is None else {"label": emo.label, "polarity": emo.polarity,
                                    "confidence": round(float(emo.confidence), 3)}
    out: dict[str, Any] = {"emotion": own}
    if options.model in VENDOR_EMOTION_MODELS and not options.semantic_punctuation:
        out["emo_tag"] = emo.polarity if emo else "neutral"
        out["emo_confidence"] = own["confidence"] if own else 0.0
    return out


class State(Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    FINISHING = "finishing"
    CLOSED = "closed"


class _Task:
    def __init__(self, task_id: str, options: TaskOptions, now: float) -> None:
        self.task_id = task_id
        self.options = options
        self.last_data_at = now  # last client frame (or last audio accepted under backpressure)
        self.silence_since = now  # last speech activity (wall clock: heartbeats)
        self.silence_since_ms = 0  # audio time of the last speech activity
        self.audio_clock = False  # the stream reports Progress: silence in audio time
        self.finish_requested = False  # finish-task arrived while STARTING
        self.last_result_at = now  # last frame sent (heartbeat cadence)
        self.in_speech = False
        self.pending_audio = 0  # AudioData handed out, not yet consumed
        self.audio_ms = 0
        self.audio_bytes = 0
        self.sentences = 0
        self.partial_ids: set[int] = set()
        self.first_audio_at: float | None = None
        self.first_result_at: float | None = None
        self.finish_at: float | None = None
        self.shutdown_ended = False


def _header(task_id: str, event: str, **extra: str) -> dict[str, Any]:
    return {"task_id": task_id, "event": event, **extra, "attributes": {}}


class RunTaskProtocol:
    name = "run-task"

    def __init__(self, *, clock: Callable[[], float], max_frame_bytes: int = 1 << 20,
                 max_task_seconds: int = 4 * 3600, default_itn: bool = True) -> None:
        self._clock = clock
        self.max_frame_bytes = max_frame_bytes
        self.max_task_ms = max_task_seconds * 1000
        self.default_itn = default_itn
        self.state = State.IDLE
        self._task: _Task | None = None
        self._last_task_id = ""
        self._used_ids: set[str] = set()
        self._outputs: list[Output] = []
        self._idle_since = clock()
        self._shutting_down = False
        self._shutdown_deadline: float | None = None

    # --- outputs -----------------------------------------------------------------------------

    def outputs(self) -> list[Output]:
        """Everything queued since the last call, in order."""
        out, self._outputs = self._outputs, []
        return out

    @property
    def task_id(self) -> str | None:
        return self._task.task_id if self._task else None

    def _send(self, obj: dict[str, Any]) -> None:
        self._outputs.append(SendFrame(dumps(obj)))

    # --- client frames -----------------------------------------------------------------------

    def receive_text(self, text: str) -> None:
        if self.state is State.CLOSED:
            return
        try:
            msg = wire.loads(text)
        except wire.WireError as exc:
            return self._fail(InvalidMessage(f"text frame is {exc}; control messages are "
                                             '{"header": {...}, "payload": {...}}'),
                              close=CLOSE_INVALID_PAYLOAD)
        if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
            return self._fail(InvalidMessage("message has no 'header' object; control messages "
                                             'are {"header": {...}, "payload": {...}}'))
        header = msg["header"]
        payload = msg.get("payload")
        if payload is None:
            payload = {}
        action = header.get("action")
        if action == "run-task":
            return self._on_run_task(header, payload)
        if action in ("continue-task", "finish-task"):
            return self._on_task_action(action, header)
        return self._fail(UnknownAction(f"unknown action {action!r}; expected run-task, "
                                        "continue-task or finish-task"),
                          task_id=self._header_task_id(header))

    def receive_binary(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if len(data) > self.max_frame_bytes:
            return self._fail(FrameTooLarge(f"binary frame of {len(data)} bytes exceeds the "
                                            f"limit of {self.max_frame_bytes} bytes"),
                              close=CLOSE_TOO_BIG)
        if self.state is State.IDLE:
            return self._fail(TaskNotStarted("audio received before run-task; send run-task and "
                                             "wait for task-started"))
        task = self._task
        assert task is not None
        if self.state is State.FINISHING:
            if task.shutdown_ended:
                return  # the server ended input itself; late audio is dropped
            return self._fail(ProtocolError("audio received after finish-task"))
        if not data:
            return
        now = self._clock()
        task.last_data_at = now
        if task.first_audio_at is None:
            task.first_audio_at = now
        task.audio_bytes += len(data)
        task.pending_audio += 1
        self._outputs.append(AudioData(task.task_id, bytes(data)))

    def _header_task_id(self, header: dict[str, Any]) -> str | None:
        tid = header.get("task_id")
        return tid if isinstance(tid, str) and 0 < len(tid) <= MAX_TASK_ID_LEN else None

    def _on_task_action(self, action: str, header: dict[str, Any]) -> None:
        tid = self._header_task_id(header)
        if self.state is State.IDLE:
            return self._fail(TaskNotStarted(f"{action} received before run-task"), task_id=tid)
        task = self._task
        assert task is not None
        if tid != task.task_id:
            return self._fail(ProtocolError(f"{action} for task_id {header.get('task_id')!r}, "
                                            f"but the running task is {task.task_id}"))
        if self.state is State.FINISHING or task.finish_requested:
            return  # a repeated finish-task or a late continue-task: nothing to do
        if self.state is State.STARTING:  # handled once the task started
            task.finish_requested = action == "finish-task"
            return
        task.last_data_at = self._clock()
        if action == "finish-task":
            self.state = State.FINISHING
            task.finish_at = task.last_data_at
            self._outputs.append(FinishInput(task.task_id))
        # continue-task: accepted; its ``input`` carries nothing this server uses

    # --- run-task ----------------------------------------------------------------------------

    def _on_run_task(self, header: dict[str, Any], payload: Any) -> None:
        tid = self._header_task_id(header)
        if self.state is not State.IDLE:
            assert self._task is not None
            return self._fail(TaskAlreadyRunning(
                f"run-task received while task {self._task.task_id} is still running; send "
                "finish-task and wait for task-finished first"))
        if tid is None:
            return self._fail(ProtocolError("header.task_id must be a non-empty string of at "
                                            f"most {MAX_TASK_ID_LEN} characters"))
        if tid in self._used_ids:
            return self._fail(DuplicateTaskId(f"task_id {tid} was already used on this "
                                              "connection; every run-task needs a new task_id"),
                              task_id=tid)
        self._used_ids.add(tid)
        if self._shutting_down:
            return self._fail(ServerShuttingDown("the server is shutting down; reconnect to "
                                                 "another instance"),
                              task_id=tid, close=CLOSE_GOING_AWAY)
        try:
            options = parse_run_task_options(payload, default_itn=self.default_itn)
        except CallscribeError as exc:
            return self._fail(exc, task_id=tid)
        self._task = _Task(tid, options, self._clock())
        self._last_task_id = tid
        self.state = State.STARTING
        self._outputs.append(StartRecognition(tid, options))

    # --- recognition side --------------------------------------------------------------------

    def _current(self, task_id: str, *states: State) -> _Task | None:
        task = self._task
        if task is None or task.task_id != task_id or self.state not in states:
            return None
        return task

    def recognition_started(self, task_id: str) -> None:
        """The adapter opened the recognition stream: send task-started."""
        task = self._current(task_id, State.STARTING)
        if task is None:
            return
        self.state = State.RUNNING
        now = self._clock()
        task.last_data_at = task.silence_since = task.last_result_at = now
        self._send({"header": _header(task_id, "task-started"), "payload": {}})
        if task.finish_requested:
            self.state = State.FINISHING
            task.finish_at = now
            self._outputs.append(FinishInput(task.task_id))

    def audio_consumed(self, task_id: str, audio_ms: int) -> None:
        """One AudioData was accepted by the recognizer; ``audio_ms`` is the total so far."""
        task = self._current(task_id, State.RUNNING, State.FINISHING)
        if task is None:
            return
        task.pending_audio = max(0, task.pending_audio - 1)
        task.audio_ms = max(task.audio_ms, int(audio_ms))
        if task.pending_audio == 0:
            task.last_data_at = max(task.last_data_at, self._clock())
        if task.audio_ms > self.max_task_ms:
            self._fail(AudioTooLarge(f"the task exceeds the maximum of {self.max_task_ms // 1000}"
                                     " seconds of audio"))

    def recognition_event(self, task_id: str, event: Event, *, audio_ms: int | None = None) -> None:
        task = self._current(task_id, State.RUNNING, State.FINISHING)
        if task is None:
            return
        now = self._clock()
        if audio_ms is not None:
            task.audio_ms = max(task.audio_ms, int(audio_ms))
        if isinstance(event, Progress):
            task.audio_clock = True
            if self.state is State.RUNNING and not task.in_speech \
                    and not task.options.heartbeat \
                    and event.processed_ms - task.silence_since_ms >= SILENCE_TIMEOUT_S * 1000:
                self._silence_timeout()
            return
        if isinstance(event, SpeechStarted):
            task.in_speech = True
            task.silence_since = now
        elif isinstance(event, SpeechStopped):
            task.in_speech = False
            task.silence_since = now
            task.silence_since_ms = max(task.silence_since_ms, event.end_time)
        elif isinstance(event, Partial):
            task.in_speech = True
            task.silence_since = now
            if event.text:
                begin = event.sentence_id not in task.partial_ids
                task.partial_ids.add(event.sentence_id)
                self._result(task, {"sentence_id": event.sentence_id,
                                    "begin_time": event.begin_time, "end_time": None,
                                    "text": event.text, "heartbeat": False,
                                    "sentence_begin": begin, "sentence_end": False,
                                    "words": []}, None)
        elif isinstance(event, FinalSentence):
            task.in_speech = False
            task.silence_since = now
            task.silence_since_ms = max(task.silence_since_ms, event.end_time)
            if event.text or event.sentence_id in task.partial_ids:
                # a final with no interim before it is also the sentence's first result
                begin = event.sentence_id not in task.partial_ids
                task.partial_ids.discard(event.sentence_id)
                task.sentences += 1
                billed = math.ceil(max(task.audio_ms, event.end_time) / 1000)
                self._result(task, {
                    "sentence_id": event.sentence_id, "begin_time": event.begin_time,
                    "end_time": event.end_time, "text": event.text, "heartbeat": False,
                    "sentence_begin": begin, "sentence_end": True,
                    "words": [{"begin_time": w.begin_time, "end_time": w.end_time,
                               "text": w.text, "punctuation": w.punctuation}
                              for w in event.words],
                    **emotion_fields(event.emotion, task.options),
                    # not in DashScope's payload (extra fields are harmless to the SDK): the
                    # detected language, for the captions page
                    "language": event.language,
                }, {"duration": billed})

    def _result(self, task: _Task, sentence: dict[str, Any], usage: dict | None) -> None:
        now = self._clock()
        task.last_result_at = now
        if sentence["text"] and task.first_result_at is None and task.first_audio_at is not None:
            task.first_result_at = now
        self._send({"header": _header(task.task_id, "result-generated"),
                    "payload": {"output": {"sentence": sentence}, "usage": usage}})

    def recognition_finished(self, task_id: str, *, audio_ms: int | None = None) -> None:
        """The stream delivered its last event after FinishInput."""
        task = self._current(task_id, State.RUNNING, State.FINISHING, State.STARTING)
        if task is None:
            return
        if audio_ms is not None:
            task.audio_ms = max(task.audio_ms, int(audio_ms))
        if self.state is not State.FINISHING:
            return self._fail(RecognitionEndedEarly("recognition ended before finish-task"))
        if task.shutdown_ended:
            return self._fail(ServerShuttingDown(
                "the server is shutting down: input was ended by the server and the results "
                f"for all {task.audio_ms} ms of audio received were sent"), close=CLOSE_GOING_AWAY)
        now = self._clock()
        self._send({"header": _header(task_id, "task-finished"), "payload": {"output": {}}})
        self._report(task, "finished", now)
        self._task = None
        self.state = State.IDLE
        self._idle_since = now
        if self._shutting_down:
            self._close(CLOSE_GOING_AWAY, "server shutting down")

    def recognition_failed(self, task_id: str, error: BaseException) -> None:
        if self._current(task_id, State.STARTING, State.RUNNING, State.FINISHING) is None:
            return
        self._fail(error)

    # --- lifecycle ---------------------------------------------------------------------------

    def connection_lost(self, error_code: str | None = None) -> None:
        """The socket is gone: abandon any task.  ``error_code`` when the transport closed
        it for a reason of its own (``FrameTooLarge``: a frame over the size limit)."""
        if self.state is State.CLOSED:
            return
        task = self._task
        self.state = State.CLOSED
        if task is not None:
            self._outputs.append(AbortRecognition(task.task_id))
            self._report(task, "failed" if error_code else "client_gone", self._clock(),
                         error_code)
            self._task = None

    def shutdown(self, grace_s: float) -> None:
        """The server is draining: close when idle; a running task gets ``grace_s`` to finish."""
        if self.state is State.CLOSED or self._shutting_down:
            return
        self._shutting_down = True
        if self.state is State.IDLE:
            self._close(CLOSE_GOING_AWAY, "server shutting down")
        else:
            self._shutdown_deadline = self._clock() + max(0.0, grace_s)
            if grace_s <= 0:
                self.handle_timers()

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timers` must next run (clock units), or None."""
        if self.state is State.CLOSED:
            return None
        if self.state is State.IDLE:
            return self._idle_since + IDLE_TIMEOUT_S
        task = self._task
        assert task is not None
        deadlines = []
        if self._shutdown_deadline is not None and self.state in (State.STARTING, State.RUNNING):
            deadlines.append(self._shutdown_deadline)
        if self.state is State.RUNNING and task.pending_audio == 0:
            deadlines.append(task.last_data_at + NO_DATA_TIMEOUT_S)
            if not task.in_speech:
                if task.options.heartbeat:
                    deadlines.append(max(task.last_result_at, task.silence_since)
                                     + HEARTBEAT_INTERVAL_S)
                elif not task.audio_clock:
                    deadlines.append(task.silence_since + SILENCE_TIMEOUT_S)
        return min(deadlines) if deadlines else None

    def handle_timers(self) -> None:
        now = self._clock()
        if self.state is State.IDLE:
            if now >= self._idle_since + IDLE_TIMEOUT_S:
                self._close(CLOSE_NORMAL, f"idle for {IDLE_TIMEOUT_S:.0f} s without run-task")
            return
        task = self._task
        if task is None or self.state is State.CLOSED:
            return
        if self._shutdown_deadline is not None and now >= self._shutdown_deadline \
                and self.state in (State.STARTING, State.RUNNING):
            if self.state is State.STARTING:
                return self._fail(ServerShuttingDown("the server is shutting down"),
                                  close=CLOSE_GOING_AWAY)
            task.shutdown_ended = True
            task.finish_at = now
            self.state = State.FINISHING
            self._outputs.append(FinishInput(task.task_id))
            return
        if self.state is not State.RUNNING or task.pending_audio:
            return
        if now >= task.last_data_at + NO_DATA_TIMEOUT_S:
            return self._fail(RequestTimeout(f"request timeout after {NO_DATA_TIMEOUT_S:.0f} "
                                             "seconds."))
        if not task.in_speech:
            if task.options.heartbeat:
                if now >= max(task.last_result_at, task.silence_since) + HEARTBEAT_INTERVAL_S:
                    self._result(task, {"sentence_id": task.sentences + 1, "begin_time": 0,
                                        "end_time": None, "text": "", "heartbeat": True,
                                        "sentence_begin": False, "sentence_end": False,
                                        "words": []}, None)
            elif not task.audio_clock and now >= task.silence_since + SILENCE_TIMEOUT_S:
                self._silence_timeout()

    def _silence_timeout(self) -> None:
        self._fail(SilenceTimeout(f"no speech for {SILENCE_TIMEOUT_S:.0f} seconds of audio; set "
                                  "parameters.heartbeat=true to keep a silent task open"),
                   close=CLOSE_NORMAL)

    # --- failure -----------------------------------------------------------------------------

    def _fail(self, error: BaseException, *, task_id: str | None = None,
              close: int | None = None) -> None:
        """task-failed for the current task (or ``task_id``), abort recognition, close."""
        if self.state is State.CLOSED:
            return
        code, message, close_code = wire_error(error)
        task = self._task
        tid = task.task_id if task is not None else (task_id or self._last_task_id)
        self._send({"header": _header(tid, "task-failed", error_code=code,
                                      error_message=message), "payload": {}})
        if task is not None:
            if self.state is not State.IDLE:
                self._outputs.append(AbortRecognition(task.task_id))
            self._report(task, "failed", self._clock(), code, message)
            self._task = None
        self._close(close if close is not None else close_code, code)

    def _close(self, code: int, reason: str) -> None:
        self.state = State.CLOSED
        self._outputs.append(Close(code, reason[:120]))

    def _report(self, task: _Task, outcome: str, now: float, code: str | None = None,
                message: str | None = None) -> None:
        fpd = lpd = None
        if task.first_audio_at is not None and task.first_result_at is not None:
            fpd = round((task.first_result_at - task.first_audio_at) * 1000, 1)
        if outcome == "finished" and task.finish_at is not None:
            lpd = round((now - task.finish_at) * 1000, 1)
        self._outputs.append(TaskReport(task.task_id, task.options.model, outcome, task.audio_ms,
                                        task.sentences, fpd, lpd, code, message,
                                        {"audio_bytes": task.audio_bytes}))
