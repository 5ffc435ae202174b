"""The recognition session on audio the tests make (espeak-ng speech, tones, noise, silence)."""

from __future__ import annotations

import numpy as np
import pytest

import audiogen
from callscribe.errors import Overloaded, SessionError
from callscribe.recognition.events import FinalSentence, Partial, SpeechStarted, SpeechStopped
from callscribe.recognition.session import RecognitionSession, SessionOptions
from callscribe.benchmark.metrics import error_rate

RATE = 16000


def speech(tmp_path, text: str, name: str = "s", voice: str = "en-us") -> np.ndarray:
    path = audiogen.espeak_wav(text, tmp_path / f"{name}.wav", rate=RATE, voice=voice)
    from callscribe.audio import decode_bytes
    return decode_bytes(path.read_bytes(), "wav")[0]


def run(runtime, audio: np.ndarray, step: int = 1600, **opts) -> list:
    session = RecognitionSession(runtime.engine, runtime.vad, SessionOptions(**opts))
    events = []
    for i in range(0, len(audio), step):
        session.accept_waveform(audio[i:i + step])
        events.extend(session.process())
    session.input_finished()
    while session.has_work():
        events.extend(session.process())
    assert session.done
    return events


@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    a = speech(tmp, "Please check the balance of my savings account.", "a")
    b = speech(tmp, "I would like to speak with a manager about my bill.", "b")
    gap = audiogen.silence(1.5, RATE)
    return np.concatenate([audiogen.silence(0.5, RATE), a, gap, b, audiogen.silence(1.0, RATE)])


def test_events_order_text_and_timestamps(runtime, two_sentences):
    events = run(runtime, two_sentences, max_sentence_silence_ms=700)
    finals = [e for e in events if isinstance(e, FinalSentence)]
    assert len(finals) == 2, [e for e in events]
    assert error_rate([("Please check the balance of my savings account.", finals[0].text),
                       ("I would like to speak with a manager about my bill.", finals[1].text)],
                      "en") <= 0.3  # espeak-ng speech: the real accuracy bar is in test_recordings
    assert "account" in finals[0].text.lower() and "manager" in finals[1].text.lower()
    assert [f.sentence_id for f in finals] == [1, 2]
    for f in finals:
        assert f.language == "en"
        assert f.text[-1] in ".!?", "final text is punctuated"
        assert f.begin_time < f.end_time
        for w in f.words:
            assert f.begin_time <= w.begin_time <= w.end_time <= f.end_time
        starts = [w.begin_time for w in f.words]
        assert starts == sorted(starts)
    assert finals[0].end_time <= finals[1].begin_time
    # per sentence: started, partials, final, stopped, in that order
    for sid in (1, 2):
        kinds = [type(e) for e in events if getattr(e, "sentence_id", None) == sid]
        assert kinds[0] is SpeechStarted and kinds[-1] is SpeechStopped
        assert kinds.index(FinalSentence) == len(kinds) - 2
        assert Partial in kinds, "a 3 s sentence gets at least one partial at 1 s cadence"
    partials = [e for e in events if isinstance(e, Partial)]
    assert all(p.text == p.settled + p.tail for p in partials)


def test_finals_do_not_depend_on_chunking(runtime, two_sentences):
    a = [e for e in run(runtime, two_sentences, step=320, max_sentence_silence_ms=700)
         if isinstance(e, FinalSentence)]
    b = [e for e in run(runtime, two_sentences, step=48000, max_sentence_silence_ms=700)
         if isinstance(e, FinalSentence)]
    assert [(f.begin_time, f.end_time, f.text) for f in a] == \
           [(f.begin_time, f.end_time, f.text) for f in b]


def test_long_silence_setting_joins_sentences(runtime, two_sentences):
    finals = [e for e in run(runtime, two_sentences, max_sentence_silence_ms=3000)
              if isinstance(e, FinalSentence)]
    assert len(finals) == 1
    assert "manager" in finals[0].text.lower() and "account" in finals[0].text.lower()


@pytest.mark.parametrize("kind", ["silence", "noise", "tone", "chirps"])
def test_non_speech_yields_no_text(runtime, kind):
    if kind == "silence":
        audio = audiogen.silence(6.0, RATE)
    elif kind == "noise":
        audio = audiogen.white_noise(6.0, RATE, 0.05)
    elif kind == "tone":
        audio = audiogen.tone(440.0, 6.0, RATE) * 0.5
    else:  # beeps like a dial tone cadence
        beep = audiogen.tone(950.0, 0.4, RATE) * 0.4
        audio = np.concatenate([np.concatenate([beep, audiogen.silence(0.4, RATE)])] * 7)
    events = run(runtime, audio.astype(np.float32))
    assert not [e for e in events if isinstance(e, (FinalSentence, Partial))], events


def test_max_sentence_length_cuts(runtime, tmp_path):
    text = ("the quick brown fox jumps over the lazy dog and then runs across the wide green "
            "field while the farmer watches from the old wooden fence near the quiet river bank")
    audio = speech(tmp_path, text)
    events = run(runtime, audio, max_sentence_ms=4000, max_sentence_silence_ms=3000)
    finals = [e for e in events if isinstance(e, FinalSentence)]
    assert len(finals) >= 2
    for f in finals:
        assert f.end_time - f.begin_time <= 4000 + 64
    assert [f.sentence_id for f in finals] == list(range(1, len(finals) + 1))
    for a, b in zip(finals, finals[1:]):
        assert a.end_time <= b.begin_time


def test_option_limits_and_misuse(runtime):
    with pytest.raises(SessionError, match="between 200 and 6000"):
        SessionOptions(max_sentence_silence_ms=100)
    s = RecognitionSession(runtime.engine, runtime.vad, SessionOptions(max_buffered_audio_ms=1000))
    s.accept_waveform(np.zeros(8000, np.float32))
    with pytest.raises(Overloaded, match="waiting for recognition"):
        s.accept_waveform(np.zeros(16000, np.float32))
    s.input_finished()
    with pytest.raises(SessionError, match="after the end of input"):
        s.accept_waveform(np.zeros(160, np.float32))


def test_first_partial_comes_early(runtime, two_sentences):
    """The first partial of each sentence covers ~``first_partial_ms`` of speech, not a whole
    partial interval: callers see their first words while they speak (audio time, so exact)."""
    def first_partials(**opts):
        events = run(runtime, two_sentences, partial_interval_ms=800, **opts)
        firsts: dict[int, Partial] = {}
        for e in events:
            if isinstance(e, Partial):
                firsts.setdefault(e.sentence_id, e)
        starts = {e.sentence_id: e.begin_time for e in events if isinstance(e, SpeechStarted)}
        return {sid: p.end_time - starts[sid] for sid, p in firsts.items()}

    early = first_partials(first_partial_ms=300)
    late = first_partials(first_partial_ms=0)
    assert len(early) == 2 and len(late) == 2, (early, late)
    # begin_time includes the 200 ms pre-roll and the onset frame; chunks are 100 ms
    assert all(d <= 300 + 232 + 100 for d in early.values()), early
    assert all(d >= 800 for d in late.values()), late
