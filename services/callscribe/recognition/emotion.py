"""Emotion of a final sentence from its text (valence) and its audio (arousal).

Valence: VADER for English (with call-centre adjustments: service words such as "please",
"help", "support" carry no sentiment; complaint phrases such as "charged me twice" do),
for Chinese a call-centre lexicon with negation and intensifiers blended with SnowNLP (SnowNLP
alone calls most neutral account questions negative, so it only scales a lexicon verdict
by ±20%);
other languages are neutral.  Arousal: prosody measured on the sentence audio (RMS level and
range, F0 level and range from a vectorised YIN tracker, speaking rate) plus a little from the
text ("!", intensifiers).
(valence, arousal) and a few cue words map to the seven labels.

Deterministic; no model inference.  Callers run it in a worker thread.  More estimators plug
in through :func:`register_emotion_estimator` / :func:`make_emotion_estimator`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from callscribe.errors import ConfigurationError
from callscribe.recognition.events import Emotion
from callscribe.recognition.textnorm import base_language

__all__ = [
    "LABELS",
    "POLARITY_THRESHOLD",
    "EmotionEstimator",
    "ProsodyFeatures",
    "TextProsodyEmotion",
    "arousal_from_prosody",
    "available_emotion_estimators",
    "make_emotion_estimator",
    "measure_prosody",
    "register_emotion_estimator",
    "text_valence",
]

LABELS = ("surprised", "neutral", "happy", "sad", "disgusted", "angry", "fearful")
#: |valence| at or above this is positive / negative
POLARITY_THRESHOLD = 0.25


@runtime_checkable
class EmotionEstimator(Protocol):
    def estimate(self, text: str, language: str | None, audio: np.ndarray | None,
                 sample_rate: int = 16000) -> Emotion: ...


# ------------------------------------------------------------------------------ prosody

_SR = 8000  # analysis rate: F0 and energy need no more
_FRAME, _HOP = 200, 80  # energy: 25 ms window, 10 ms hop
_F0_WIN, _F0_EVERY = 160, 2  # F0: 20 ms integration window, every 2nd active energy frame
_F0_MIN, _F0_MAX = 60.0, 450.0
_YIN_THRESHOLD = 0.15


@dataclass(frozen=True, slots=True)
class ProsodyFeatures:
    speech_s: float  # seconds of active (above-noise) frames
    level_db: float  # median active-frame RMS, dBFS
    level_range_db: float  # p90 - p10 of active-frame RMS
    f0_hz: float | None  # median F0 of voiced frames
    f0_range_st: float | None  # p90 - p10 of F0 in semitones
    voiced_fraction: float
    rate: float | None  # syllables per second of active speech (from the text)


def _mono_float(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim > 1:
        x = x.mean(axis=1 if x.shape[1] < x.shape[0] else 0)
    if x.dtype.kind in "iu":
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    return np.ascontiguousarray(x, dtype=np.float32)


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == _SR:
        return x
    if sr % _SR == 0:  # 16 kHz, 48 kHz: box filter then decimate
        k = sr // _SR
        return x[: len(x) // k * k].reshape(-1, k).mean(axis=1)
    import soxr

    return soxr.resample(x, sr, _SR, quality="LQ").astype(np.float32)


def _yin(frames: np.ndarray) -> np.ndarray:
    """F0 (Hz, 0 where unvoiced) of each row of ``frames`` (len W + tau_max), YIN-style."""
    tau_min, tau_max = int(_SR / _F0_MAX), int(_SR / _F0_MIN)
    w = frames.shape[1] - tau_max
    nfft = 1 << int(np.ceil(np.log2(frames.shape[1] + w)))
    spec = np.fft.rfft(frames, nfft) * np.conj(np.fft.rfft(frames[:, :w], nfft))
    r = np.fft.irfft(spec, nfft)[:, : tau_max + 1]
    c = np.concatenate([np.zeros((len(frames), 1), np.float32),
                        np.cumsum(frames**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    e = c[:, taus + w] - c[:, taus]
    d = np.maximum(e[:, :1] + e - 2 * r, 0.0)
    cmnd = d[:, 1:] * taus[1:] / np.maximum(np.cumsum(d[:, 1:], axis=1), 1e-12)
    band = cmnd[:, tau_min - 1:]  # lags tau_min..tau_max
    below = band < _YIN_THRESHOLD
    has = below.any(axis=1)
    first = below.argmax(axis=1)
    cols = np.arange(band.shape[1])[None, :]
    # the dip is the run of lags below threshold starting at ``first``; take its minimum
    after = (cols >= first[:, None]) & ~below
    end = np.where(after.any(axis=1), after.argmax(axis=1), band.shape[1])
    inside = (cols >= first[:, None]) & (cols < end[:, None])
    t = np.argmin(np.where(inside, band, np.inf), axis=1)
    rows = np.arange(len(band))
    lo, hi = np.maximum(t - 1, 0), np.minimum(t + 1, band.shape[1] - 1)
    a, b, c3 = band[rows, lo], band[rows, t], band[rows, hi]
    den = a - 2 * b + c3
    shift = np.where((den > 0) & (lo < t) & (hi > t), 0.5 * (a - c3) / np.where(den > 0, den, 1),
                     0.0)
    return np.where(has, _SR / (t + tau_min + shift), 0.0)


def _syllables(text: str, language: str | None) -> int:
    cjk = len(re.findall(r"[\u3400-\u9fff]", text))
    vowels = 0
    for word in re.findall(r"[A-Za-z']+", text):
        groups = len(re.findall(r"[aeiouy]+", word.lower()))
        if word.lower().endswith("e") and groups > 1 and not word.lower().endswith("le"):
            groups -= 1
        vowels += max(1, groups)
    digits = len(re.findall(r"\d", text)) * (1 if base_language(language, text) == "zh" else 2)
    return cjk + vowels + digits


def measure_prosody(audio: np.ndarray, sample_rate: int = 16000, text: str | None = None,
                    language: str | None = None) -> ProsodyFeatures | None:
    """Energy, F0 and rate of one sentence; None when there is no usable speech."""
    x = _resample(_mono_float(audio), int(sample_rate))
    if len(x) < _FRAME * 3:
        return None
    x = x - float(x.mean())
    n = 1 + (len(x) - _FRAME) // _HOP
    c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    pos = _HOP * np.arange(n)
    db = 10 * np.log10((c[pos + _FRAME] - c[pos]) / _FRAME + 1e-12)
    active = db > max(-55.0, float(np.percentile(db, 95)) - 30.0)
    if active.sum() < 5:
        return None
    act_db = db[active]
    span = _F0_WIN + int(_SR / _F0_MIN)
    starts = _HOP * np.nonzero(active)[0][::_F0_EVERY]
    starts = starts[starts + span <= len(x)]
    f0 = _yin(x[starts[:, None] + np.arange(span)[None, :]]) if len(starts) else np.zeros(0)
    voiced = f0[(f0 >= _F0_MIN) & (f0 <= _F0_MAX)]
    f0_med = f0_rng = None
    if len(voiced) >= 5:
        st = 12 * np.log2(voiced / 100.0)
        med = float(np.median(st))
        st = st[np.abs(st - med) < 9]  # drop octave errors
        f0_med = float(100.0 * 2 ** (np.median(st) / 12))
        f0_rng = float(np.percentile(st, 90) - np.percentile(st, 10))
    speech_s = float(active.sum() * _HOP / _SR)
    syl = _syllables(text, language) if text else 0
    return ProsodyFeatures(
        speech_s=speech_s, level_db=float(np.median(act_db)),
        level_range_db=float(np.percentile(act_db, 90) - np.percentile(act_db, 10)),
        f0_hz=f0_med, f0_range_st=f0_rng,
        voiced_fraction=float(len(voiced) / max(1, len(starts))),
        rate=(syl / speech_s) if syl and speech_s > 0.3 else None)


def arousal_from_prosody(f: ProsodyFeatures) -> float:
    """Arousal in [-1, 1], 0 for typical conversational speech."""
    terms = [(0.35, (f.level_db + 24.0) / 8.0), (0.10, (f.level_range_db - 18.0) / 8.0)]
    if f.f0_hz is not None:
        terms.append((0.20, (12 * math.log2(f.f0_hz / 165.0)) / 5.0))
        terms.append((0.25, ((f.f0_range_st or 0.0) - 5.0) / 3.0))
    if f.rate is not None:
        terms.append((0.25, (f.rate - 4.5) / 1.5))
    z = sum(w * max(-3.0, min(3.0, v)) for w, v in terms) / sum(w for w, _ in terms)
    return math.tanh(1.5 * z)


# ------------------------------------------------------------------------------ English

_EN_NEUTRAL_WORDS = (
    "like", "please", "help", "want", "ok", "okay", "yes", "sure", "yeah", "no", "support",
    "care", "interest", "interested", "credit", "free", "save", "share", "trust", "well",
    "true", "chance", "dear", "fine", "pretty", "matter",
)
_EN_EXTRA_WORDS = {"joke": -1.5, "patience": 1.5, "patient": 1.0, "sorted": 1.0, "fixed": 1.0,
                   "crashed": -1.7, "crashing": -1.7, "outage": -1.5, "overcharged": -2.2,
                   "unreliable": -1.8, "nightmare": -2.5, "rip-off": -2.5, "ripoff": -2.5}
_EN_PHRASES = [(re.compile(p), w) for p, w in [
    (r"\b(second|third|fourth|fifth|\d+(st|nd|rd|th)) time\b", -0.35),
    (r"\bcharged (me )?(twice|double|again|extra|for nothing)\b|\bdouble[- ]charged\b", -0.5),
    ((r"\bnever (showed|turned|arrived|came|received|got|called|answered|heard|fixed|"
      r"worked|responded|replied)\b"), -0.5),
    ((r"\b(keeps?|kept) (dropping|crashing|failing|cutting|disconnecting|freezing|"
      r"happening|charging)\b"), -0.5),
    ((r"\b(not|isn'?t|doesn'?t|don'?t|won'?t|can'?t|cannot|didn'?t) (work|working|load|"
      r"connect|log ?in|get through|use)\b"), -0.45),
    ((r"\b(nobody|no one|no-one) (has |ever |even )?(called|answered|helped|fixed|came|showed|"
      r"responded|replied|got back|picked up|bothered)\b"), -0.5),
    ((r"\bstill (took|taking|charging|charged|billing|billed|waiting|not|no|haven'?t|"
      r"hasn'?t|broken|down)\b"), -0.4),
    ((r"\b(on hold|waiting) for (over |more than )?(an?|\d+|one|two|three|forty|thirty|twenty)"
      r"[\w ]{0,10}(minutes?|hours?|days?|weeks?)\b"), -0.4),
    (r"\b(my )?money back\b|\bwant (a|my) refund\b", -0.3),
    (r"\b(speak|talk) to (a|your) (manager|supervisor)\b", -0.4),
    (r"\b(waste of (time|money)|fed up|sick of|tired of|had enough)\b", -0.5),
    (r"\b(don'?t|do not|didn'?t) recogni[sz]e\b|\bsomeone used my\b", -0.4),
    (r"\b(lost|deleted|wiped) (all|everything)\b", -0.4),
    (r"\bwrong (bill|charge|amount|address|item|order)\b", -0.4),
    (r"\b(took|taking|take) (the )?(money|payment)\b", -0.25),
    (r"\bexpected (much |a lot |far )?(better|more)\b", -0.5),
    ((r"\b(solves?|solved|fixes|fixed|sorts?|sorted) (my|the|it|this|that)\b|"
      r"\bworks? (now|perfectly|great|fine|well)\b"), 0.35),
]]

def make_vader():
    """VADER with the call-centre adjustments (a fresh analyzer; the estimator keeps one)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    a = SentimentIntensityAnalyzer()
    for w in _EN_NEUTRAL_WORDS:
        a.lexicon.pop(w, None)
    a.lexicon.update(_EN_EXTRA_WORDS)
    return a


