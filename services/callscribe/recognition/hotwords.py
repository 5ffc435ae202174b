"""Hotwords: a decoder prompt for Whisper and a sound-alike correction pass on final words.

Correction replaces a near-miss with the hotword when it *sounds* close:

* Latin script: a run of 1..5 words (letters concatenated, so "dash wood" meets "Dashwood")
  is compared with the hotword by Metaphone codes and by spelling (normalised edit distances;
  all runs x all hotwords at once with ``rapidfuzz.process.cdist``).  Another form of the
  same word ("thank"/"Thanks") is never a near-miss, and a case-only difference of a single
  word ("bill"/"Bill") is only fixed for weight >= 4.
* Chinese: a window of the same number of characters (2..10) is compared syllable by
  syllable in toneless pinyin (``pypinyin``), with partial credit for the usual confusions
  (zh/z, ch/c, sh/s, n/l/r, f/h, -ng/-n), plus a little credit for identical characters.
  Every syllable must keep its (fuzzy) final, so hotwords are looked up by their finals.

The weight gates the decision (:data:`THRESHOLDS`): weight 5 accepts a fairly loose match,
weight 1 only a near-exact one (a spacing difference, a homophone sharing most characters).
Overlapping candidates: the best score wins.  A replaced run becomes one ``Word`` spanning
the run, keeping the last word's punctuation.  500 hotwords cost a few ms a sentence.
Pure functions; callers run them in a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import jellyfish
import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from callscribe.recognition.events import Word
from callscribe.recognition.textnorm import _segments, base_language
from callscribe.recognition.vocabulary import Hotword

__all__ = [
    "THRESHOLDS",
    "Hotword",
    "build_prompt",
    "correct_words",
    "pinyin_similarity",
    "similarity",
]

#: minimum similarity (0..1) for a replacement, by hotword weight
THRESHOLDS = {5: 0.72, 4: 0.78, 3: 0.84, 2: 0.90, 1: 0.96}
MAX_RUN_WORDS = 5
#: a single word that differs from the hotword only in case ("bill" / "Bill") is re-cased
#: only for hotwords this important: such words are often ordinary words
CASE_FIX_MIN_WEIGHT = 4
_SUFFIXES = {"s", "es", "ed", "d", "ing", "er", "ers", "ly", "y"}
MAX_CJK_CHARS = 10
#: every syllable must share at least its final (or a fuzzy initial and final)
MIN_SYLLABLE_SIM = 0.6
_CJK = re.compile(r"[\u3400-\u9fff]")
_ALL_CJK = re.compile(r"^[\u3400-\u9fff]+$")
_POSSESSIVE = re.compile(r"'s$", re.IGNORECASE)


def _weight(h) -> int:
    try:
        return min(5, max(1, int(getattr(h, "weight", 3))))
    except (TypeError, ValueError):
        return 3


def _for_language(hotwords: Iterable, language: str | None) -> list:
    lang = base_language(language)
    out = []
    for h in hotwords:
        text = str(getattr(h, "text", "") or "").strip()
        hl = base_language(getattr(h, "lang", None))
        if text and (lang is None or hl is None or hl == lang):
            out.append(h)
    return out


# ------------------------------------------------------------------------------ prompt


def _approx_tokens(s: str) -> float:
    cjk = len(_CJK.findall(s))
    other = sum(1 for c in s if ord(c) > 127) - cjk
    ascii_ = len(s) - cjk - other
    return ascii_ / 4 + cjk * 1.5 + other / 2


def build_prompt(hotwords: Iterable, language: str | None, max_tokens: int = 100) -> str | None:
    """``"Glossary: Dashwood, Acme."`` (or ``"以下是相关词汇：滨海新区、…。"``), highest weight
    first, bounded to about ``max_tokens`` Whisper tokens; None when there is nothing to say."""
    hs = sorted(_for_language(hotwords, language), key=lambda h: -_weight(h))  # stable
    zh = base_language(language) == "zh" or (language is None and hs and all(
        _CJK.search(h.text) for h in hs))
    prefix, sep, end = ("以下是相关词汇：", "、", "。") if zh else ("Glossary: ", ", ", ".")
    budget = max_tokens - _approx_tokens(prefix + end)
    seen, items = set(), []
    for h in hs:
        t = " ".join(h.text.split())
        if t.casefold() in seen:
            continue
        cost = _approx_tokens(t + sep)
        if cost > budget:
            continue  # a long one does not block shorter, lower-weight ones
        seen.add(t.casefold())
        items.append(t)
        budget -= cost
    return prefix + sep.join(items) + end if items else None


# ------------------------------------------------------------------------------ Latin


def _letters(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _nsim(a: str, b: str) -> float:
    return Levenshtein.normalized_similarity(a, b)


@lru_cache(maxsize=4096)
def _metaphone(s: str) -> str:
    return jellyfish.metaphone(s) if s else ""


def similarity(heard: str, hotword: str) -> float:
    """Sound-and-spelling similarity of two Latin strings, 0..1 (spaces and case ignored)."""
    a, b = _letters(heard), _letters(hotword)
    return _score(a, _metaphone(a), b, _metaphone(b)) if a and b else 0.0


def _score(a: str, ca: str, b: str, cb: str, floor: float = 0.0) -> float:
    """:func:`similarity` on letters and Metaphone codes; 0 early when it cannot reach
    ``floor``."""
    if a == b:
        return 1.0
    phon = _nsim(ca, cb)
    if 0.6 * phon + 0.4 < floor:
        return 0.0
    orth = _nsim(a, b)
    score = 0.6 * phon + 0.4 * orth
    if ca[:1] != cb[:1] and orth < 0.8:  # a different first sound is rarely a near-miss
        score -= 0.15
    if orth < (0.75 if min(len(a), len(b)) <= 5 else 0.5):  # sounds alike, spelled apart
        score -= 0.2
    return score


def _inflection(a: str, b: str) -> bool:
    """``thank``/``thanks``, ``bill``/``billing``: another form of the same word, not a miss."""
    a, b = sorted((a, b), key=len)
    return a != b and b.startswith(a) and b[len(a):] in _SUFFIXES


def _threshold(h, n_chars: int, short: int) -> float:
    t = THRESHOLDS[_weight(h)]
    return min(0.97, t + 0.10) if n_chars <= short else t


@dataclass(slots=True)
class _Cand:
    score: float
    weight: int
    i0: int
    i1: int
    text: str  # replacement text for words i0..i1
    same: bool  # already correct: claims the span, changes nothing


@dataclass(frozen=True, slots=True)
class _Latin:
    hotword: object
    letters: str
    code: str
    n_words: int
    norm: str  # the text with single spaces
    possessive: bool
    weight: int
    threshold: float


def _latin_candidates(words: Sequence[Word], hs: list) -> list[_Cand]:
    entries = []
    for h in hs:
        hl = _letters(h.text)
        if _CJK.search(h.text) or len(hl) < 2:
            continue
        entries.append(_Latin(h, hl, _metaphone(hl) or hl, len(h.text.split()),
                              " ".join(h.text.split()), bool(_POSSESSIVE.search(h.text)),
                              _weight(h), _threshold(h, len(hl), short=4)))
    if not entries:
        return []
    texts = [w.text.strip() for w in words]
    runs = []  # (i, j, run text, heard, suffix, letters, code)
    for i in range(len(words)):
        if not _letters(texts[i]) or _CJK.search(texts[i]):
            continue
        for j in range(i, min(len(words), i + MAX_RUN_WORDS)):
            if _CJK.search(texts[j]) or (j > i and words[j - 1].punctuation.strip()):
                break
            run = " ".join(texts[i:j + 1])
            runs.append((i, j, run, run, "", _letters(run)))
            if _POSSESSIVE.search(run):  # "dashwud's" is also tried as "dashwud" + "'s"
                runs.append((i, j, run, run[:-2], run[-2:], _letters(run[:-2])))
    runs = [r for r in runs if r[5]]
    if not runs:
        return []
    # vectorised gates: Metaphone similarity high enough to reach the threshold, similar
    # length, not many more words than the hotword, possessive handled once
    codes = [_metaphone(r[5]) or r[5] for r in runs]
    phon = cdist(codes, [e.code for e in entries], scorer=Levenshtein.normalized_similarity,
                 dtype=np.float32)
    need = np.array([(e.threshold - 0.4) / 0.6 for e in entries], dtype=np.float32)
    hl_len = np.array([len(e.letters) for e in entries])
    rl_len = np.array([len(r[5]) for r in runs])
    n_run = np.array([r[1] - r[0] + 1 for r in runs])
    stripped = np.array([bool(r[4]) for r in runs])
    poss = np.array([e.possessive for e in entries])
    ok = (phon >= need[None, :] - 1e-6) \
        & (np.abs(rl_len[:, None] - hl_len[None, :]) <= np.maximum(2, 0.34 * hl_len)[None, :]) \
        & (n_run[:, None] <= np.array([e.n_words + 2 for e in entries])[None, :]) \
        & ~(stripped[:, None] & poss[None, :])
    cands: list[_Cand] = []
    for ri, ei in zip(*np.nonzero(ok), strict=True):
        i, j, run, heard, suffix, rl = runs[ri]
        e = entries[ei]
        if " ".join(heard.split()) == e.norm or _inflection(rl, e.letters) or (
                i == j and rl == e.letters and e.weight < CASE_FIX_MIN_WEIGHT):
            cands.append(_Cand(2.0, e.weight, i, j, run, True))
            continue
        score = _score(rl, codes[ri], e.letters, e.code, floor=e.threshold)
        if score >= e.threshold:
            cands.append(_Cand(score, e.weight, i, j, e.norm + suffix, False))
    return cands


# ------------------------------------------------------------------------------ Chinese

_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j",
             "q", "x", "r", "z", "c", "s", "y", "w")
_FUZZY_INITIAL = {"zh": "z", "ch": "c", "sh": "s", "l": "n", "r": "n", "h": "f"}
_FUZZY_FINAL = {"ing": "in", "eng": "en", "ang": "an", "iang": "ian", "uang": "uan"}


def _split_syllable(s: str) -> tuple[str, str]:
    for ini in _INITIALS:
        if s.startswith(ini) and len(s) > len(ini):
            return ini, s[len(ini):]
    return "", s


@lru_cache(maxsize=8192)
def _syllable_sim(a: str, b: str) -> float:
    if a == b:
        return 1.0
    ia, fa = _split_syllable(a)
    ib, fb = _split_syllable(b)
    ini = 1.0 if ia == ib else 0.8 if _FUZZY_INITIAL.get(ia, ia) == _FUZZY_INITIAL.get(ib, ib) \
        else 0.0
    fin = 1.0 if fa == fb else 0.8 if _FUZZY_FINAL.get(fa, fa) == _FUZZY_FINAL.get(fb, fb) \
        else 0.0
    return 0.4 * ini + 0.6 * fin


@lru_cache(maxsize=4096)
def _pinyin(text: str) -> tuple[str, ...]:
    from pypinyin import Style, lazy_pinyin

    syl = lazy_pinyin(text, style=Style.NORMAL, v_to_u=False)
    return tuple(syl) if len(syl) == len(text) else tuple(lazy_pinyin(c)[0] for c in text)


def pinyin_similarity(heard: str, hotword: str) -> float:
    """Similarity of two equal-length Chinese strings, 0..1 (pinyin, plus identical chars)."""
    if len(heard) != len(hotword) or not heard:
        return 0.0
    return _py_score(heard, _pinyin(heard), hotword, _pinyin(hotword))


def _py_score(a: str, pa: Sequence[str], b: str, pb: Sequence[str]) -> float:
    sims = [_syllable_sim(x, y) for x, y in zip(pa, pb, strict=True)]
    if min(sims) < MIN_SYLLABLE_SIM:
        return 0.0
    chars = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    return 0.85 * sum(sims) / len(sims) + 0.15 * chars


@lru_cache(maxsize=8192)
def _final_class(syllable: str) -> str:
    final = _split_syllable(syllable)[1]
    return _FUZZY_FINAL.get(final, final)


def _cjk_candidates(words: Sequence[Word], hs: list) -> list[_Cand]:
    # every syllable must share its (fuzzy) final, so the finals index the hotwords
    index: dict[tuple[str, ...], list] = {}
    for h in hs:
        hw = h.text.strip()
        if _ALL_CJK.match(hw) and 2 <= len(hw) <= MAX_CJK_CHARS:
            py = _pinyin(hw)
            key = tuple(_final_class(x) for x in py)
            index.setdefault(key, []).append((h, hw, py, _threshold(h, len(hw), short=2)))
    if not index:
        return []
    lengths = sorted({len(k) for k in index})
    texts = [w.text.strip() for w in words]
    cands: list[_Cand] = []
    for idx in _segments(words):
        joined, owner, starts = "", [], {}
        for i in idx:
            starts[i] = len(joined)
            joined += texts[i]
            owner += [i] * len(texts[i])
        syl: list[str | None] = [None] * len(joined)  # pinyin of each CJK char, in context
        for m in re.finditer(r"[\u3400-\u9fff]+", joined):
            syl[m.start():m.end()] = _pinyin(m.group())
        finals = [_final_class(x) if x else None for x in syl]
        for n in lengths:
            for s in range(len(joined) - n + 1):
                key = tuple(finals[s:s + n])
                if None in key or key not in index:
                    continue
                window, g0, g1 = joined[s:s + n], owner[s], owner[s + n - 1]
                for h, hw, py, thr in index[key]:
                    if window == hw:
                        cands.append(_Cand(2.0, _weight(h), g0, g1, "", True))
                        continue
                    score = _py_score(window, syl[s:s + n], hw, py)
                    if score >= thr:
                        a, b = starts[g0], starts[g1] + len(texts[g1])
                        text = joined[a:s] + hw + joined[s + n:b]
                        cands.append(_Cand(score, _weight(h), g0, g1, text, False))
    return cands


# ------------------------------------------------------------------------------ apply


def _apply(words: list[Word], cands: list[_Cand]) -> list[Word]:
    cands.sort(key=lambda c: (-c.score, -c.weight, c.i1 - c.i0))
    taken: list[_Cand] = []
    used: set[int] = set()
    for c in cands:
        span = set(range(c.i0, c.i1 + 1))
        if span & used:
            continue
        used |= span
        taken.append(c)
    by_start = {c.i0: c for c in taken if not c.same}
    out: list[Word] = []
    i = 0
    while i < len(words):
        c = by_start.get(i)
        if c is None:
            out.append(words[i])
            i += 1
            continue
        out.append(Word(words[c.i0].begin_time, words[c.i1].end_time, c.text,
                        words[c.i1].punctuation))
        i = c.i1 + 1
    return out


def correct_words(words: Sequence[Word], hotwords: Iterable, language: str | None) -> list[Word]:
    """Replace sound-alike near-misses of ``hotwords`` in ``words`` (see module doc)."""
    words = list(words)
    hs = _for_language(hotwords or (), language)
    if not words or not hs:
        return words
    words = _apply(words, _latin_candidates(words, hs))
    if any(_CJK.search(w.text) for w in words):
        words = _apply(words, _cjk_candidates(words, hs))
    return words
