"""Call characteristics from talk segments, words, polarity and levels; pure functions.

Talk is measured from word timestamps: a sentence's words closer than ``SEGMENT_GAP_MS`` make
one talk segment (a sentence without words counts as one segment from its begin to its end).
With Whisper's word times this is within ~0.3 s of the audio.

* **non-talk**: the parts of ``0 .. duration`` where no channel talks; the longest one is
  reported with its times;
* **interruption**: a channel starts a talk segment while another channel is inside one, and
  both then talk for at least ``MIN_OVERLAP_MS``; who (``by``) interrupted whom (``of``),
  from the interrupter's start to the end of the overlap;
* **talk speed**: words (and characters, the measure for Chinese) per minute of talk;
* **loudness**: RMS over the 100 ms frames louder than ``AUDIBLE_DBFS`` (average) and the
  largest sample (peak), dBFS, accumulated as audio arrives (:func:`loudness_update`);
* **polarity by quarter**: the call's duration cut in four; each sentence's polarity score
  (+1, 0, -1) counts in the quarter of its middle; the trend compares the last quarter with
  the first.

The accumulators are plain lists (they live in the worker's JSON table record).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SEGMENT_GAP_MS = 300
MIN_OVERLAP_MS = 300
AUDIBLE_DBFS = -50.0
#: talk segments kept per channel; beyond it the closest neighbours are joined
MAX_SEGMENTS = 4000
#: polarity points kept per channel (one per sentence)
MAX_POLAR = 4000
MAX_INTERRUPTION_EVENTS = 1000
TREND_STEP = 0.25
_POLARITY_SCORE = {"positive": 1, "negative": -1, "neutral": 0}
_AUDIBLE_POWER = 10 ** (AUDIBLE_DBFS / 10)


# --- accumulation (per final, per chunk) ----------------------------------------------------


def sentence_segments(words: Iterable[tuple[int, int]], begin_ms: int, end_ms: int,
                      gap_ms: int = SEGMENT_GAP_MS) -> list[list[int]]:
    """Talk segments of one sentence from its words' (begin, end)."""
    spans = sorted((int(b), int(e)) for b, e in words if e >= b)
    if not spans:
        return [[int(begin_ms), int(end_ms)]] if end_ms > begin_ms else []
    out = [list(spans[0])]
    for b, e in spans[1:]:
        if b - out[-1][1] < gap_ms:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([b, e])
    return [s for s in out if s[1] > s[0]]


def add_segments(store: list[list[int]], new: Sequence[Sequence[int]],
                 max_n: int = MAX_SEGMENTS) -> None:
    """Merge ``new`` segments into the sorted ``store`` (in place), bounded to ``max_n``."""
    merged = sorted([list(s) for s in store] + [list(s) for s in new])
    out: list[list[int]] = []
    for b, e in merged:
        if out and b <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([b, e])
    while len(out) > max_n:  # join the two closest neighbours
        i = min(range(len(out) - 1), key=lambda k: out[k + 1][0] - out[k][1])
        out[i:i + 2] = [[out[i][0], out[i + 1][1]]]
    store[:] = out


def word_counts(words: Iterable[str]) -> tuple[int, int]:
    """(words, characters) of a sentence's word texts; a CJK character is a word."""
    n_words = n_chars = 0
    for w in words:
        chars = [c for c in w if c.isalnum()]
        if not chars:
            continue
        cjk = sum(1 for c in chars if "\u3400" <= c <= "\u9fff")
        n_words += cjk + (1 if len(chars) > cjk else 0)
        n_chars += len(chars)
    return n_words, n_chars