def _english_valence(text: str, vader) -> float:
    compound = vader.polarity_scores(text)["compound"]
    low = text.lower()
    extra = sum(w for rx, w in _EN_PHRASES if rx.search(low))
    return max(-1.0, min(1.0, compound + extra))


# ------------------------------------------------------------------------------ Chinese

_ZH_LEXICON: dict[str, float] = {
    # positive
    "谢谢": 1.0, "感谢": 1.2, "多谢": 1.0, "谢了": 0.8, "满意": 1.0, "很好": 0.8, "太好了": 1.2,
    "非常好": 1.0, "真好": 0.9, "不错": 0.8, "挺好": 0.8, "专业": 0.8, "周到": 0.8, "耐心": 0.6,
    "热情": 0.8, "及时": 0.6, "解决了": 0.8, "搞定": 0.8, "开心": 1.0, "高兴": 1.0, "喜欢": 0.9,
    "方便": 0.6, "划算": 0.8, "实惠": 0.8, "推荐": 0.6, "点赞": 1.0, "棒": 1.0, "完美": 1.2,
    "顺利": 0.6, "愉快": 0.8, "放心": 0.6, "辛苦了": 0.6, "帮了大忙": 1.2, "给力": 1.0,
    "惊喜": 1.0, "好用": 0.8, "快多了": 0.6, "这么快": 0.6, "没问题": 0.3, "优惠": 0.4, "贴心": 0.9,
    # negative
    "投诉": -1.2, "太差": -1.2, "很差": -1.0, "真差": -1.0, "差劲": -1.2, "失望": -1.2,
    "生气": -1.2, "气人": -1.2, "气死": -1.5, "愤怒": -1.5, "垃圾": -1.5, "骗": -1.2,
    "坑人": -1.0, "乱扣": -1.2, "多扣": -1.0, "扣错": -1.0, "盗刷": -1.2, "被盗": -1.2,
    "没解决": -1.0, "没有解决": -1.0, "还没": -0.5, "还是没": -0.7, "一直没": -0.8, "白等": -1.0,
    "没人": -0.8, "没法用": -1.0, "不能用": -1.0, "用不了": -1.0, "打不通": -1.0, "断网": -0.8,
    "老是": -0.5, "离谱": -1.2, "不合理": -1.0, "不满意": -1.2, "不满": -1.0, "不耐烦": -1.0,
    "难用": -1.0, "太慢": -0.8, "恶心": -1.3, "烦": -0.8, "故障": -0.6, "坏了": -0.8,
    "坏的": -0.8, "损坏": -0.8, "糟糕": -1.2, "难过": -1.0, "伤心": -1.0, "担心": -0.8,
    "害怕": -1.0, "着急": -0.6, "赔偿": -0.6, "欺骗": -1.3, "不靠谱": -1.0, "忽悠": -1.0,
    "敷衍": -1.0, "推脱": -0.8, "受不了": -1.2, "无语": -1.0, "郁闷": -1.0, "崩溃": -1.0,
    "太贵": -0.8, "什么服务": -0.8, "退回来": -0.5, "退钱": -0.6, "根本": -0.4,
    # neutral despite their parts
    "麻烦": 0.0, "差不多": 0.0, "好的": 0.0, "不好意思": 0.0, "好像": 0.0, "好吗": 0.0,
}
_ZH_MAXLEN = max(map(len, _ZH_LEXICON))
_ZH_NEGATORS = ("没有", "不", "没", "别")
_ZH_INTENSIFIERS = ("非常", "特别", "真的", "实在", "很", "太", "真", "超", "好")


