"""Call characteristics, categories and the worker's analytics glue: pure, exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from callscribe.analytics import characteristics as chx
from callscribe.analytics.categories import load_rules, parse_rules
from callscribe.analytics.live import CallAnalytics, category_event
from callscribe.analytics.redact import Redactor
from callscribe.errors import ConfigurationError
from callscribe.pipeline.calls import ChannelRecord
from callscribe.pipeline.codec import (AudioChunk, AudioOptions, CallSummary, ChannelSummary,
                                       RedactionOption, TranscriptEmotion, TranscriptEvent,
                                       TranscriptWord, decode, encode)


def test_sentence_segments_split_on_word_gaps() -> None:
    words = [(100, 400), (450, 800), (1200, 1500), (1790, 2000)]
    assert chx.sentence_segments(words, 0, 2500) == [[100, 800], [1200, 2000]]
    assert chx.sentence_segments([], 300, 900) == [[300, 900]]


def test_add_segments_merges_and_bounds() -> None:
    store: list = []
    chx.add_segments(store, [[0, 100], [200, 300]])
    chx.add_segments(store, [[250, 400], [1000, 1100]])
    assert store == [[0, 100], [200, 400], [1000, 1100]]
    chx.add_segments(store, [[2000, 2100]], max_n=3)  # the closest neighbours are joined
    assert store == [[0, 400], [1000, 1100], [2000, 2100]]


def test_non_talk_and_interruptions_exact() -> None:
    # agent talks 0-5 s and 12-20 s; the customer 4-8 s (starts inside the agent's turn:
    # interrupts for 1 s) and 18.5-25 s (1.5 s over the agent's end); nobody talks 8-12 s
    agent = [[0, 5000], [12000, 20000]]
    customer = [[4000, 8000], [18500, 25000]]
    events = chx.interruptions({0: ("agent", agent), 1: ("customer", customer)})
    assert events == [
        {"by_channel": 1, "by_role": "customer", "of_channel": 0, "of_role": "agent",
         "begin_ms": 4000, "end_ms": 5000},
        {"by_channel": 1, "by_role": "customer", "of_channel": 0, "of_role": "agent",
         "begin_ms": 18500, "end_ms": 20000}]
    everyone = chx.union(agent, customer)
    assert everyone == [[0, 8000], [12000, 25000]]
    assert chx.non_talk(everyone, 30000) == (4000 + 5000, (25000, 30000))
    assert chx.non_talk(everyone, 25000) == (4000, (8000, 12000))
    # a short overlap (under MIN_OVERLAP_MS) is a backchannel, not an interruption
    assert chx.interruptions({0: ("a", [[0, 5000]]), 1: ("c", [[4800, 6000]])}) == []


def test_loudness_of_a_known_signal() -> None:
    acc: list = [0.0, 0.0, 0.0]
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # RMS 0.3536: -9.0 dBFS
    chx.loudness_update(acc, tone)
    chx.loudness_update(acc, np.zeros(16000, np.float32))  # silence: not in the average
    out = chx.loudness_result(acc)
    assert out == {"average_dbfs": -9.0, "peak_dbfs": -6.0}
    assert acc[1] == 10
    assert chx.loudness_result([0.0, 0.0, 0.0]) is None


def test_talk_speed_and_polarity_quarters() -> None:
    assert chx.word_counts(["Hello", "world,", "你好"]) == (4, 12)
    pts: list = []
    for mid, pol in [(1000, "negative"), (2000, "negative"), (11000, "neutral"),
                     (35000, "positive"), (38000, "positive")]:
        chx.add_polarity(pts, mid - 500, mid + 500, pol)
    qs = chx.quarters(pts, 40000)
    assert [(q["polarity"], q["score"], q["sentences"]) for q in qs] == [
        ("negative", -1.0, 2), ("neutral", 0.0, 1), (None, None, 0), ("positive", 1.0, 2)]
    assert chx.trend(qs) == "improving"
    per, call = chx.analyse_call({
        0: {"role": "agent", "segments": [[0, 30000]], "words": 60, "chars": 300,
            "polar": pts, "loud": [0.0, 0.0, 0.0]},
        1: {"role": "customer", "segments": [], "words": 0, "chars": 0, "polar": [],
            "loud": None}}, 40000)
    assert per[0]["words_per_minute"] == 120.0 and per[0]["chars_per_minute"] == 600.0
    assert per[1]["words_per_minute"] is None and per[1]["polarity_trend"] is None
    assert call["non_talk_ms"] == 10000
    assert call["longest_non_talk"] == {"begin_ms": 30000, "end_ms": 40000}
    assert call["polarity_trend"] == "improving"


RULES = {"version": 1, "categories": [
    {"name": "greeting", "role": "agent", "phrases": ["thank you for calling"],
     "window": {"from_ms": 0, "to_ms": 60000}},
    {"name": "no_greeting", "role": "agent", "absent": True,
     "phrases": ["thank you for calling"], "window": {"to_ms": 60000}},
    {"name": "card_given", "patterns": [r"\[CARD\]"]},
    {"name": "cancel", "role": "customer", "phrases": ["cancel my account", "取消"]},
    {"name": "long_silence", "characteristics": {"longest_non_talk_ms": {"gt": 30000}}},
    {"name": "fast_agent", "role": "agent", "characteristics": {"words_per_minute": {"ge": 250}}},
    {"name": "angry_and_interrupting", "role": "customer", "phrases": ["ridiculous"],
     "characteristics": {"interruptions": {"ge": 1}}},
]}


def event(ch: int, role: str, sid: int, b: int, e: int, text: str,
          polarity: str | None = None) -> TranscriptEvent:
    words = tuple(TranscriptWord(b + i * 300, b + i * 300 + 250, w, "")
                  for i, w in enumerate(text.split()))
    return TranscriptEvent(
        call_id="c1", channel=ch, role=role, sentence_id=sid, begin_ms=b, end_ms=e, text=text,
        words=words, language="en",
        emotion=TranscriptEmotion(polarity, 0.9, "neutral", "t") if polarity else None,
        final=True, engine="e", model="m", idempotency_key=f"c1:{ch}:{sid}:{b}")


def test_categories_live_and_at_the_end() -> None:
    ca = CallAnalytics(Redactor(), parse_rules(RULES))
    agent, cust = ChannelRecord(role="agent"), ChannelRecord(role="customer")
    s1 = event(0, "agent", 1, 70000, 72000, "Thank you for calling, how can I help?")
    assert ca.note_final(agent, s1, ca.redact(s1)) == []  # after the 60 s window
    s2 = event(1, "customer", 1, 73000, 76000, "My card is 4532 0151 1283 0366")
    red = ca.redact(s2)
    assert red.text == "My card is [CARD]"
    m = ca.note_final(cust, s2, red)
    assert [(x.name, x.channel, x.begin_ms, x.trigger, x.sentence_id) for x in m] == [
        ("card_given", 1, 73000, "pattern", 1)]
    s3 = event(1, "customer", 2, 77000, 79000, "I want to CANCEL my account!")
    assert [x.name for x in ca.note_final(cust, s3, ca.redact(s3))] == ["cancel"]
    assert ca.note_final(cust, s3, ca.redact(s3)) == []  # once per channel
    s4 = event(1, "customer", 3, 78000, 80000, "this is ridiculous")
    assert ca.note_final(cust, s4, ca.redact(s4)) == []  # needs the characteristics too
    ev = category_event("c1", m[0], 5)
    assert decode(encode(ev)) == ev and ev.idempotency_key == "c1:category:card_given:1"
    per, call, now, listed = ca.summarise({0: agent, 1: cust}, 120000)
    # the customer's 78 s sentence starts inside their own... and inside no agent talk:
    # no interruption, so angry_and_interrupting does not match
    assert call["interruptions"]["count"] == 0
    assert call["longest_non_talk"] == {"begin_ms": 0, "end_ms": 70000}
    assert sorted((x.name, x.trigger) for x in now) == [("long_silence", "characteristics"),
                                                        ("no_greeting", "absence")]
    assert [c["name"] for c in listed] == ["card_given", "cancel", "no_greeting",
                                           "long_silence"]


def test_rules_file_yaml_and_errors(tmp_path: Path) -> None:
    y = tmp_path / "rules.yaml"
    y.write_text("version: 1\ncategories:\n  - name: refund\n    phrases: [refund]\n")
    assert [c.name for c in load_rules(y).categories] == ["refund"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "categories": [{"name": "x", "patterns": ["("]}]}))
    with pytest.raises(ConfigurationError, match=r"/categories/0/patterns/0: not a regular"):
        load_rules(bad)
    bad.write_text(json.dumps({"version": 1, "categories": [
        {"name": "x", "characteristics": {"words_per_minute": {"gt": 1}}}]}))
    with pytest.raises(ConfigurationError, match="words_per_minute not known for the call"):
        load_rules(bad)
    bad.write_text(json.dumps({"version": 1, "categories": [{"name": "x"}]}))
    with pytest.raises(ConfigurationError, match="/categories/0"):
        load_rules(bad)


def test_redacted_event_round_trips_and_keeps_word_times() -> None:
    ca = CallAnalytics.default()
    ev = event(0, "agent", 4, 1000, 5000, "call 138 1234 5678 now")
    red = ca.redact(ev)
    assert red.text == "call [PHONE] now"
    assert [(w.begin_ms, w.end_ms, w.text, w.redacted) for w in red.words] == [
        (1000, 1250, "call", None), (1300, 1550, "", True), (1600, 1850, "", True),
        (1900, 2150, "", True), (2200, 2450, "now", None)]
    assert [(s.type, s.begin, s.end) for s in red.redaction.entities] == [("PHONE", 5, 12)]
    assert decode(encode(red)) == red
    # the call's own option: drop e-mail only
    opts = {"redaction": {"entities": ["EMAIL"], "mode": "drop"}}
    assert ca.redact(ev, opts) is ev
    assert ca.redact(event(0, "agent", 5, 0, 1, "mail a@b.com"), opts).text == "mail "


def test_additive_fields_keep_old_records_valid() -> None:
    chunk = AudioChunk(call_id="c", channel=0, role="agent", seq=0, capture_time_ms=0,
                       offset_ms=0, format="pcm", sample_rate=16000, payload=b"\0\0",
                       options=AudioOptions(redaction=RedactionOption(("CARD",), "drop")))
    assert decode(encode(chunk)) == chunk
    plain = CallSummary(call_id="c", duration_ms=1, sentence_count=0, channels=(
        ChannelSummary(0, "agent", 1, 0, 1, 0, None),))
    d = plain.to_dict()
    assert "analytics" not in d and "categories" not in d and \
        "analytics" not in d["channels"][0]
    assert decode(encode(plain)) == plain


def test_produce_redact_options() -> None:
    from callscribe.cli import build_parser
    from callscribe.cli_produce import _redaction

    parse = build_parser().parse_args
    args = parse(["produce", "--call-id", "C1", "x.wav", "--redact", "phone, card",
                  "--redact-mode", "drop"])
    assert _redaction(args) == RedactionOption(("CARD", "PHONE"), "drop")
    assert _redaction(parse(["produce", "--call-id", "C1", "x.wav", "--redact", "none"])) == \
        RedactionOption((), None)
    assert _redaction(parse(["produce", "--call-id", "C1", "x.wav"])) is None
    with pytest.raises(ConfigurationError, match="PASSPORT"):
        _redaction(parse(["produce", "--call-id", "C1", "x.wav", "--redact", "passport"]))


def test_settings_are_validated_at_start(tmp_path: Path) -> None:
    from callscribe.settings import load_settings

    with pytest.raises(ConfigurationError, match=r"CALLSCRIBE_REDACT_ENTITIES: .*PASSPORT"):
        load_settings(redact_entities="CARD,PASSPORT")
    with pytest.raises(ConfigurationError, match=r"CALLSCRIBE_ANALYTICS_RULES_FILE: .*no such"):
        load_settings(analytics_rules_file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigurationError, match="two roles share a topic"):
        from callscribe.pipeline.topics import topic_specs

        topic_specs(load_settings(kafka_topic_clear_transcripts="callscribe.transcripts"))
    s = load_settings(redact_entities="card, phone", redact_mode="drop")
    ca = CallAnalytics.from_settings(s)
    assert ca.redactor == Redactor(frozenset({"CARD", "PHONE"}), "drop")
    assert not ca.rules and ca.clear_topic == ""


def test_partial_event_text_and_settled_are_redacted() -> None:
    from dataclasses import replace

    ca = CallAnalytics.default()
    p = replace(event(1, "customer", 7, 0, 3000, "my card is 4532 0151"), final=False,
                words=(), settled="my card is 4532 ", idempotency_key="c1:1:7:0:p3000")
    red = ca.redact(p)
    assert (red.text, red.settled) == ("my card is [NUMBER]", "my card is ")
    assert [(s.type, s.begin, s.end) for s in red.redaction.entities] == [("NUMBER", 11, 19)]
    assert decode(encode(red)) == red
