"""Qwen realtime conversation items and their settled text (``...transcription.text``).

The protocol promises that ``text`` is settled and ``stash`` is the tail that may still
change, so a client may append ``text`` and redraw only ``stash``.  The recogniser's own
split (:func:`callscribe.recognition.words.settle`) compares each partial with the previous
one and can move its boundary back (a re-decode that recapitalises or re-punctuates the
start), so the protocol keeps, per item, the text it has shown and only ever extends it:
:func:`grow`.  The final transcript (``...completed``) is the recogniser's final and may
differ; within an item ``text`` never shrinks or changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    """One conversation item of a Qwen realtime session (an utterance or a commit)."""

    id: str
    texts: list[str] = field(default_factory=list)  # its final sentences so far
    language: str | None = None
    emotion: str = "neutral"
    #: ``text`` of the item's last ``.text`` event: later ones only extend it (:func:`grow`)
    shown: str = ""
    longest: int = -1
    implicit: bool = False  # committed by session.finish: dropped when nothing was said


def grow(shown: str, settled: str, full: str, unspaced: bool) -> tuple[str, str]:
    """(text, stash) for a new partial of an item whose ``.text`` events showed ``shown``.

    ``settled`` is the recogniser's settled prefix of the item, ``full`` the whole current
    hypothesis (``full.startswith(settled)``).  The result's ``text`` starts with ``shown``;
    ``text + stash`` reads as ``full`` with its first words replaced by what was shown when
    the recogniser revised words that were already settled.
    """
    if settled.startswith(shown):
        return settled, full[len(settled):]
    if unspaced:  # characters are the tokens
        n = len(shown)
        text = shown + settled[n:]
        return text, full[max(len(text), len(settled)):]
    n = len(shown.split())
    settled_tokens, full_tokens = settled.split(), full.split()
    text = shown
    if settled_tokens[n:]:
        text = _join(shown, " ".join(settled_tokens[n:])) + " "
    rest = " ".join(full_tokens[max(n, len(settled_tokens)):])
    return text, (_join(text, rest)[len(text):] if rest else "")


def _join(left: str, right: str) -> str:
    if not left or left.endswith(" "):
        return left + right
    return left + " " + right