def _zh_lexicon_score(text: str) -> tuple[float, int]:
    """Sum of lexicon weights (negation flips, intensifiers scale) and the number of hits."""
    total, hits, i = 0.0, 0, 0
    while i < len(text):
        for n in range(min(_ZH_MAXLEN, len(text) - i), 0, -1):
            w = _ZH_LEXICON.get(text[i:i + n])
            if w is not None:
                break
        else:
            i += 1
            continue
        if w:
            before = text[max(0, i - 3):i]
            if w > 0 and any(before.endswith(g) or before[:-1].endswith(g)
                             for g in _ZH_NEGATORS):
                w = -0.8 * w
            if any(before.endswith(g) for g in _ZH_INTENSIFIERS):
                w *= 1.3
            total += w
            hits += 1
        i += n
    return total, hits


def _chinese_valence(text: str) -> float:
    """Call-centre lexicon with negation and intensifiers.  (SnowNLP was tried: trained on
    product reviews it called most neutral account questions negative, and its model costs
    ~400 MiB of RSS per process, so it is not used.)"""
    total, hits = _zh_lexicon_score(text)
    return math.tanh(total / 1.5) if hits else 0.0


def text_valence(text: str, language: str | None, vader=None) -> tuple[float, str]:
    """Valence in [-1, 1] and the name of what produced it (vader | lexicon | none)."""
    lang = base_language(language, text)
    if not text.strip():
        return 0.0, "none"
    if lang == "en":
        return _english_valence(text, vader or make_vader()), "vader"
    if lang == "zh":
        return _chinese_valence(text), "lexicon"
    return 0.0, "none"


