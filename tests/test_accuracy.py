"""Whole-file accuracy for live finals and files: left context, beam search, fallbacks, the
repetition guard, and `transcribe` decoding a file whole (real model, real recordings)."""

from __future__ import annotations

import numpy as np
import pytest

from callscribe.asr.engine import DecodeRequest
from callscribe.asr.whisper import collapse_repeats
from callscribe.audio import decode_bytes
from callscribe.benchmark.metrics import normalize_en
from callscribe.recognition.runtime import StreamOptions
from callscribe.transcribe import transcribe_file, transcribe_live

JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


# --- the repetition guard (pure) ------------------------------------------------------------

def keys(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("text, kept", [
    # a 5-word phrase looped three times, with a cut-off fourth copy
    ("and so my fellow americans and so my fellow americans and so my fellow americans and so",
     "and so my fellow americans"),
    ("hello world this is a test", "hello world this is a test"),
    # speech repeats short things: kept
    ("no no no", "no no no"),
    ("very very good", "very very good"),
    ("thank you thank you", "thank you thank you"),
    # five times is a loop, whatever the unit
    ("5 5 5 5 5 5 5", "5"),
    # a two-token unit three times is a loop; one word three times may be speech
    ("so see you see you see you we", "so see you we"),
    ("so today today today we", "so today today today we"),
])
def test_collapse_repeats_words(text, kept):
    k = keys(text)
    assert " ".join(k[i] for i in collapse_repeats(k)) == kept


def test_collapse_repeats_cjk():
    # the meeting clip's "所以今天今天今天跟你说完了": a two-character unit three times
    k = ["所以", "今天", "今天", "今天", "跟", "你", "说", "完", "了"]
    assert "".join(k[i] for i in collapse_repeats(k)) == "所以今天跟你说完了"
    k = ["谢谢", "谢谢"]  # twice is speech
    assert collapse_repeats(k) == [0, 1]


# --- the engine: left context with a forced prefix ------------------------------------------

@pytest.fixture(scope="module")
def jfk(shared_audio):
    return decode_bytes((shared_audio / "en_jfk_16k.wav").read_bytes(), "wav")[0].reshape(-1)


def test_context_prefix_decodes_only_the_new_sentence(runtime, jfk):
    eng = runtime.engine
    # "And so my fellow Americans," ends near 3.2 s; "ask not" follows after a pause
    cut = int(3.2 * 16000)
    first = eng.decode(DecodeRequest(audio=jfk[:cut], language_hints=("en",)))
    assert normalize_en(first.text) == "and so my fellow americans".split(), first.text
    second = jfk[cut:int(5.4 * 16000)]
    res = eng.decode(DecodeRequest(audio=second, language_hints=("en",),
                                   context_audio=jfk[:cut], context_text=first.text,
                                   context_language="en"))
    assert normalize_en(res.text) == ["ask", "not"], res.text
    assert res.stats["context_s"] > 3.0
    # word times are relative to the new sentence's audio, not to the context
    assert res.words and all(0 <= w.start <= w.end <= len(second) / 16000 + 0.05
                             for w in res.words), res.words
    assert [normalize_en(w.text) for w in res.words] == [["ask"], ["not"]]


def test_context_in_another_language_is_not_used(runtime, jfk):
    """The previous sentence's language must not decide this one's (a call may switch)."""
    res = runtime.engine.decode(DecodeRequest(
        audio=jfk[int(3.2 * 16000):], context_audio=jfk[:int(3.2 * 16000)],
        context_text="Und so, meine amerikanischen Mitbürger,", context_language="de"))
    assert res.language == "en" and res.stats["context_s"] == 0.0
    assert "ask not" in res.text.lower()


# --- the live path ---------------------------------------------------------------------------

def test_live_short_sentence_after_a_pause_gets_its_context(runtime, shared_audio):
    """JFK at 500 ms end-of-sentence silence is cut into short sentences; "Ask not." alone
    was decoded "As not." (greedy, no left context)."""
    results = transcribe_live(runtime, shared_audio / "en_jfk_16k.wav",
                              StreamOptions(partials=True, max_sentence_silence_ms=500,
                                            language_hints=("en",)))
    assert len(results) >= 3  # really cut into short sentences
    words = normalize_en(" ".join(s.text for _, s in results))
    assert words == JFK.split(), words
    # sentence times stay on the stream's clock and in order
    ends = [(s.begin_time, s.end_time) for _, s in results]
    assert all(b < e for b, e in ends) and ends == sorted(ends)
    for _, s in results:
        assert all(s.begin_time <= w.begin_time <= w.end_time <= s.end_time for w in s.words)


def test_partials_have_no_repetition_loops(runtime, shared_audio):
    from callscribe.recognition.events import Partial

    audio = decode_bytes((shared_audio / "en_jfk_16k.wav").read_bytes(), "wav")[0].reshape(-1)
    session = runtime.new_session(StreamOptions(partials=True, language_hints=("en",)))
    partials = []
    for off in range(0, len(audio), 1600):
        session.accept_waveform(audio[off:off + 1600])
        partials += [e for e in session.process() if isinstance(e, Partial)]
    session.input_finished()
    while session.has_work():
        session.process()
    assert partials
    for p in partials:
        w = normalize_en(p.text)
        assert " ".join(w).count("fellow americans") <= 1, p


# --- files are decoded whole -----------------------------------------------------------------

def test_transcribe_file_is_whole_file(runtime, shared_audio):
    results = transcribe_file(runtime, shared_audio / "en_jfk_16k.wav",
                              StreamOptions(partials=False))
    assert [normalize_en(s.text) for _, s in results] == [JFK.split()]
    (_, s), = results
    assert s.language == "en" and s.emotion is not None
    # the sentence ends where speech ends (10.36 s), not at the end of the file (11 s)
    assert s.words[-1].end_time == s.end_time < 10800
    assert s.words[0].begin_time == s.begin_time < 500


def test_transcribe_file_splits_sentences_and_languages(runtime, shared_audio):
    results = transcribe_file(runtime, shared_audio / "en_librispeech_1995-1837-0001.wav",
                              StreamOptions(partials=False))
    assert [s.text.split()[0] for _, s in results] == ["It", "It"]
    # "Mr." ends no sentence
    results = transcribe_file(runtime, shared_audio / "en_ps_librivox_0870.wav",
                              StreamOptions(partials=False))
    assert len(results) == 1 and results[0][1].text.startswith("And Mr. John Dashwood")
    mixed = transcribe_file(runtime, shared_audio / "en_de_multilingual.mp3",
                            StreamOptions(partials=False))
    langs = [s.language for _, s in mixed]
    assert langs[0] == "en" and langs[-1] == "de", langs


def test_transcribe_file_stereo_channels(runtime, shared_audio):
    results = transcribe_file(runtime, shared_audio / "en_stereo_diarization.wav",
                              StreamOptions(partials=False))
    by_channel = {ch: " ".join(s.text for c, s in results if c == ch).lower() for ch in (0, 1)}
    assert "wizard" in by_channel[0] and "horizon" not in by_channel[0]
    assert "horizon" in by_channel[1] and "wizard" not in by_channel[1]


def test_transcribe_mandarin_file(runtime, shared_audio):
    results = transcribe_file(runtime, shared_audio / "zh_funasr_sample.wav",
                              StreamOptions(partials=False))
    text = "".join(s.text for _, s in results)
    assert all(s.language == "zh" for _, s in results)
    assert "我想问" in text and "有房" in text, text
    assert np.all(np.diff([s.begin_time for _, s in results]) >= 0)
