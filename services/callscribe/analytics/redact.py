"""Redaction of a sentence (text and words) with :mod:`callscribe.analytics.pii`; pure.

:class:`Redactor` is the per-call policy (entity types and mode); :meth:`Redactor.sentence`
redacts a final: the text, and each word whose characters overlap an entity loses its text
(it keeps its times, so audio can be bleeped downstream).  :meth:`Redactor.partial` redacts a
partial the same way and, because a partial may stop in the middle of a number, also masks a
trailing digit run of ``PARTIAL_MIN_DIGITS`` or more (tagged ``NUMBER``): a partial never
shows digits that the final (which has the whole number) would redact.

Modes: ``mask`` replaces an entity with its tag (``[CARD]``); ``drop`` removes it.  Spans
(:class:`Span`) are in the *redacted* text: for ``mask`` they cover the tag, for ``drop`` they
are empty (begin == end) where the entity was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from callscribe.analytics.pii import ENTITY_TYPES, PENDING_NUMBER, Entity, find_entities, \
    trailing_number
from callscribe.errors import ConfigurationError

#: a trailing digit run this long in a partial is masked (the number may not be finished)
PARTIAL_MIN_DIGITS = 4
Mode = Literal["mask", "drop"]


@dataclass(frozen=True, slots=True)
class Span:
    type: str
    begin: int  # in the redacted text
    end: int


@dataclass(frozen=True, slots=True)
class Redacted:
    text: str
    spans: tuple[Span, ...]
    #: char spans of the original text that were removed (to redact words)
    removed: tuple[tuple[int, int], ...]

    @property
    def changed(self) -> bool:
        return bool(self.spans)


def parse_entities(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"CARD,PHONE"`` / a list -> a set of entity types; ``all``; ``""``/``none``: none."""
    if value is None:
        return frozenset(ENTITY_TYPES)
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {s.strip().upper() for s in items if s and s.strip()}
    if names == {"ALL"}:
        return frozenset(ENTITY_TYPES)
    if names <= {"NONE"}:
        return frozenset()
    unknown = sorted(names - set(ENTITY_TYPES))
    if unknown:
        raise ConfigurationError(f"unknown PII entity type(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(ENTITY_TYPES)} (or all / none)")
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Redactor:
    entities: frozenset[str] = frozenset(ENTITY_TYPES)
    mode: Mode = "mask"

    @property
    def enabled(self) -> bool:
        return bool(self.entities)

    @classmethod
    def for_call(cls, default: Redactor, option: dict[str, Any] | None) -> Redactor:
        """The deployment's redactor, overridden by a call's ``options.redaction``
        (``{"entities": [...], "mode": "mask"|"drop"}``, both optional)."""
        if not option:
            return default
        ents = option.get("entities")
        mode = option.get("mode") or default.mode
        return cls(default.entities if ents is None else parse_entities(ents),
                   "drop" if mode == "drop" else "mask")

    def text(self, text: str, *, partial: bool = False) -> Redacted:
        if not self.enabled or not text:
            return Redacted(text, (), ())
        found = list(find_entities(text, self.entities))
        if partial:
            tail = trailing_number(text, PARTIAL_MIN_DIGITS)
            if tail is not None:  # the whole unfinished run, whatever was found inside it
                inside = [e for e in found if e.begin < tail[1] and tail[0] < e.end]
                found = [e for e in found if e not in inside]
                found.append(Entity(PENDING_NUMBER, min([tail[0], *(e.begin for e in inside)]),
                                    max([tail[1], *(e.end for e in inside)])))
                found.sort(key=lambda e: e.begin)
        return apply(text, found, self.mode)

    def words(self, words: Sequence[Any], text: str, removed: Sequence[tuple[int, int]]
              ) -> list[tuple[Any, bool]]:
        """(word, redacted?) for each word of a sentence whose text is made of the words
        (``words_text``): a word overlapping a removed span is redacted."""
        out: list[tuple[Any, bool]] = []
        pos = 0
        for w in words:
            wt = w.text
            at = text.find(wt, pos) if wt else -1
            if at < 0:  # not found where expected: judge the word on its own
                hit = bool(wt) and bool(find_entities(wt, self.entities))
            else:
                b, e = at, at + len(wt)
                pos = e
                hit = any(b < re_ and rb < e for rb, re_ in removed)
            out.append((w, hit))
        return out


def apply(text: str, entities: Iterable[Entity], mode: Mode) -> Redacted:
    """Replace (mask) or remove (drop) the entities; spans in the new text."""
    parts: list[str] = []
    spans: list[Span] = []
    removed: list[tuple[int, int]] = []
    pos = 0
    length = 0
    for e in sorted(entities, key=lambda e: e.begin):
        if e.begin < pos:
            continue
        parts.append(text[pos:e.begin])
        length += e.begin - pos
        tag = f"[{e.type}]" if mode == "mask" else ""
        parts.append(tag)
        spans.append(Span(e.type, length, length + len(tag)))
        length += len(tag)
        removed.append((e.begin, e.end))
        pos = e.end
    parts.append(text[pos:])
    return Redacted("".join(parts), tuple(spans), tuple(removed))


def common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def redact_session_event(red: Redactor, ev: Any) -> Any:
    """A recognition ``FinalSentence`` or ``Partial`` redacted (the standalone gateway's
    hook); any other event unchanged.  Redacted words keep their times with empty text."""
    from dataclasses import replace

    from callscribe.recognition.events import FinalSentence, Partial

    if not red.enabled:
        return ev
    if isinstance(ev, FinalSentence) and ev.text:
        r = red.text(ev.text)
        if not r.changed:
            return ev
        words = tuple(replace(w, text="") if hit else w
                      for w, hit in red.words(ev.words, ev.text, r.removed))
        return replace(ev, text=r.text, words=words)
    if isinstance(ev, Partial) and ev.text:
        r = red.text(ev.text, partial=True)
        if not r.changed:
            return ev
        settled = common_prefix(red.text(ev.settled).text, r.text) if ev.settled else ""
        return replace(ev, settled=settled, tail=r.text[len(settled):])
    return ev


def gateway_redactor(settings: Any) -> Redactor | None:
    """The standalone gateway's redactor (``CALLSCRIBE_GATEWAY_REDACT``), None when off."""
    if not getattr(settings, "gateway_redact", False):
        return None
    red = Redactor(parse_entities(settings.redact_entities), settings.redact_mode)
    return red if red.enabled else None
