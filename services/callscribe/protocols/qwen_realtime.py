"""The Qwen-ASR realtime protocol (``/api-ws/v1/realtime``) as a Sans-I/O state machine.

One :class:`QwenRealtimeProtocol` per WebSocket; one socket is one session.  Same contract as
:mod:`callscribe.protocols.run_task`: feed it client events and recognition events, take
:meth:`outputs` (frames, recognition commands, a report) in order; the clock is injected.

The recognition stream opens at the first ``input_audio_buffer.append`` after
``session.update`` and serves the whole session.  VAD mode (``turn_detection.type
server_vad``): every sentence the recogniser's VAD finds is one conversation item.  Manual
mode (``turn_detection: null``): the stream runs without endpointing and every
``input_audio_buffer.commit`` ends one item (:class:`CommitInput` -> ``Committed``).  Errors:
client mistakes answer an ``error`` event of type ``invalid_request_error`` and keep the
session; server failures answer ``server_error`` and close.  Codes are listed in the README.
Limits on appended audio: :func:`~callscribe.protocols.qwen_session.check_pcm_append`;
opus is stopped by the decoder (DecodeLimitExceeded, answered ``audio_too_large``; the stream
restarts with the next append, as after CorruptAudio).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from callscribe.errors import (AppendTooLarge, AudioTooLarge, BinaryFrame, BufferTooLong,
                               CallscribeError, CommitEmpty, CommitInVadMode, DecodeLimitExceeded,
                               IdleTimeout, InvalidBase64, InvalidEvent, InvalidJson, InvalidValue,
                               ModelNotFound, RequestError, ServerShuttingDown,
                               SessionAlreadyStarted, SessionFinishing, SessionNotConfigured,
                               UnknownEventType)
from callscribe.protocols.common import (CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL,
                                         CLOSE_POLICY, AbortRecognition, AudioData, Close,
                                         CommitInput, FinishInput, Output, SendFrame,
                                         StartRecognition, TaskOptions, TaskReport, dumps,
                                         wire_error)
from callscribe.protocols.qwen_session import (DEFAULT_LANGUAGE, MODEL_RE, Config,
                                               check_pcm_append, model_problem, parse_session,
                                               session_object, vad_probability)
from callscribe.protocols.qwen_text import Item as _Item
from callscribe.protocols.qwen_text import grow
from callscribe.recognition.events import (Committed, Event, FinalSentence, Partial,
                                           SpeechStarted, SpeechStopped)
from callscribe.recognition.words import UNSPACED
from callscribe.wire import WireError, loads

#: largest base64 ``audio`` field of one append (characters)
MAX_APPEND_B64 = 15 * 1024 * 1024
#: WebSocket frame limit of this endpoint: above MAX_APPEND_B64, so an oversized append gets
#: an ``error`` event instead of a 1009 close
MAX_FRAME_BYTES = 20 * 1024 * 1024
#: manual mode: most audio between two commits
MAX_UNCOMMITTED_MS = 60_000
#: no client event for this long: close
IDLE_TIMEOUT_S = 60.0
#: after session.finished the client closes (the Java SDK's endSession() closes the socket
#: itself and throws if the server closed first); the server closes after this long
FINISHED_LINGER_S = 2.0


class State(Enum):
    OPEN = "open"
    FINISHING = "finishing"  # session.finish (or the shutdown grace) ended input
    FINISHED = "finished"  # session.finished sent: waiting for the client to close
    CLOSED = "closed"


@dataclass
class _Stream:
    sid: str
    offset_ms: int  # session audio time at the stream's start
    audio_ms: int = 0
    pending: int = 0  # AudioData handed out, not yet consumed


class QwenRealtimeProtocol:
    name = "qwen-realtime"

    def __init__(self, *, clock: Callable[[], float], model: str | None,
                 default_vad_threshold: float = 0.5, max_task_seconds: int = 4 * 3600,
                 max_append_ms: int = 60_000,
                 ids: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self._clock, self._ids = clock, ids
        self.base_threshold = default_vad_threshold
        self.max_audio_ms = max_task_seconds * 1000
        self.max_append_ms = max_append_ms
        self.session_id = "sess_" + ids()
        self.model = model or ""
        self.config = Config()
        self.state = State.OPEN
        self._outputs: list[Output] = []
        self._configured = False
        self._stream: _Stream | None = None
        self._streams = 0
        self._audio_ms = 0  # session audio time of streams that ended
        self._speech: _Item | None = None  # VAD mode: the sentence in progress
        self._open: _Item | None = None  # manual mode: the uncommitted item
        self._awaiting: deque[_Item] = deque()  # manual mode: committed, not yet recognised
        self._last_committed: str | None = None
        self._uncommitted = False
        self._commit_ms = 0
        self._pcm_uncommitted_ms = 0.0  # pcm appended since the last commit (from byte counts)
        self._append_eid: str | None = None
        self._items = 0
        self._heard: str | None = None  # the language of the session's last final
        self._last_event_at = clock()
        self._first_audio_at: float | None = None
        self._first_text_at: float | None = None
        self._finish_at: float | None = None
        self._shutdown_at: float | None = None
        self._shutdown_ended = False
        self._linger_until = 0.0
        if not MODEL_RE.match(self.model):
            self._error(ModelNotFound(model_problem(model)),
                        param="model", close=CLOSE_POLICY)
            return
        self._send("session.created", session=self._session())

    # --- outputs -----------------------------------------------------------------------------

    def outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def _send(self, type_: str, **fields: Any) -> None:
        self._outputs.append(SendFrame(dumps({"event_id": "event_" + self._ids(),
                                              "type": type_, **fields})))

    def _session(self) -> dict[str, Any]:
        return session_object(self.config, self.session_id, self.model)

    def _error(self, exc: BaseException, *, event_id: str | None = None,
               param: str | None = None, close: int | None = None,
               server: bool = False) -> None:
        """An ``error`` event (``invalid_request_error`` for what common.wire_error counts as
        the client's fault, else ``server_error``).  Server errors close the session with the
        wire close code; ``close`` closes it with that code whatever the type."""
        code, message, wire_close = wire_error(exc)
        client = wire_close == CLOSE_POLICY and not server
        self._send("error", error={"type": "invalid_request_error" if client else "server_error",
                                   "code": code, "message": message,
                                   "param": getattr(exc, "param", param), "event_id": event_id})
        if close is None and not client:
            close = wire_close
        if close is not None:
            self._fail(close, code)

    # --- client events -----------------------------------------------------------------------

    def receive_text(self, text: str) -> None:
        if self.state is State.CLOSED:
            return
        self._last_event_at = self._clock()
        try:
            msg = loads(text)
        except WireError as exc:
            return self._error(InvalidJson(f"the text frame is {exc}; every client event is "
                                           '{"type": ..., "event_id": ..., ...} in JSON'))
        eid = msg.get("event_id") if isinstance(msg, dict) else None
        eid = eid if isinstance(eid, str) else None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not isinstance(kind, str):
            return self._error(InvalidEvent('a client event is a JSON object with a string '
                                            '"type"', "type"), event_id=eid)
        if self._shutdown_ended and self.state is not State.OPEN:
            # the server ended input (drain), not the client: no "after session.finish"
            return self._send("error", error={
                "type": "server_error", "code": "server_shutting_down",
                "message": f"{kind[:64]} ignored: the server is shutting down; the audio "
                           "received is being recognised, then the session closes (1001); "
                           "reconnect to continue", "param": None, "event_id": eid})
        handler = self._handlers.get(kind)
        if handler is None:
            return self._error(UnknownEventType(
                f"Invalid value: {kind[:64]!r}. Supported values are: "
                f"{', '.join(repr(k) for k in self._handlers)}.", "type"),
                event_id=eid)
        if self.state in (State.FINISHING, State.FINISHED):
            return self._error(SessionFinishing(f"{kind} after session.finish: the session is "
                                                "ending", "type"), event_id=eid)
        if kind != "session.update" and kind != "session.finish" and not self._configured:
            return self._error(SessionNotConfigured(f"{kind} before session.update: configure "
                                                    "the session first", "type"),
                               event_id=eid)
        try:
            handler(self, msg)
        except RequestError as exc:
            self._error(exc, event_id=eid)

    def receive_binary(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._last_event_at = self._clock()
        self._error(BinaryFrame("binary frames are not part of this protocol; send audio as "
                                "base64 in input_audio_buffer.append"))

    def _on_update(self, msg: dict[str, Any]) -> None:
        body = msg.get("session")
        if not isinstance(body, dict):
            raise InvalidValue("session.update needs a 'session' object", "session")
        cfg = parse_session(body, self.config)
        if self._stream is not None and cfg != self.config:
            raise SessionAlreadyStarted("audio format, sample rate, turn detection, language and "
                                        "corpus cannot change once audio was appended; open a "
                                        "new session", "session")
        self.config, self._configured = cfg, True
        self._send("session.updated", session=self._session())

    def _on_append(self, msg: dict[str, Any]) -> None:
        audio = msg.get("audio")
        if not isinstance(audio, str):
            raise InvalidValue("'audio' must be a base64 string", "audio")
        if len(audio) > MAX_APPEND_B64:
            raise AppendTooLarge(f"the audio field has {len(audio)} characters; one append takes "
                                 f"at most {MAX_APPEND_B64} (15 MiB)", "audio")
        ms = check_pcm_append(audio, self.config, self._pcm_uncommitted_ms,
                              self.max_append_ms, MAX_UNCOMMITTED_MS)
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidBase64("'audio' is not valid base64", "audio") from None
        if not data:
            return
        self._pcm_uncommitted_ms += ms
        st = self._stream or self._open_stream()
        st.pending += 1
        self._uncommitted = True
        self._append_eid = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
        if self._first_audio_at is None:
            self._first_audio_at = self._clock()
        self._outputs.append(AudioData(st.sid, data))

    def _open_stream(self) -> _Stream:
        self._streams += 1
        sid = self.session_id if self._streams == 1 else f"{self.session_id}-{self._streams}"
        self._stream = st = _Stream(sid, self._audio_ms)
        c = self.config
        self._outputs.append(StartRecognition(sid, TaskOptions(
            model=self.model, format=c.format, sample_rate=c.sample_rate,
            language_hints=(c.language,) if c.language else (),
            max_sentence_silence_ms=c.silence_ms, context=c.corpus, endpointing=c.vad,
            vad_threshold=vad_probability(c.threshold, self.base_threshold) if c.vad else None)))
        return st

    def _on_commit(self, msg: dict[str, Any]) -> None:
        if self.config.vad:
            raise CommitInVadMode("input_audio_buffer.commit is for manual mode (turn_detection: "
                                  "null); with server_vad the server commits each utterance",
                                  "type")
        if not self._uncommitted or self._stream is None:
            raise CommitEmpty("the input audio buffer is empty: append audio before commit")
        item = self._open or self._new_item()
        self._open = None
        self._commit_events(item)
        self._awaiting.append(item)
        self._cut(discard=False)

    def _on_clear(self, msg: dict[str, Any]) -> None:
        if self._stream is not None:
            self._cut(discard=True)
        self._send("input_audio_buffer.cleared")

    def _cut(self, discard: bool) -> None:
        assert self._stream is not None
        self._uncommitted = False
        self._commit_ms = self._now_ms()
        self._pcm_uncommitted_ms = 0.0
        self._outputs.append(CommitInput(self._stream.sid, discard))

    def _on_finish(self, msg: dict[str, Any]) -> None:
        self._finish_at = self._clock()
        self._end_input()

    def _end_input(self) -> None:
        """session.finish or the end of the shutdown grace: recognise what is pending."""
        self.state = State.FINISHING
        if self._stream is None:
            return self._finished()
        if not self.config.vad and self._uncommitted:
            item = self._open or self._new_item()
            item.implicit, self._open = True, None
            self._awaiting.append(item)
            self._cut(discard=False)
        self._outputs.append(FinishInput(self._stream.sid))

    _handlers = {"session.update": _on_update, "input_audio_buffer.append": _on_append,
                 "input_audio_buffer.commit": _on_commit, "input_audio_buffer.clear": _on_clear,
                 "session.finish": _on_finish}

    # --- items -------------------------------------------------------------------------------

    def _new_item(self) -> _Item:
        return _Item("item_" + self._ids())

    def _commit_events(self, item: _Item) -> None:
        prev, self._last_committed = self._last_committed, item.id
        self._send("input_audio_buffer.committed", previous_item_id=prev, item_id=item.id)
        self._send("conversation.item.created", previous_item_id=prev, item={
            "id": item.id, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_audio", "transcript": None}]})

    def _language(self, item: _Item, heard: str | None = None) -> str:
        """Never null: what was heard, else the session's hint, else the language of the
        session's last final, else DEFAULT_LANGUAGE."""
        return heard or item.language or self.config.language or self._heard or DEFAULT_LANGUAGE

    def _joined(self, item: _Item, more: str = "") -> str:
        sep = "" if self._language(item) in UNSPACED else " "
        return sep.join(t for t in (*item.texts, more) if t)

    def _complete(self, item: _Item) -> None:
        if item.implicit:
            if not item.texts:
                return  # session.finish with nothing said: no item
            self._commit_events(item)
        self._items += 1
        self._send("conversation.item.input_audio_transcription.completed", item_id=item.id,
                   content_index=0, language=self._language(item),
                   emotion=item.emotion, transcript=self._joined(item))

    def _stop_speech(self, end_ms: int) -> None:
        item, self._speech = self._speech, None
        assert item is not None
        self._send("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item.id)
        self._commit_events(item)
        self._complete(item)

    def _target(self) -> _Item:
        """The item recognition events are about."""
        if self.config.vad:
            self._speech = self._speech or self._new_item()
            return self._speech
        if self._awaiting:
            return self._awaiting[0]
        self._open = self._open or self._new_item()
        return self._open

    # --- recognition side --------------------------------------------------------------------

    def _current(self, sid: str) -> _Stream | None:
        st = self._stream
        return st if st is not None and st.sid == sid and self.state is not State.CLOSED else None

    def _now_ms(self) -> int:
        st = self._stream
        return st.offset_ms + st.audio_ms if st is not None else self._audio_ms

    def recognition_started(self, task_id: str) -> None:
        pass  # nothing to announce: session.created went out on connect

    def audio_consumed(self, task_id: str, audio_ms: int) -> None:
        st = self._current(task_id)
        if st is None:
            return
        st.pending = max(0, st.pending - 1)
        st.audio_ms = max(st.audio_ms, int(audio_ms))
        self._last_event_at = max(self._last_event_at, self._clock())
        now = self._now_ms()
        if now > self.max_audio_ms:
            return self._error(AudioTooLarge(f"the session exceeds the maximum of "
                                             f"{self.max_audio_ms // 1000} s of audio"),
                               event_id=self._append_eid, param="audio", close=CLOSE_POLICY)
        if not self.config.vad and self._uncommitted and \
                now - self._commit_ms > MAX_UNCOMMITTED_MS and self.state is State.OPEN:
            self._cut(discard=True)
            self._error(BufferTooLong(f"more than {MAX_UNCOMMITTED_MS // 1000} s of audio without "
                                      "input_audio_buffer.commit; the uncommitted audio was "
                                      "discarded", "audio"),
                        event_id=self._append_eid)

    def recognition_event(self, task_id: str, event: Event, *, audio_ms: int | None = None) -> None:
        st = self._current(task_id)
        if st is None:
            return
        off, vad = st.offset_ms, self.config.vad
        if isinstance(event, SpeechStarted):
            if vad:
                self._speech = self._new_item()
                self._send("input_audio_buffer.speech_started",
                           audio_start_ms=off + event.begin_time, item_id=self._speech.id)
        elif isinstance(event, Partial):
            if event.text:
                item = self._target()
                if self._first_text_at is None:
                    self._first_text_at = self._clock()
                item.shown, stash = grow(item.shown, self._joined(item, event.settled),
                                         self._joined(item, event.text),
                                         self._language(item, event.language) in UNSPACED)
                self._send("conversation.item.input_audio_transcription.text", item_id=item.id,
                           content_index=0, language=self._language(item, event.language),
                           emotion=item.emotion, text=item.shown, stash=stash)
        elif isinstance(event, FinalSentence):
            item = self._target()
            if event.text:
                item.texts.append(event.text)
                item.language = item.language or event.language
                self._heard = event.language or self._heard
                if event.emotion is not None and len(event.text) > item.longest:
                    item.emotion, item.longest = event.emotion.label, len(event.text)
            if vad:
                self._stop_speech(off + event.end_time)
        elif isinstance(event, SpeechStopped):
            if vad and self._speech is not None:  # speech without words
                self._stop_speech(off + event.end_time)
        elif isinstance(event, Committed):
            if event.discarded:
                self._speech = self._open = None
            elif self._awaiting:
                self._complete(self._awaiting.popleft())

    def recognition_finished(self, task_id: str, *, audio_ms: int | None = None) -> None:
        st = self._current(task_id)
        if st is None:
            return
        while self._awaiting:
            self._complete(self._awaiting.popleft())
        self._audio_ms, self._stream = self._now_ms(), None
        if self.state is not State.FINISHING:
            return self._error(CallscribeError("recognition ended on its own"), server=True,
                               close=CLOSE_INTERNAL)
        self._finished()

    def _finished(self) -> None:
        if self._shutdown_ended:
            return self._error(ServerShuttingDown("the server is shutting down: the audio "
                                                  "received was recognised; reconnect to "
                                                  "continue"), server=True,
                               close=CLOSE_GOING_AWAY)
        self._send("session.finished")
        self._report("finished")
        self.state, self._linger_until = State.FINISHED, self._clock() + FINISHED_LINGER_S

    def recognition_failed(self, task_id: str, error: BaseException) -> None:
        st = self._current(task_id)
        if st is None:
            return
        if isinstance(error, DecodeLimitExceeded):
            error = AppendTooLarge(error.message, "audio")
        code, message, close = wire_error(error)
        for item in (*self._awaiting, self._open, self._speech):
            if item is not None and not item.implicit:
                self._send("conversation.item.input_audio_transcription.failed", item_id=item.id,
                           content_index=0, error={"code": code, "message": message,
                                                   "param": None})
        if close != CLOSE_POLICY or self.state is State.FINISHING:
            return self._error(error, event_id=self._append_eid, param="audio", close=close)
        # bad audio: this stream is gone; the next append starts a new one
        self._outputs.append(AbortRecognition(st.sid))
        self._audio_ms, self._stream = self._now_ms(), None
        self._awaiting.clear()
        self._open = self._speech = None
        self._uncommitted = False
        self._pcm_uncommitted_ms = 0.0
        self._error(error, event_id=self._append_eid, param="audio")

    # --- lifecycle ---------------------------------------------------------------------------

    def connection_lost(self, error_code: str | None = None) -> None:
        if self.state is State.FINISHED:  # the client closed after session.finished
            self.state = State.CLOSED
        if self.state is State.CLOSED:
            return
        if self._stream is not None:
            self._outputs.append(AbortRecognition(self._stream.sid))
        self._report("failed" if error_code else "client_gone", error_code)
        self.state = State.CLOSED

    def shutdown(self, grace_s: float) -> None:
        if self.state is State.FINISHED:
            return self._close(CLOSE_NORMAL, "session finished")
        if self.state is not State.OPEN or self._shutdown_at is not None:
            return
        self._shutdown_at = self._clock() + max(0.0, grace_s)
        if self._stream is None or grace_s <= 0:
            self._shutdown_ended = True
            self._end_input()

    def next_deadline(self) -> float | None:
        if self.state is State.FINISHED:
            return self._linger_until
        if self.state is not State.OPEN:
            return None
        st = self._stream
        idle = self._last_event_at + IDLE_TIMEOUT_S if st is None or st.pending == 0 else None
        return min((t for t in (idle, self._shutdown_at) if t is not None), default=None)

    def handle_timers(self) -> None:
        now = self._clock()
        if self.state is State.FINISHED and now >= self._linger_until:
            return self._close(CLOSE_NORMAL, "session finished")
        if self.state is not State.OPEN:
            return
        if self._shutdown_at is not None and now >= self._shutdown_at:
            self._shutdown_ended = True
            return self._end_input()
        st = self._stream
        if (st is None or st.pending == 0) and now >= self._last_event_at + IDLE_TIMEOUT_S:
            self._error(IdleTimeout(f"no client event for {IDLE_TIMEOUT_S:.0f} s; closing"),
                        close=CLOSE_NORMAL)

    def _fail(self, close: int, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.FINISHED:  # already reported
            return self._close(close, reason)
        if self._stream is not None:
            self._outputs.append(AbortRecognition(self._stream.sid))
            self._audio_ms, self._stream = self._now_ms(), None
        self._report("failed", reason)
        self._close(close, reason)

    def _close(self, code: int, reason: str) -> None:
        self.state = State.CLOSED
        self._outputs.append(Close(code, reason[:120]))

    def _report(self, outcome: str, code: str | None = None) -> None:
        fpd = lpd = None
        if self._first_audio_at is not None and self._first_text_at is not None:
            fpd = round((self._first_text_at - self._first_audio_at) * 1000, 1)
        if outcome == "finished" and self._finish_at is not None:
            lpd = round((self._clock() - self._finish_at) * 1000, 1)
        self._outputs.append(TaskReport(self.session_id, self.model or "-", outcome,
                                        self._now_ms(), self._items, fpd, lpd, code))
