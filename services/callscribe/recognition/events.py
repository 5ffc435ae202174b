"""Events a recognition session emits.  Times are ms from the start of the stream."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Word:
    begin_time: int
    end_time: int
    text: str
    #: punctuation that follows the word ("" when none)
    punctuation: str = ""


@dataclass(frozen=True, slots=True)
class Emotion:
    polarity: str  # positive | negative | neutral
    confidence: float
    label: str  # surprised, neutral, happy, sad, disgusted, angry, fearful
    source: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    sentence_id: int
    begin_time: int


@dataclass(frozen=True, slots=True)
class Partial:
    """The current sentence so far: ``text == settled + tail``."""

    sentence_id: int
    begin_time: int
    end_time: int  # audio time the partial covers up to
    settled: str
    tail: str
    language: str | None = None

    @property
    def text(self) -> str:
        return self.settled + self.tail


@dataclass(frozen=True, slots=True)
class FinalSentence:
    sentence_id: int
    begin_time: int
    end_time: int
    text: str
    words: tuple[Word, ...]
    language: str | None
    emotion: Emotion | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    sentence_id: int
    end_time: int


@dataclass(frozen=True, slots=True)
class Committed:
    """The input up to ``end_time`` was committed (``AsyncStream.commit``): every event about
    the audio before it came first.  ``discarded``: the open sentence was dropped, not decoded.
    Only emitted on request, never by plain streaming."""

    end_time: int
    discarded: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """Recognition has processed the stream's audio up to ``processed_ms``.  Emitted by the
    asyncio stream (:class:`callscribe.recognition.runtime.AsyncStream`, when opened with
    ``StreamOptions(progress=True)``) after every processing step, after that step's events:
    rules in audio time (run-task's SilenceTimeout) are decided on it, never on audio that
    arrived but was not yet looked at."""

    processed_ms: int


Event = (SpeechStarted | Partial | FinalSentence | SpeechStopped | Committed
         | Progress)
