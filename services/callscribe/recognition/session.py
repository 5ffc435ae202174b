"""The per-stream recognition session: 16 kHz float PCM in, events out.

A Sans-I/O state machine in the sense that it never touches a socket, a clock or a thread:
``accept_waveform`` only appends to a bounded buffer (cheap, callable from the event loop);
``process`` runs VAD and any due decode and returns the events (call it from a worker thread,
never two at once for the same session).  Time is audio time: every decision (endpoint,
partial cadence, maximum sentence length) is taken on sample counts, so the same audio gives
the same events whatever the feeding pace.

Segmentation: Silero VAD per 32 ms frame.  Speech is confirmed after ``min_speech_ms`` of
voiced frames; the sentence ends after ``max_sentence_silence_ms`` of silence, or is cut at
its quietest recent frame when it reaches ``max_sentence_ms``.

Commits (``force_endpoint``): the caller may end the current sentence at an exact point of the
input instead of waiting for silence (the Qwen realtime protocol's manual mode and its
``input_audio_buffer.commit`` / ``.clear``).  With ``endpointing=False`` silence never ends a
sentence, so everything between two commits is one sentence (still cut at ``max_sentence_ms``,
the decoder's window).  A commit emits :class:`~callscribe.recognition.events.Committed` after
the events of the audio before it; a sentence never starts before the last commit.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from callscribe.asr.engine import DecodeRequest, DecodeResult, Engine
from callscribe.asr.vad import FRAME, FRAME_MS, SAMPLE_RATE, SileroVad, VadState
from callscribe.errors import Overloaded, SessionError
from callscribe.recognition.events import (Committed, Event, FinalSentence, Partial,
                                           SpeechStarted, SpeechStopped)
from callscribe.recognition.telemetry import RecognitionTelemetry
from callscribe.recognition.words import close_sentence, settle, to_words, words_text

MS = SAMPLE_RATE // 1000
#: a final detected with at least this probability sets the stream's prior language
CONFIDENT_LANGUAGE_P = 0.8


@dataclass(frozen=True)
class SessionOptions:
    language_hints: tuple[str, ...] = ()
    max_sentence_silence_ms: int = 800
    max_sentence_ms: int = 15000
    #: audio ms between partials of one sentence; 0 disables partials
    partial_interval_ms: int = 1000
    #: audio ms from a sentence's onset to its first partial (a short, cheap decode, so the
    #: first words show while the caller speaks); 0: the same as ``partial_interval_ms``
    first_partial_ms: int = 0
    vad_threshold: float = 0.5
    min_speech_ms: int = 160
    speech_pad_ms: int = 200
    max_buffered_audio_ms: int = 60000
    #: left context of final decodes: up to this much (ms) of the previous sentence's audio,
    #: with its text, goes in front of the sentence (0: none) ...
    context_ms: int = 3000
    #: ... when the pause between them is at most this long (ms): a sentence cut at a short
    #: pause continues the same thought; after a longer one (a new turn, another speaker on a
    #: mixed channel) the previous audio misleads the decoder more often than it helps
    context_max_gap_ms: int = 1500
    #: decoder prompt applied to every decode (free context text)
    prompt: str | None = None
    #: hotword prompt and terms: finals are decoded with and without it (see DecodeRequest)
    bias_prompt: str | None = None
    bias_terms: tuple[str, ...] = ()
    #: partials are skipped while more than this much audio waits to be processed
    partial_skip_backlog_ms: int = 1500
    #: False: silence never ends a sentence; only ``force_endpoint`` (or the end of input, or
    #: ``max_sentence_ms``) does.  For clients that decide utterance boundaries themselves.
    endpointing: bool = True

    def __post_init__(self) -> None:
        if not 200 <= self.max_sentence_silence_ms <= 6000:
            raise SessionError(f"max_sentence_silence {self.max_sentence_silence_ms} ms is out of "
                               "range: it must be between 200 and 6000")
        if not 1000 <= self.max_sentence_ms <= 30000:
            raise SessionError("max_sentence_ms must be between 1000 and 30000")


@dataclass(frozen=True, slots=True)
class _Commit:
    """A marker in the input queue: end the sentence here (``force_endpoint``)."""

    discard: bool


#: hook applied to every final sentence in the worker thread: (sentence, sentence audio) -> sentence
FinalHook = Callable[[FinalSentence, np.ndarray], FinalSentence]


@dataclass(frozen=True, slots=True)
class _Context:
    """The end of the last final sentence: its audio and the text decoded for that audio."""

    audio: np.ndarray
    text: str
    language: str | None
    end: int  # stream sample index where its last word ends


@dataclass
class _Sentence:
    sentence_id: int
    start: int  # sample index in the stream where the sentence audio begins (padding included)
    last_voiced: int  # end sample of the last voiced frame
    last_partial_at: int
    settled_prev: str = ""
    prev_partial: str = ""
    language: str | None = None
    confirmed: bool = False
    voiced_ms: int = 0
    frame_probs: list[float] = field(default_factory=list)
    partials: int = 0  # partial decodes made for this sentence
    #: a final decoded ahead of time, during the end-of-sentence silence: (end sample, result)
    early: tuple[int, DecodeResult] | None = None


class RecognitionSession:
    def __init__(self, engine: Engine, vad: SileroVad, options: SessionOptions | None = None,
                 final_hook: FinalHook | None = None,
                 telemetry: RecognitionTelemetry | None = None) -> None:
        self.engine = engine
        self.vad = vad
        self.options = options or SessionOptions()
        self.final_hook = final_hook
        self.telemetry = telemetry
        self._lock = threading.Lock()
        self._pending: deque[np.ndarray | _Commit] = deque()
        self._pending_samples = 0
        self._finished_input = False
        self._done = False
        self._vad_state = VadState()
        # audio kept for decoding: samples [self._buf_start, self._buf_start + len(buf))
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0
        self._processed = 0  # samples run through VAD
        self._sentence: _Sentence | None = None
        self._next_id = 1
        self._silence_run_ms = 0
        self._floor = 0  # sample index of the last commit: sentences start at or after it
        self._prev_text: str | None = None
        self._context: _Context | None = None
        #: the language of the stream so far (confident finals): unsure detections yield to it
        self._language_prior: str | None = None
        self.decodes = {"partial": 0, "final": 0}
        #: the Kafka worker turns partials off under load (its backpressure degrades them
        #: first); read on every partial decision, so it takes effect at once
        self.partials_enabled = True
        #: set by the runtime: True while decodes wait for a free worker thread; partials are
        #: skipped then, so finals are never queued behind them (load shedding)
        self.pool_busy: Callable[[], bool] | None = None

    # --- input (any thread) -------------------------------------------------------------
    def accept_waveform(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            if self._finished_input:
                raise SessionError("audio after the end of input")
            limit = self.options.max_buffered_audio_ms * MS
            if self._pending_samples + len(samples) > limit:
                raise Overloaded(f"more than {self.options.max_buffered_audio_ms} ms of audio "
                                 "waiting for recognition; send at real-time pace")
            if len(samples):
                self._pending.append(samples)
                self._pending_samples += len(samples)

    def input_finished(self) -> None:
        with self._lock:
            self._finished_input = True

    def force_endpoint(self, discard: bool = False) -> None:
        """End the current sentence after all audio accepted so far, as if silence had been
        detected there, and emit ``Committed``.  ``discard``: drop the sentence undecoded (no
        FinalSentence and no SpeechStopped: ``Committed(discarded=True)`` ends it)."""
        with self._lock:
            if self._finished_input:
                raise SessionError("commit after the end of input")
            self._pending.append(_Commit(discard))

    @property
    def pending_ms(self) -> int:
        return self._pending_samples // MS

    @property
    def audio_ms(self) -> int:
        return (self._processed + self._pending_samples) // MS

    @property
    def done(self) -> bool:
        return self._done

    @property
    def safe_ms(self) -> int:
        """Audio time (ms) before which no sentence will change any more: the start of the open
        sentence, or with none open the earliest point a new one could start (its pre-roll);
        everything once done.  The Kafka worker acknowledges chunks up to here.  Read it
        between two ``process`` calls, not during one."""
        if self._done:
            return self._processed // MS
        if self._sentence is not None:
            return self._sentence.start // MS
        pre_roll = FRAME + self.options.speech_pad_ms * MS
        return max(self._floor, self._processed - pre_roll, 0) // MS

    def has_work(self) -> bool:
        return bool(self._pending) or (self._finished_input and not self._done)

    # --- processing (one worker thread at a time) ---------------------------------------
    def process(self) -> list[Event]:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._pending_samples = 0
            finished = self._finished_input
        events: list[Event] = []
        later = sum(len(x) for x in items if not isinstance(x, _Commit))
        for is_commit, group in itertools.groupby(items, key=lambda x: isinstance(x, _Commit)):
            if is_commit:
                for c in group:
                    self._commit(c.discard, events)
                continue
            audio = np.concatenate(list(group))
            later -= len(audio)
            # walk the audio in partial-interval steps, so a large chunk gets the same
            # partials as many small ones (unless recognition is behind: then they are skipped)
            step = max(FRAME, self.options.partial_interval_ms * MS) or len(audio)
            for off in range(0, len(audio), step):
                piece = audio[off:off + step]
                self._append_buffer(piece)
                for p in self.vad.probabilities(self._vad_state, piece):
                    self._processed += FRAME
                    self._on_frame(float(p), events)
                if not self._maybe_decode_early():
                    self._maybe_partial(events,
                                        backlog_ms=(len(audio) - off - len(piece) + later) // MS)
        if finished and not self._done:
            tail = len(self._vad_state.leftover)
            self._processed += tail
            if self._sentence is not None:
                if tail and self._sentence.confirmed:
                    self._sentence.last_voiced = self._processed
                self._end_sentence(self._processed, events, input_end=True)
            self._done = True
        return events

    def _append_buffer(self, audio: np.ndarray) -> None:
        self._buf = np.concatenate([self._buf, audio])
        # keep only what a sentence can still need: the current sentence, or the pre-roll
        keep_from = (self._sentence.start if self._sentence is not None
                     else self._processed - self.options.speech_pad_ms * MS)
        drop = max(0, keep_from - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop

    def _audio(self, start: int, end: int) -> np.ndarray:
        return self._buf[max(0, start - self._buf_start): max(0, end - self._buf_start)]

    def _on_frame(self, p: float, events: list[Event]) -> None:
        o = self.options
        frame_end = self._processed
        voiced = p >= o.vad_threshold
        s = self._sentence
        if s is None:
            if voiced:
                start = max(self._floor, frame_end - FRAME - o.speech_pad_ms * MS)
                self._sentence = _Sentence(self._next_id, start=start, last_voiced=frame_end,
                                           last_partial_at=frame_end, voiced_ms=FRAME_MS)
                self._silence_run_ms = 0
            return
        s.frame_probs.append(p)
        if voiced or (s.confirmed and p >= o.vad_threshold - 0.15 and self._silence_run_ms == 0):
            s.last_voiced = frame_end
            s.voiced_ms += FRAME_MS
            self._silence_run_ms = 0
        else:
            self._silence_run_ms += FRAME_MS
        if not s.confirmed:
            if s.voiced_ms >= o.min_speech_ms:
                s.confirmed = True
                events.append(SpeechStarted(s.sentence_id, s.start // MS))
            elif self._silence_run_ms >= 200:
                self._sentence = None  # a click, not speech
            return
        if o.endpointing and self._silence_run_ms >= o.max_sentence_silence_ms:
            self._end_sentence(s.last_voiced + o.speech_pad_ms * MS, events)
        elif frame_end - s.start >= o.max_sentence_ms * MS:
            self._cut_long_sentence(events)

    def _commit(self, discard: bool, events: list[Event]) -> None:
        # the < 32 ms the VAD has not scored yet belong before the commit: count them as
        # processed (they are in the buffer) and start the next VAD frame after them
        self._processed += len(self._vad_state.leftover)
        self._vad_state.leftover = self._vad_state.leftover[:0]
        end = self._processed
        s = self._sentence
        if s is not None:
            if s.confirmed and not discard:
                self._end_sentence(min(end, s.last_voiced + self.options.speech_pad_ms * MS),
                                   events)
            else:
                self._sentence = None
                self._silence_run_ms = 0
        self._floor = end
        events.append(Committed(end // MS, discard))

    def _cut_long_sentence(self, events: list[Event]) -> None:
        s = self._sentence
        assert s is not None
        # the quietest frame in the last third of the sentence
        probs = np.asarray(s.frame_probs)
        third = max(1, len(probs) // 3)
        idx = len(probs) - third + int(np.argmin(probs[-third:]))
        cut = self._processed - (len(probs) - idx - 1) * FRAME
        self._end_sentence(cut, events, stopped=False)
        nxt = _Sentence(self._next_id, start=cut, last_voiced=self._processed,
                        last_partial_at=self._processed, confirmed=True,
                        voiced_ms=(self._processed - cut) // MS)
        self._sentence = nxt
        events.append(SpeechStarted(nxt.sentence_id, cut // MS))

    def _maybe_partial(self, events: list[Event], backlog_ms: int) -> None:
        s = self._sentence
        o = self.options
        due = o.partial_interval_ms
        if s is not None and not s.partials and o.first_partial_ms:
            due = min(due, o.first_partial_ms)
        if (s is None or not s.confirmed or o.partial_interval_ms <= 0
                or not self.partials_enabled
                or self._processed - s.last_partial_at < due * MS
                or self.pending_ms + backlog_ms > o.partial_skip_backlog_ms
                or (self.pool_busy is not None and self.pool_busy())):
            return
        s.last_partial_at = self._processed
        s.partials += 1
        audio = self._audio(s.start, self._processed)
        result = self._decode(audio, partial=True, language=s.language)
        self.decodes["partial"] += 1
        text = result.text.strip()
        if not text or self._hallucination(result):
            return
        s.language = s.language or result.language
        settled, tail = settle(s.prev_partial, text, s.settled_prev)
        s.prev_partial, s.settled_prev = text, settled
        events.append(Partial(s.sentence_id, s.start // MS, self._processed // MS, settled, tail,
                              s.language))

    # Finals detect their language on the whole sentence (language=None): a partial's guess on
    # the first second of speech can be wrong, and forcing it would garble the final.

    def _maybe_decode_early(self) -> bool:
        """Once the silence after speech is half of ``max_sentence_silence`` (at least 200 ms),
        decode the final now: when the silence completes, the result is ready and the final
        goes out at once.  If speech resumes, the early result is dropped.  No partial is made
        during such silence (it would repeat the last one).  Returns True when silent."""
        s, o = self._sentence, self.options
        if s is None or not s.confirmed or not o.endpointing:
            return False
        if self._silence_run_ms < max(200, o.max_sentence_silence_ms // 2):
            return False
        end = min(s.last_voiced + o.speech_pad_ms * MS, self._processed)
        if s.early is None or s.early[0] != end:
            result = self._decode(self._audio(s.start, end), partial=False,
                                  language=None, previous=self._prev_text, start=s.start)
            self.decodes["final"] += 1
            s.early = (end, result)
        return True

    def _end_sentence(self, end: int, events: list[Event], stopped: bool = True,
                      input_end: bool = False) -> None:
        """Decode the sentence up to ``end`` and emit it.  ``input_end``: the end of input
        closes it (finish-task), so everything up to ``end`` is decoded but the sentence ends
        where its last word does, not at the end of the stream."""
        s = self._sentence
        assert s is not None
        end = min(end, self._processed)
        self._sentence = None
        self._silence_run_ms = 0
        if not s.confirmed:
            return
        audio = self._audio(s.start, end)
        if s.early is not None and s.early[0] == end:  # no speech since: the early decode holds
            result = s.early[1]
        else:
            result = self._decode(audio, partial=False, language=None,
                                  previous=self._prev_text, start=s.start)
            self.decodes["final"] += 1
        begin_ms, end_ms = s.start // MS, end // MS
        if result.text.strip() and not self._hallucination(result):
            words = close_sentence(to_words(result.words, begin_ms, end_ms, result.language),
                                   result.language)
            if words and input_end:
                end_ms = max(begin_ms, words[-1].end_time)
            if words:
                final = FinalSentence(s.sentence_id, begin_ms, end_ms,
                                      words_text(words, result.language), tuple(words),
                                      result.language)
                if self.final_hook is not None:
                    final = self.final_hook(final, audio)
                events.append(final)
                self._prev_text = result.text.strip()[-200:]
                self._context = self._next_context(audio, result, s.start)
                if result.language_probability >= CONFIDENT_LANGUAGE_P:
                    self._language_prior = result.language
                self._next_id += 1
        if stopped:
            events.append(SpeechStopped(s.sentence_id, end_ms))

    def _next_context(self, audio: np.ndarray, result: DecodeResult,
                      start: int) -> _Context | None:
        """The last ``context_ms`` of a final's audio, cut at a word start, with the words'
        text as the model wrote it (so the next decode can take it as its prefix)."""
        ms = self.options.context_ms
        if ms <= 0 or not result.words:
            return None
        cut = max(0.0, len(audio) / SAMPLE_RATE - ms / 1000)
        first = next((i for i, w in enumerate(result.words) if w.start >= cut), None)
        if first is None:
            return None
        cut_at = max(0, int((result.words[first].start - 0.1) * SAMPLE_RATE))
        text = "".join(w.text for w in result.words[first:]).strip()
        if not text:
            return None
        return _Context(audio[cut_at:].copy(), text, result.language,
                        start + int(result.words[-1].end * SAMPLE_RATE))

    def _decode(self, audio: np.ndarray, *, partial: bool, language: str | None,
                previous: str | None = None, start: int | None = None) -> DecodeResult:
        ctx = self._context
        if partial or ctx is None or start is None or (
                start + self.options.speech_pad_ms * MS - ctx.end
                > self.options.context_max_gap_ms * MS):
            ctx = None
        request = DecodeRequest(
            audio=audio, partial=partial, language_hints=self.options.language_hints,
            language=language, language_prior=self._language_prior,
            prompt=self.options.prompt, previous_text=previous,
            bias_prompt=self.options.bias_prompt, bias_terms=self.options.bias_terms,
            context_audio=ctx.audio if ctx else None, context_text=ctx.text if ctx else None,
            context_language=ctx.language if ctx else None)
        if self.telemetry is None:
            return self.engine.decode(request)
        kind = "partial" if partial else "final"
        t0 = time.perf_counter()
        with self.telemetry.tracer.start_as_current_span(
                f"decode.{kind}", attributes={"audio_ms": len(audio) // MS}):
            result = self.engine.decode(request)
        self.telemetry.decode_ms.record((time.perf_counter() - t0) * 1000, {"kind": kind})
        return result

    @staticmethod
    def _hallucination(result: DecodeResult) -> bool:
        """Whisper's own rule: likely no speech and not confidently decoded."""
        if result.no_speech_probability > 0.6 and result.avg_logprob < -1.0:
            return True
        return result.avg_logprob < -1.6
