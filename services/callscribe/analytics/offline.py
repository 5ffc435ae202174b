"""The worker's analytics for a recording (``callscribe transcribe --analytics``), no Kafka.

:func:`analyse_recording` runs the recognised sentences of a file through the same steps the
pipeline worker applies to a call: redaction (:meth:`CallAnalytics.redact`), the channel
accumulators and live categories (:meth:`CallAnalytics.note_final`), then the summary's
characteristics and end-of-call categories (:meth:`CallAnalytics.summarise`).  The result is
one JSON document: the CallSummary's analytics, per channel and for the call, the categories,
and the (redacted) sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from callscribe.analytics.live import CallAnalytics
from callscribe.pipeline.calls import ChannelRecord
from callscribe.pipeline.codec import transcript_from_final
from callscribe.recognition.events import FinalSentence


def analyse_recording(results: Sequence[tuple[int, FinalSentence]], *, roles: Sequence[str],
                      duration_ms: int, levels: dict[int, list[float]],
                      analytics: CallAnalytics, call_id: str = "recording",
                      engine: str = "-", model: str = "-") -> dict[str, Any]:
    records = {ch: ChannelRecord(role=roles[ch] if ch < len(roles) else f"ch{ch}")
               for ch in range(max(len(roles), 1 + max((c for c, _ in results), default=0)))}
    for ch, lv in levels.items():
        if ch in records:
            records[ch].loud = list(lv)
    sentences = []
    for ch, s in results:
        rec = records[ch]
        clear = transcript_from_final(call_id, ch, rec.role, s, engine, model)
        red = analytics.redact(clear)
        analytics.note_final(rec, clear, red)
        rec.count += 1
        d = {"channel": ch, "role": rec.role, "sentence_id": red.sentence_id,
             "begin_ms": red.begin_ms, "end_ms": red.end_ms, "text": red.text,
             "language": red.language,
             "words": [w.to_dict() for w in red.words]}
        if red.emotion is not None:
            d["emotion"] = red.emotion.to_dict()
        if red.redaction is not None:
            d["redaction"] = red.redaction.to_dict()
        sentences.append(d)
    per, call, _now, listed = analytics.summarise(records, duration_ms)
    return {
        "duration_ms": duration_ms,
        "channels": [{"channel": ch, "role": records[ch].role,
                      "sentence_count": records[ch].count, **(per or {}).get(ch, {})}
                     for ch in sorted(records)],
        "call": call,
        "categories": list(listed or ()),
        "sentences": sentences,
    }
