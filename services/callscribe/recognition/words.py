"""Turning engine words into protocol words: punctuation split, clamping, text joins."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from callscribe.asr.engine import RawWord
from callscribe.recognition.events import Word

#: languages written without spaces between words
UNSPACED = frozenset({"zh", "ja", "yue", "th", "lo", "my", "bo"})


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def split_punctuation(text: str) -> tuple[str, str]:
    """``" Americans,"`` -> ``("Americans", ",")``; leading punctuation is dropped from the word."""
    t = text.strip()
    i = len(t)
    while i > 0 and _is_punct(t[i - 1]):
        i -= 1
    core, punct = t[:i], t[i:]
    j = 0
    while j < len(core) and _is_punct(core[j]) and core[j] not in "'":
        j += 1
    return core[j:], punct


def to_words(raw: Iterable[RawWord], begin_ms: int, end_ms: int,
             language: str | None) -> list[Word]:
    """Stream-relative words, each inside [begin_ms, end_ms], non-decreasing in time."""
    out: list[Word] = []
    floor = begin_ms
    for w in raw:
        core, punct = split_punctuation(w.text)
        if not core:
            if punct and out:  # a stand-alone punctuation token: attach to the previous word
                last = out[-1]
                out[-1] = Word(last.begin_time, last.end_time, last.text, last.punctuation + punct)
            continue
        b = min(max(begin_ms + int(round(w.start * 1000)), floor), end_ms)
        e = min(max(begin_ms + int(round(w.end * 1000)), b), end_ms)
        out.append(Word(b, e, core, punct))
        floor = b
    return out


def close_sentence(words: list[Word], language: str | None) -> list[Word]:
    """Make sure a final sentence ends with sentence punctuation (Chinese output often lacks it)."""
    if not words or (words[-1].punctuation and words[-1].punctuation[-1] in ".!?。！？…"):
        return words
    last = words[-1]
    mark = "。" if language in UNSPACED else "."
    return [*words[:-1], Word(last.begin_time, last.end_time, last.text,
                              last.punctuation.rstrip(",，、;；:：") + mark)]


def words_text(words: Iterable[Word], language: str | None) -> str:
    sep = "" if language in UNSPACED else " "
    return sep.join(w.text + w.punctuation for w in words).strip()


def _cjk(text: str) -> bool:
    return any("\u3000" <= ch <= "\u9fff" for ch in text)


def _tokens(text: str) -> list[str]:
    return list(text) if _cjk(text) else text.split(" ")


def settle(previous: str, current: str, settled_before: str) -> tuple[str, str]:
    """Split ``current`` into a settled prefix (unchanged since the previous partial) and a tail."""
    if not previous:
        return "", current
    a, b = _tokens(previous), _tokens(current)
    n = 0
    # the last token of the previous partial may still have been growing: do not settle it
    while n < min(len(a) - 1, len(b)) and a[n] == b[n]:
        n += 1
    joiner = "" if _cjk(current) else " "
    settled = joiner.join(b[:n])
    if n and joiner == " ":
        settled += " "
    return settled, current[len(settled):]