# ------------------------------------------------------------------------------ cues → label

_CUES = {
    "surprised": re.compile(r"\b(wow|whoa|no way|oh my|can'?t believe|unbelievable|surpris\w*|"
                            r"didn'?t expect|did not expect|really\?)|哇|没想到|居然|竟然|真的吗|"
                            r"天哪|不会吧|想不到", re.IGNORECASE),
    "disgusted": re.compile(r"\b(disgust\w*|gross|rotten|revolting|nasty|sickening|filthy|"
                            r"vile)\b|恶心|恶臭|令人作呕|脏死", re.IGNORECASE),
    "fearful": re.compile(r"\b(worried|worry|scared|afraid|frightened|nervous|anxious|panic\w*|"
                          r"fraud|stolen|hacked|someone used)\b|担心|害怕|盗刷|被盗|紧张|恐怕|"
                          r"吓|慌", re.IGNORECASE),
    "angry": re.compile(r"\b(angry|furious|ridiculous|unacceptable|outrageous|manager|"
                        r"supervisor|right now|immediately|joke|fed up|sick of)\b|投诉|气人|"
                        r"气死|愤怒|生气|垃圾|骗|离谱|赶紧|什么服务", re.IGNORECASE),
    "sad": re.compile(r"\b(disappoint\w*|sad|tired of|upset|unfortunately|hopeless|"
                      r"give up|lost)\b|失望|难过|伤心|郁闷|白等|算了|无奈", re.IGNORECASE),
}


