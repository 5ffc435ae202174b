"""Categories from a rules file (JSON or YAML, ``schemas/category_rules.schema.json``); pure.

A category matches when every condition it has holds:

* ``phrases`` (any of them, case-insensitive, punctuation and spacing ignored) or
  ``patterns`` (regular expressions, any of them, case-insensitive) in a final sentence --
  matched against the sentence as said and as redacted, so ``\\[CARD\\]`` finds a card number
  without the rule seeing it;
* ``role``: only sentences (and characteristics) of channels with that role;
* ``window``: ``{"from_ms": a, "to_ms": b}``: only sentences that begin in ``a .. b``;
* ``absent: true``: the phrases/patterns were *not* said (in the window, by the role);
* ``characteristics``: thresholds on the call's (or, with ``role``, that role's channels')
  characteristics, e.g. ``{"non_talk_ms": {"gt": 30000}}``; every one must hold.

A phrase/pattern category without ``absent`` and ``characteristics`` is known as soon as a
final matches (:meth:`Rules.on_final`: live); the others are decided when the call ends
(:meth:`Rules.at_end`).  Loading (:func:`load_rules`) validates the file against the schema
and compiles every pattern, so a bad file stops the process at start with the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callscribe.errors import ConfigurationError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "pipeline" / "schemas" / \
    "category_rules.schema.json"
#: call-wide characteristics a rule can test (without ``role``)
CALL_METRICS = ("duration_ms", "talk_ms", "non_talk_ms", "longest_non_talk_ms",
                "interruptions", "interruption_ms")
#: per-role characteristics (with ``role``): the highest over the role's channels
ROLE_METRICS = ("talk_ms", "talk_ratio", "words_per_minute", "chars_per_minute",
                "average_dbfs", "peak_dbfs", "interruptions", "interrupted")
_OPS = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b}
_NORM = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, punctuation and spacing folded to single spaces (CJK keeps no spaces)."""
    s = _NORM.sub(" ", text.lower()).strip()
    return re.sub(r"(?<=[\u3400-\u9fff]) (?=[\u3400-\u9fff])", "", s)


@dataclass(frozen=True)
class Category:
    name: str
    phrases: tuple[str, ...] = ()
    patterns: tuple[re.Pattern, ...] = ()
    role: str | None = None
    window: tuple[int, int] | None = None
    absent: bool = False
    characteristics: tuple[tuple[str, str, float], ...] = ()

    @property
    def says(self) -> bool:
        return bool(self.phrases or self.patterns)

    @property
    def live(self) -> bool:
        return self.says and not self.absent and not self.characteristics

    def said_in(self, role: str, begin_ms: int, texts: tuple[str, ...]) -> str | None:
        """"phrase" / "pattern" when a sentence (its texts) satisfies the phrase condition."""
        if self.role is not None and role != self.role:
            return None
        if self.window is not None and not (self.window[0] <= begin_ms < self.window[1]):
            return None
        norm = [f" {normalise(t)} " for t in texts]
        for p in self.phrases:
            if any(p in n for n in norm):
                return "phrase"
        for rx in self.patterns:
            if any(rx.search(t) for t in texts):
                return "pattern"
        return None


@dataclass(frozen=True)
class Match:
    name: str
    channel: int | None
    role: str | None
    begin_ms: int
    end_ms: int
    trigger: str
    sentence_id: int | None = None


