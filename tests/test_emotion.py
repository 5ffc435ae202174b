"""Emotion from text valence and prosodic arousal."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import wave

import numpy as np
import pytest
from callscribe.errors import ConfigurationError
from callscribe.recognition.emotion import (
    LABELS,
    EmotionEstimator,
    TextProsodyEmotion,
    arousal_from_prosody,
    available_emotion_estimators,
    make_emotion_estimator,
    measure_prosody,
    register_emotion_estimator,
    text_valence,
)
from callscribe.recognition.events import Emotion

SR = 16000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")


def espeak(text: str, voice: str, amplitude: int, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-a", str(amplitude), "-s", str(speed),
                          "-p", str(pitch), "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def tone(f0: np.ndarray | float, seconds: float, amp: float, sr: int = SR) -> np.ndarray:
    """A voiced-like harmonic signal following the F0 contour ``f0`` (Hz)."""
    n = int(seconds * sr)
    f = np.broadcast_to(np.asarray(f0, dtype=float), (n,)) if np.ndim(f0) == 0 else f0
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


@pytest.fixture(scope="module")
def est() -> TextProsodyEmotion:
    return TextProsodyEmotion()


# ----------------------------------------------------------------------------- text polarity


@pytest.mark.parametrize("text, language, polarity", [
    ("Thank you so much, you've been incredibly helpful.", "en", "positive"),
    ("Great, everything works perfectly now, I'm really happy.", "en-US", "positive"),
    ("This is ridiculous, you charged me twice and nobody has called me back.", "en", "negative"),
    ("I'm very disappointed, the internet keeps dropping every night.", "en", "negative"),
    ("Could you please help me update the address on my account?", "en", "neutral"),
    ("I'd like to check my balance.", "en", "neutral"),
    ("非常感谢，你们的服务很周到。", "zh", "positive"),
    ("问题解决了，太好了，谢谢！", "zh-CN", "positive"),
    ("你们的服务太差了，我要投诉！", "zh", "negative"),
    ("网络老是断，根本没法用，太失望了。", "zh", "negative"),
    ("我对账单不满意。", "zh", "negative"),
    ("师傅不专业，也不热情。", "zh", "negative"),  # positive words negated
    ("我想查询一下我的账户余额。", "zh", "neutral"),
    ("请问这个月的账单什么时候出来？", "zh", "neutral"),
    ("麻烦把发票发到我的邮箱。", None, "neutral"),  # 麻烦 "would you mind", not trouble
])
def test_text_polarity(est: TextProsodyEmotion, text: str, language: str | None,
                       polarity: str) -> None:
    e = est.estimate(text, language, None)
    assert e.polarity == polarity, (text, text_valence(text, language))
    assert e.label in LABELS and 0.0 <= e.confidence <= 1.0


def test_other_languages_fall_back_to_neutral(est: TextProsodyEmotion) -> None:
    e = est.estimate("Das ist eine Katastrophe, ich bin wütend!", "de", None)
    assert e.polarity == "neutral" and e.source == "text:none"


def test_source_names_what_was_used(est: TextProsodyEmotion) -> None:
    audio = tone(150.0, 1.0, 0.3)
    assert est.estimate("thanks", "en", None).source == "text:vader"
    assert est.estimate("thanks", "en", audio).source == "text:vader+prosody"
    assert est.estimate("谢谢", "zh", audio).source == "text:lexicon+prosody"
    silence = np.zeros(SR, dtype=np.float32)
    assert est.estimate("thanks", "en", silence).source == "text:vader"


# ----------------------------------------------------------------------------- prosody


@pytest.mark.parametrize("f0", [90.0, 150.0, 220.0, 330.0])
def test_f0_tracker_on_tones(f0: float) -> None:
    feats = measure_prosody(tone(f0, 1.5, 0.3), SR)
    assert feats is not None and feats.f0_hz == pytest.approx(f0, rel=0.03)
    assert feats.f0_range_st < 0.5


def test_f0_range_follows_the_contour() -> None:
    t = np.arange(int(2.0 * SR)) / SR
    contour = 160.0 * 2 ** (5 * np.sin(2 * np.pi * 1.0 * t) / 12)  # ±5 semitones
    feats = measure_prosody(tone(contour, 2.0, 0.3), SR)
    assert 7.0 < feats.f0_range_st < 11.0


def test_lively_tone_has_higher_arousal_than_flat_quiet_tone() -> None:
    t = np.arange(int(3.0 * SR)) / SR
    lively = tone(220.0 * 2 ** (6 * np.sin(2 * np.pi * 1.5 * t) / 12), 3.0, 0.5)
    flat = tone(100.0, 3.0, 0.02)
    a_lively = arousal_from_prosody(measure_prosody(lively, SR))
    a_flat = arousal_from_prosody(measure_prosody(flat, SR))
    assert a_lively > 0.3 and a_flat < -0.3


def test_sample_rates_and_int16(est: TextProsodyEmotion) -> None:
    x = tone(200.0, 1.0, 0.3, sr=8000)
    assert measure_prosody(x, 8000).f0_hz == pytest.approx(200.0, rel=0.03)
    y = (tone(200.0, 1.0, 0.3, sr=22050) * 32767).astype(np.int16)
    assert measure_prosody(y, 22050).f0_hz == pytest.approx(200.0, rel=0.03)
    assert measure_prosody(np.zeros(100, np.float32), SR) is None


@needs_espeak
@pytest.mark.parametrize("voice, text", [
    ("en-us", "I have been waiting for an hour and nobody has fixed my connection."),
    ("cmn", "我等了一个小时，还是没有人来修我的网络。"),
])
def test_loud_fast_high_speech_is_more_aroused(est: TextProsodyEmotion, voice: str,
                                               text: str) -> None:
    hi, sr_hi = espeak(text, voice, 200, 220, 80)
    lo, sr_lo = espeak(text, voice, 60, 120, 20)
    f_hi, f_lo = measure_prosody(hi, sr_hi, text), measure_prosody(lo, sr_lo, text)
    assert f_hi.level_db > f_lo.level_db + 6
    assert f_hi.f0_hz > f_lo.f0_hz * 1.3
    assert f_hi.rate > f_lo.rate * 1.3
    assert arousal_from_prosody(f_hi) > arousal_from_prosody(f_lo) + 0.5
    if voice == "en-us":  # same negative words: high arousal reads angry, low reads sad
        assert est.estimate(text, "en", hi, sr_hi).label == "angry"
        assert est.estimate(text, "en", lo, sr_lo).label == "sad"


def test_labels_from_valence_and_arousal(est: TextProsodyEmotion) -> None:
    loud = tone(220.0 * 2 ** (6 * np.sin(2 * np.pi * 1.5 * np.arange(3 * SR) / SR) / 12),
                3.0, 0.5)
    quiet = tone(95.0, 3.0, 0.02)
    assert est.estimate("Your service is awful and I'm fed up.", "en", loud).label == "angry"
    assert est.estimate("Your service is awful and I'm fed up.", "en", quiet).label == "sad"
    assert est.estimate("Wow, that's amazing news!", "en", loud).label == "surprised"
    assert est.estimate("That's lovely, thank you.", "en", quiet).label == "happy"
    assert est.estimate("The food was rotten and disgusting.", "en", quiet).label == "disgusted"
    assert est.estimate("I'm scared someone stole my card, this is bad.", "en",
                        quiet).label == "fearful"
    assert est.estimate("What is my balance?", "en", loud).label == "neutral"


def test_deterministic(est: TextProsodyEmotion) -> None:
    audio = tone(180.0, 2.0, 0.2)
    a = est.estimate("I'm not happy with this bill.", "en", audio)
    b = make_emotion_estimator().estimate("I'm not happy with this bill.", "en", audio.copy())
    assert a == b


def test_cheap_enough(est: TextProsodyEmotion) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(5 * SR) / SR
    audio = tone(140 * 2 ** (3 * np.sin(2 * np.pi * 0.7 * t) / 12), 5.0, 0.2)
    audio += rng.normal(0, 0.003, audio.shape).astype(np.float32)
    text = "我想问一下为什么这个月的账单多扣了五十块钱，太不合理了。"
    est.estimate(text, "zh", audio)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        est.estimate(text, "zh", audio)
        times.append(time.perf_counter() - t0)
    # budget is ~5 ms; a generous bound so a busy shared CI machine does not flake
    assert float(np.median(times)) < 0.05


# ----------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert isinstance(make_emotion_estimator(), EmotionEstimator)
    assert isinstance(make_emotion_estimator("text+prosody"), TextProsodyEmotion)
    with pytest.raises(ConfigurationError):
        make_emotion_estimator("no-such-model")

    class Fixed:
        def __init__(self, label: str = "happy") -> None:
            self.label = label

        def estimate(self, text, language, audio, sample_rate=16000) -> Emotion:
            return Emotion("positive", 1.0, self.label, "test:fixed")

    register_emotion_estimator("test-fixed", Fixed)
    assert "test-fixed" in available_emotion_estimators()
    assert make_emotion_estimator("test-fixed", label="surprised").estimate(
        "x", None, None).label == "surprised"
