"""Error rates for tests and benchmarks: normalise, then word / character edit distance."""

from __future__ import annotations

import re
import unicodedata

import zhconv

_ABBREV = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "ok": "okay"}
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _num_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _num_words(rest))
    return str(n)


def normalize_en(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text).replace("'", "")
    out: list[str] = []
    for w in text.split():
        w = _ABBREV.get(w, w)
        if w.isdigit():
            out.extend(_num_words(int(w)).split())
        else:
            out.append(w)
    return out


def normalize_zh(text: str) -> list[str]:
    text = zhconv.convert(unicodedata.normalize("NFKC", text), "zh-cn")
    return [c for c in text
            if not unicodedata.category(c).startswith(("P", "Z", "S")) and not c.isspace()]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(pairs: list[tuple[str, str]], language: str) -> float:
    """Pooled WER (English) or CER (Chinese) over (reference, hypothesis) pairs."""
    norm = normalize_zh if language.startswith("zh") else normalize_en
    errors = words = 0
    for ref, hyp in pairs:
        r, h = norm(ref), norm(hyp)
        errors += edit_distance(r, h)
        words += len(r)
    return errors / max(1, words)