def add_polarity(store: list[list[int]], begin_ms: int, end_ms: int, polarity: str | None,
                 max_n: int = MAX_POLAR) -> None:
    if polarity in _POLARITY_SCORE and len(store) < max_n:
        store.append([(int(begin_ms) + int(end_ms)) // 2, _POLARITY_SCORE[polarity]])


def loudness_update(acc: list[float], pcm: np.ndarray, frame: int = 1600) -> None:
    """Add float PCM (-1..1, 16 kHz) to ``acc = [audible power sum, audible frames, peak]``.

    Frames of ``frame`` samples (100 ms); a last short piece of at least a quarter frame
    counts as a frame of its own."""
    if pcm.size == 0:
        return
    while len(acc) < 3:
        acc.append(0.0)
    x = np.asarray(pcm, np.float32).reshape(-1)
    acc[2] = max(float(acc[2]), float(x.max()), -float(x.min()))
    n = x.size // frame * frame
    if n:
        blocks = x[:n].reshape(-1, frame)
        power = np.einsum("ij,ij->i", blocks, blocks) / frame
        loud = power[power > _AUDIBLE_POWER]
        acc[0] = float(acc[0]) + float(loud.sum())
        acc[1] = float(acc[1]) + float(loud.size)
    rest = x[n:]
    if rest.size >= frame // 4:
        p = float(np.dot(rest, rest)) / rest.size
        if p > _AUDIBLE_POWER:
            acc[0] = float(acc[0]) + p
            acc[1] = float(acc[1]) + 1


def _db(x: float, k: float) -> float | None:
    return round(k * math.log10(x), 1) if x > 0 else None


def loudness_result(acc: Sequence[float] | None) -> dict[str, float | None] | None:
    if not acc or len(acc) < 3 or (acc[1] == 0 and acc[2] == 0):
        return None
    return {"average_dbfs": _db(acc[0] / acc[1], 10) if acc[1] else None,
            "peak_dbfs": _db(float(acc[2]), 20)}


# --- the call -------------------------------------------------------------------------------


def _total(segs: Iterable[Sequence[int]]) -> int:
    return sum(e - b for b, e in segs)


def union(*segment_lists: Sequence[Sequence[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    add_segments(out, [s for segs in segment_lists for s in segs], max_n=1 << 30)
    return out


def non_talk(segments: Sequence[Sequence[int]], duration_ms: int
             ) -> tuple[int, tuple[int, int] | None]:
    """(time nobody talks in 0..duration, the longest such gap) for the union ``segments``."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for b, e in segments:
        b, e = max(0, b), min(duration_ms, e)
        if b > pos:
            gaps.append((pos, b))
        pos = max(pos, e)
    if duration_ms > pos:
        gaps.append((pos, duration_ms))
    if not gaps:
        return 0, None
    longest = max(gaps, key=lambda g: (g[1] - g[0], -g[0]))
    return sum(e - b for b, e in gaps), longest


def interruptions(channels: dict[int, tuple[str, Sequence[Sequence[int]]]],
                  min_overlap_ms: int = MIN_OVERLAP_MS) -> list[dict[str, Any]]:
    """Every interruption, in time order (see the module docstring)."""
    out = []
    for by, (by_role, by_segs) in channels.items():
        for of, (of_role, of_segs) in channels.items():
            if by == of:
                continue
            j = 0
            for b, e in by_segs:
                while j < len(of_segs) and of_segs[j][1] <= b:
                    j += 1
                if j < len(of_segs) and of_segs[j][0] < b:
                    end = min(e, of_segs[j][1])
                    if end - b >= min_overlap_ms:
                        out.append({"by_channel": by, "by_role": by_role, "of_channel": of,
                                    "of_role": of_role, "begin_ms": int(b), "end_ms": int(end)})
    out.sort(key=lambda d: (d["begin_ms"], d["by_channel"]))
    return out


def quarters(points: Iterable[Sequence[int]], duration_ms: int) -> list[dict[str, Any]]:
    sums = [0.0] * 4
    counts = [0] * 4
    for mid, score in points:
        q = min(3, max(0, int(4 * mid / duration_ms))) if duration_ms > 0 else 0
        sums[q] += score
        counts[q] += 1
    out = []
    for s, n in zip(sums, counts):
        score = round(s / n, 3) if n else None
        pol = None if score is None else ("positive" if score > TREND_STEP / 2 else
                                          "negative" if score < -TREND_STEP / 2 else "neutral")
        out.append({"polarity": pol, "score": score, "sentences": n})
    return out


def trend(qs: Sequence[dict[str, Any]]) -> str | None:
    first, last = qs[0]["score"], qs[-1]["score"]
    if first is None or last is None:
        return None
    d = last - first
    return "improving" if d > TREND_STEP else "worsening" if d < -TREND_STEP else "steady"


def _per_minute(n: int, ms: int) -> float | None:
    return round(n * 60000 / ms, 1) if ms > 0 else None


def analyse_call(channels: dict[int, dict[str, Any]], duration_ms: int
                 ) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Per-channel and call analytics.

    ``channels``: channel -> ``{"role", "segments", "words", "chars", "polar", "loud"}`` (the
    accumulators above).  Returns ``({channel: analytics}, call analytics)`` as the
    CallSummary schema describes them.
    """
    segs = {ch: (c["role"], sorted(c.get("segments") or [])) for ch, c in channels.items()}
    events = interruptions(segs)
    per: dict[int, dict[str, Any]] = {}
    for ch, c in channels.items():
        talk = _total(segs[ch][1])
        qs = quarters(c.get("polar") or [], duration_ms)
        per[ch] = {
            "talk_ms": talk, "words": int(c.get("words") or 0),
            "chars": int(c.get("chars") or 0),
            "words_per_minute": _per_minute(int(c.get("words") or 0), talk),
            "chars_per_minute": _per_minute(int(c.get("chars") or 0), talk),
            "loudness": loudness_result(c.get("loud")),
            "interruptions": sum(1 for ev in events if ev["by_channel"] == ch),
            "interrupted": sum(1 for ev in events if ev["of_channel"] == ch),
            "polarity_by_quarter": qs, "polarity_trend": trend(qs)}
    everyone = union(*(s for _, s in segs.values()))
    quiet, longest = non_talk(everyone, duration_ms)
    qs = quarters([p for c in channels.values() for p in c.get("polar") or []], duration_ms)
    call = {
        "talk_ms": _total(everyone),
        "non_talk_ms": quiet,
        "longest_non_talk": None if longest is None else {"begin_ms": longest[0],
                                                          "end_ms": longest[1]},
        "interruptions": {"count": len(events),
                          "total_ms": sum(ev["end_ms"] - ev["begin_ms"] for ev in events),
                          "events": events[:MAX_INTERRUPTION_EVENTS]},
        "polarity_by_quarter": qs, "polarity_trend": trend(qs)}
    call["talk_ms"] = min(call["talk_ms"], duration_ms) if duration_ms else call["talk_ms"]
    return per, call