def _text_arousal(text: str) -> float:
    a = 0.25 * min(2, text.count("!") + text.count("！"))
    letters = re.findall(r"[A-Za-z]{3,}", text)
    if letters and sum(w.isupper() for w in letters) / len(letters) > 0.5:
        a += 0.3
    if re.search(r"\b(very|so|really|absolutely|totally)\b|非常|特别|太|根本", text, re.IGNORECASE):
        a += 0.1
    return a


class TextProsodyEmotion:
    """Valence from text, arousal from prosody; see the module doc."""

    name = "text+prosody"

    def __init__(self, polarity_threshold: float = POLARITY_THRESHOLD) -> None:
        self.polarity_threshold = polarity_threshold
        self._vader = make_vader()

    def features(self, text: str, audio: np.ndarray | None, sample_rate: int,
                 language: str | None) -> ProsodyFeatures | None:
        if audio is None:
            return None
        return measure_prosody(audio, sample_rate, text=text, language=language)

    def estimate(self, text: str, language: str | None, audio: np.ndarray | None,
                 sample_rate: int = 16000) -> Emotion:
        valence, text_src = text_valence(text or "", language, self._vader)
        feats = self.features(text or "", audio, sample_rate, language)
        prosody = arousal_from_prosody(feats) if feats is not None else None
        arousal = max(-1.0, min(1.0, (prosody or 0.0) + _text_arousal(text or "")))
        thr = self.polarity_threshold
        if valence >= thr:
            polarity = "positive"
        elif valence <= -thr:
            polarity = "negative"
        else:
            polarity = "neutral"
        label, label_conf = self._label(polarity, arousal, text or "", prosody is not None)
        if polarity == "neutral":
            # "no sentiment found" is only as strong as the text that was scored: a short or
            # unscored (language without a lexicon) sentence is a weak neutral
            units = len(re.findall(r"[A-Za-z']+|[\u4e00-\u9fff]", text or ""))  # words, hanzi
            evidence = 0.0 if text_src == "none" else min(1.0, units / 10)
            pol_conf = 0.5 + 0.45 * (1.0 - abs(valence) / thr) * (0.4 + 0.6 * evidence)
        else:
            pol_conf = 0.5 + 0.5 * min(1.0, (abs(valence) - thr) / 0.5)
        source = f"text:{text_src}" + ("+prosody" if prosody is not None else "")
        return Emotion(polarity=polarity, confidence=round(pol_conf * label_conf, 3),
                       label=label, source=source)

    @staticmethod
    def _label(polarity: str, arousal: float, text: str, measured: bool) -> tuple[str, float]:
        cue = {k: bool(rx.search(text)) for k, rx in _CUES.items()}
        base = 1.0 if measured else 0.8
        if polarity == "negative":
            if cue["disgusted"]:
                return "disgusted", base
            if cue["fearful"] and not cue["angry"]:
                return "fearful", base
            margin = arousal + 0.5 * cue["angry"] - 0.5 * cue["sad"]
            certainty = 0.6 + 0.4 * min(1.0, abs(margin) / 0.5)
            return ("angry" if margin > 0 else "sad"), base * certainty
        if polarity == "positive":
            if cue["surprised"] and arousal > -0.2:
                return "surprised", base
            return "happy", base
        if cue["surprised"] and arousal > 0.2:
            return "surprised", base * 0.8
        # neutral is surest for calm speech; raised (or flat) arousal makes it less so
        return "neutral", base * (1.0 - 0.3 * min(1.0, abs(arousal)))


# ------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, Callable[..., EmotionEstimator]] = {"text+prosody": TextProsodyEmotion}


def register_emotion_estimator(name: str, factory: Callable[..., EmotionEstimator]) -> None:
    """Make ``factory(**kwargs)`` available as ``make_emotion_estimator(name, **kwargs)``
    (e.g. an acoustic model later); callers keep calling ``estimate``."""
    _REGISTRY[name] = factory


def available_emotion_estimators() -> list[str]:
    return sorted(_REGISTRY)


def make_emotion_estimator(name: str = "text+prosody", **kwargs) -> EmotionEstimator:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown emotion estimator {name!r}; available: "
            f"{', '.join(available_emotion_estimators())}") from None
    return factory(**kwargs)