class Rules:
    def __init__(self, categories: list[Category]) -> None:
        self.categories = categories

    def __bool__(self) -> bool:
        return bool(self.categories)

    def on_final(self, channel: int, role: str, sentence_id: int, begin_ms: int, end_ms: int,
                 texts: tuple[str, ...], already: set[str]) -> list[Match]:
        """Live categories this final matches (not those in ``already``)."""
        out = []
        for c in self.categories:
            if c.live and c.name not in already:
                trig = c.said_in(role, begin_ms, texts)
                if trig is not None:
                    out.append(Match(c.name, channel, role, begin_ms, end_ms, trig,
                                     sentence_id))
        return out

    def at_end(self, said: dict[str, list[int]], channels: dict[int, dict[str, Any]],
               call: dict[str, Any], duration_ms: int, already: set[str]) -> list[Match]:
        """The categories decided at the end of the call.

        ``said``: category name -> [channel, begin, end] of the first sentence meeting its
        phrase condition (collected by the worker as finals went out); ``channels``: channel
        -> ``{"role", **analytics}``; ``call``: the call's analytics.
        """
        out = []
        for c in self.categories:
            if c.live or c.name in already:
                continue
            first = said.get(c.name)
            if c.says and not c.absent and first is None:
                continue
            if c.absent and first is not None:
                continue
            if c.characteristics and not self._holds(c, channels, call, duration_ms):
                continue
            trigger = "characteristics" if c.characteristics else "absence"
            if c.says and not c.absent and not c.characteristics:
                trigger = "phrase"
            if first is not None and not c.absent:
                out.append(Match(c.name, first[0], channels.get(first[0], {}).get("role"),
                                 first[1], first[2], trigger))
            else:
                lo, hi = c.window or (0, duration_ms)
                out.append(Match(c.name, None, c.role, min(lo, duration_ms),
                                 min(hi, duration_ms), trigger))
        return out

    @staticmethod
    def _holds(c: Category, channels: dict[int, dict[str, Any]], call: dict[str, Any],
               duration_ms: int) -> bool:
        for metric, op, limit in c.characteristics:
            if c.role is None:
                value = call_metric(metric, call, duration_ms)
                values = [] if value is None else [value]
            else:
                values = [v for a in channels.values() if a.get("role") == c.role
                          if (v := role_metric(metric, a, duration_ms)) is not None]
            if not any(_OPS[op](v, limit) for v in values):
                return False
        return True


def call_metric(name: str, call: dict[str, Any], duration_ms: int) -> float | None:
    if name == "duration_ms":
        return duration_ms
    if name == "longest_non_talk_ms":
        g = call.get("longest_non_talk")
        return 0 if g is None else g["end_ms"] - g["begin_ms"]
    if name == "interruptions":
        return call["interruptions"]["count"]
    if name == "interruption_ms":
        return call["interruptions"]["total_ms"]
    return call.get(name)


def role_metric(name: str, a: dict[str, Any], duration_ms: int) -> float | None:
    if name == "talk_ratio":
        return a["talk_ms"] / duration_ms if duration_ms else None
    if name in ("average_dbfs", "peak_dbfs"):
        return (a.get("loudness") or {}).get(name)
    return a.get(name)


def parse_rules(doc: Any, source: str = "rules") -> Rules:
    """A rules document (already parsed) -> Rules, or ConfigurationError naming the problem."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    err = best_match(Draft202012Validator(schema).iter_errors(doc))
    if err is not None:
        where = "/" + "/".join(str(p) for p in err.absolute_path)
        raise ConfigurationError(f"{source}: {where}: {err.message}")
    cats = []
    seen: set[str] = set()
    for i, c in enumerate(doc["categories"]):
        if c["name"] in seen:
            raise ConfigurationError(f"{source}: /categories/{i}/name: {c['name']!r} twice")
        seen.add(c["name"])
        pats = []
        for j, p in enumerate(c.get("patterns", ())):
            try:
                pats.append(re.compile(p, re.IGNORECASE))
            except re.error as exc:
                raise ConfigurationError(f"{source}: /categories/{i}/patterns/{j}: not a "
                                         f"regular expression ({exc})") from None
        win = c.get("window")
        chars = tuple((m, op, float(v)) for m, cond in c.get("characteristics", {}).items()
                      for op, v in cond.items())
        allowed = ROLE_METRICS if c.get("role") else CALL_METRICS
        bad = sorted({m for m, _, _ in chars} - set(allowed))
        if bad:
            raise ConfigurationError(f"{source}: /categories/{i}/characteristics: "
                                     f"{', '.join(bad)} not known "
                                     f"{'per role' if c.get('role') else 'for the call'} "
                                     f"(known: {', '.join(allowed)})")
        if c.get("absent") and not (c.get("phrases") or c.get("patterns")):
            raise ConfigurationError(f"{source}: /categories/{i}: absent needs phrases or "
                                     "patterns")
        cats.append(Category(
            name=c["name"], phrases=tuple(f" {normalise(p)} " for p in c.get("phrases", ())),
            patterns=tuple(pats), role=c.get("role"),
            window=(win.get("from_ms", 0), win.get("to_ms", 1 << 62)) if win else None,
            absent=bool(c.get("absent")), characteristics=chars))
    return Rules(cats)


def load_rules(path: Path | str | None) -> Rules:
    """The rules file (``.json``, ``.yaml``/``.yml``); no path: no categories."""
    if path is None or not str(path):
        return Rules([])
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{p}: cannot read the rules file ({exc})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as exc:
        raise ConfigurationError(f"{p}: not valid {p.suffix.lstrip('.') or 'JSON'} "
                                 f"({exc})") from None
    return parse_rules(doc, str(p))
