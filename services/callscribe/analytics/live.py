"""The analytics a pipeline worker applies as results go out; pure (no I/O).

:class:`CallAnalytics` is built once per process from the settings.  The worker calls:

* :meth:`CallAnalytics.redact` on every final and partial before it is encoded (the
  original stays in the worker, or goes only to ``CALLSCRIBE_KAFKA_TOPIC_CLEAR_TRANSCRIPTS``);
* :meth:`CallAnalytics.note_final` with the unredacted final, which adds the sentence to the
  channel record's accumulators (talk segments, word counts, polarity points) and returns the
  live category matches (also noted in the record, so a replay does not repeat them);
* :meth:`CallAnalytics.summarise` when the call ends: per-channel and call characteristics,
  the categories decided at the end, and the list for the summary.

The accumulators live on the channel's table record (``ChannelRecord``: ``segments``,
``words``, ``chars``, ``polar``, ``loud``, ``cat_said``, ``categories``), so they survive a
crash or rebalance with the rest of the call's state.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from callscribe.analytics import characteristics as chx
from callscribe.analytics.categories import Match, Rules, load_rules
from callscribe.analytics.redact import Redactor, common_prefix, parse_entities
from callscribe.pipeline.codec import (CategoryEvent, RedactionSpan, TranscriptEvent,
                                       TranscriptRedaction, TranscriptWord)


class CallAnalytics:
    def __init__(self, redactor: Redactor, rules: Rules, *, enabled: bool = True,
                 clear_topic: str = "") -> None:
        self.redactor = redactor
        self.rules = rules
        self.enabled = enabled
        #: where unredacted finals go ("": nowhere, they never leave the worker)
        self.clear_topic = clear_topic

    @classmethod
    def default(cls) -> CallAnalytics:
        """Every entity type masked, characteristics on, no categories."""
        return cls(Redactor(), Rules([]))

    @classmethod
    def from_settings(cls, settings: Any) -> CallAnalytics:
        return cls(Redactor(parse_entities(settings.redact_entities), settings.redact_mode),
                   load_rules(settings.analytics_rules_file),
                   enabled=settings.analytics_enabled,
                   clear_topic=settings.kafka_topic_clear_transcripts)

    # --- redaction ------------------------------------------------------------------------
    def redactor_for(self, options: dict[str, Any] | None) -> Redactor:
        """The call's redactor: its ``options.redaction`` over the deployment's."""
        return Redactor.for_call(self.redactor, (options or {}).get("redaction"))

    def redact(self, event: TranscriptEvent, options: dict[str, Any] | None = None
               ) -> TranscriptEvent:
        """The event as it may leave the worker: text, settled prefix and words redacted."""
        red = self.redactor_for(options)
        if not red.enabled or not event.text:
            return event
        partial = not event.final
        r = red.text(event.text, partial=partial)
        if not r.changed:
            return event
        words = event.words
        if words:
            words = tuple(TranscriptWord(w.begin_ms, w.end_ms, "", w.punctuation, True) if hit
                          else w for w, hit in red.words(event.words, event.text, r.removed))
        settled = event.settled
        if settled:
            settled = common_prefix(red.text(settled).text, r.text)
        return replace(event, text=r.text, words=words, settled=settled,
                       redaction=TranscriptRedaction(red.mode, tuple(
                           RedactionSpan(s.type, s.begin, s.end) for s in r.spans)))

    # --- characteristics and live categories ----------------------------------------------
    def note_final(self, record: Any, event: TranscriptEvent, redacted: TranscriptEvent
                   ) -> list[Match]:
        """Add an (unredacted) final to the record's accumulators; the live matches."""
        if self.enabled:
            segs = chx.sentence_segments(((w.begin_ms, w.end_ms) for w in event.words),
                                         event.begin_ms, event.end_ms)
            chx.add_segments(record.segments, segs)
            n_words, n_chars = chx.word_counts(w.text for w in event.words)
            record.words += n_words
            record.chars += n_chars
            chx.add_polarity(record.polar, event.begin_ms, event.end_ms,
                             event.emotion.polarity if event.emotion else None)
        if not self.rules:
            return []
        texts = (event.text, redacted.text)
        for c in self.rules.categories:  # first sentence meeting each end-of-call condition
            if not c.live and c.says and c.name not in record.cat_said and \
                    c.said_in(event.role, event.begin_ms, texts):
                record.cat_said[c.name] = [event.channel, event.begin_ms, event.end_ms]
        done = {m[0] for m in record.categories}
        matches = self.rules.on_final(event.channel, event.role, event.sentence_id,
                                      event.begin_ms, event.end_ms, texts, done)
        for m in matches:
            record.categories.append([m.name, m.channel, m.begin_ms, m.end_ms, m.trigger])
        return matches

    def summarise(self, records: dict[int, Any], duration_ms: int
                  ) -> tuple[dict[int, dict] | None, dict | None, list[Match],
                             tuple[dict, ...] | None]:
        """(per-channel analytics, call analytics, categories decided now, the summary's
        category list) for the records of every channel of a call."""
        if not self.enabled and not self.rules:
            return None, None, [], None
        per, call = chx.analyse_call(
            {ch: {"role": r.role, "segments": r.segments, "words": r.words, "chars": r.chars,
                  "polar": r.polar, "loud": r.loud} for ch, r in records.items()}, duration_ms)
        found: list[list] = []
        for r in records.values():
            found.extend(r.categories)
        found.sort(key=lambda m: (m[2], m[1] if m[1] is not None else -1))
        now: list[Match] = []
        if self.rules:
            said: dict[str, list[int]] = {}
            for r in records.values():
                for name, first in r.cat_said.items():
                    if name not in said or first[1] < said[name][1]:
                        said[name] = first
            already = {m[0] for m in found}
            now = self.rules.at_end(said, {ch: {"role": records[ch].role, **a}
                                           for ch, a in per.items()}, call, duration_ms,
                                    already)
        listed, seen = [], set()
        for name, ch, b, e, *_ in found + [[m.name, m.channel, m.begin_ms, m.end_ms]
                                           for m in now]:
            if name not in seen:
                seen.add(name)
                listed.append({"name": name, "channel": ch, "begin_ms": int(b),
                               "end_ms": int(e)})
        if not self.enabled:
            return None, None, now, tuple(listed) if self.rules else None
        return per, call, now, tuple(listed) if self.rules else None


def category_event(call_id: str, m: Match, created_at_ms: int | None = None) -> CategoryEvent:
    return CategoryEvent(call_id=call_id, name=m.name, channel=m.channel, role=m.role,
                         begin_ms=int(m.begin_ms), end_ms=int(max(m.begin_ms, m.end_ms)),
                         trigger=m.trigger, sentence_id=m.sentence_id,
                         created_at_ms=created_at_ms)
