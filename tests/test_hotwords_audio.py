"""Hotwords on real recordings: words the model gets wrong without the vocabulary and right with
it, and an unrelated vocabulary that leaves the English WER unchanged."""

from __future__ import annotations

import pytest

from callscribe.recognition.runtime import StreamOptions
from callscribe.recognition.vocabulary import Hotword
from callscribe.transcribe import transcribe_live
from callscribe.benchmark.metrics import error_rate, normalize_en

ENGLISH = ["en_jfk_16k.wav", "en_librispeech_1995-1837-0001.wav", "en_ps_librivox_0870.wav",
           "en_ps_librivox_0880.wav", "en_ps_librivox_0890.wav", "en_ldc93s1_16k.wav",
           "en_ps_goforward.raw"]

CASES = [
    ("en_ldc93s1_16k.wav", "en", [Hotword("dark suit", 4, "en"), Hotword("greasy", 4, "en"),
                                  Hotword("wash water", 4, "en")], ["wash water"]),
    ("zh_funasr_sample.wav", "zh", [Hotword("滨海新区", 4, "zh")], ["滨海新区"]),
    ("zh_aishell_BAC009S0724W0121.wav", "zh", [Hotword("房地产", 4, "zh"),
                                               Hotword("中介协会", 4, "zh")], ["房地产", "中介"]),
]


def text_of(runtime, path, hotwords=()) -> str:
    opts = StreamOptions(partials=False, hotwords=tuple(hotwords), sample_rate=16000)
    return " ".join(s.text for _, s in transcribe_live(runtime, path, opts))


@pytest.mark.parametrize("name,lang,vocab,expected", CASES, ids=[c[0] for c in CASES])
def test_vocabulary_fixes_words(runtime, shared_audio, manifest, name, lang, vocab, expected):
    ref = manifest[name]["transcript"]
    before = text_of(runtime, shared_audio / name)
    after = text_of(runtime, shared_audio / name, vocab)
    for term in expected:
        assert term not in before.lower(), f"the model already gets {term!r} right: {before}"
        assert term in after.lower(), (before, after)
    assert error_rate([(ref, after)], lang) < error_rate([(ref, before)], lang)


def test_unrelated_vocabulary_leaves_english_wer_unchanged(runtime, shared_audio, manifest):
    unrelated = [Hotword("Acme Telecom", 4, "en"), Hotword("broadband", 3, "en"),
                 Hotword("router reset", 3, "en"), Hotword("fibre upgrade", 2, "en"),
                 Hotword("Verizon", 5, "en"), Hotword("滨海新区", 4, "zh")]
    plain = [(manifest[f]["transcript"], text_of(runtime, shared_audio / f)) for f in ENGLISH]
    biased = [(manifest[f]["transcript"], text_of(runtime, shared_audio / f, unrelated))
              for f in ENGLISH]
    assert abs(error_rate(biased, "en") - error_rate(plain, "en")) <= 0.005
    assert [normalize_en(h) for _, h in biased] == [normalize_en(h) for _, h in plain]


def test_language_switch_is_labelled(runtime, shared_audio):
    results = transcribe_live(runtime, shared_audio / "en_de_multilingual.mp3",
                              StreamOptions(partials=False))
    langs = [s.language for _, s in results]
    assert langs[0] == "en" and langs[-1] == "de", langs
    # English first, then German, one switch
    switch = langs.index("de")
    assert set(langs[:switch]) == {"en"} and set(langs[switch:]) == {"de"}, langs
    english = " ".join(s.text for _, s in results[:switch]).lower()
    german = " ".join(s.text for _, s in results[switch:]).lower()
    assert "permission is hereby granted" in english and "software" in german


def test_language_hints_restrict_detection(runtime, shared_audio):
    results = transcribe_live(runtime, shared_audio / "en_de_multilingual.mp3",
                              StreamOptions(partials=False, language_hints=("en",)))
    assert {s.language for _, s in results} == {"en"}


def test_emotion_on_every_final(runtime, shared_audio):
    results = transcribe_live(runtime, shared_audio / "en_jfk_16k.wav", StreamOptions(partials=False))
    for _, s in results:
        e = s.emotion
        assert e is not None and e.polarity in {"positive", "negative", "neutral"}
        assert 0.0 <= e.confidence <= 1.0
        assert e.label in {"surprised", "neutral", "happy", "sad", "disgusted", "angry", "fearful"}
        assert "prosody" in e.source
