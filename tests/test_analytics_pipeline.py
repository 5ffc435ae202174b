"""Call analytics end to end on a stereo call built from real recordings (analytics_call.py):
``callscribe transcribe --analytics`` (no Kafka), then a ``callscribe worker`` on a REAL broker
with the real model: redacted finals and partials, the summary's characteristics, category
events, and a raw scan of every topic for clear-text PII.

Tolerance for times: talk comes from Whisper's word timestamps and the truth from the audio
(the first/last 20 ms frame above -40 dBFS of each placed clip), so times are compared within
``TOL_MS`` = 400 ms; counts are exact.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiokafka import AIOKafkaConsumer
from analytics_call import SECRETS, build_call
from audiogen import have_tools
from kafka_broker import KafkaBroker, make_kafka_fixture
from pipeline_helpers import (WorkerProcess, dead_letters, finals, has_summaries,
                              pipeline_settings, read_results, summaries)

from callscribe.analytics.pii import find_entities
from callscribe.pipeline.codec import (AudioOptions, CategoryEvent, RedactionOption,
                                       TranscriptEvent)
from callscribe.pipeline.producer import produce_file
from callscribe.pipeline.topics import ensure_topics

pytestmark = pytest.mark.shared_audio
analytics_broker = make_kafka_fixture(scope="module")
TOL_MS = 400
EN = AudioOptions(language_hints=("en",))
#: a call's own redaction (what ``callscribe produce --redact CARD,PHONE,SSN --redact-mode
#: drop`` sends): drop instead of the worker's mask
DROP = AudioOptions(language_hints=("en",),
                    redaction=RedactionOption(("CARD", "PHONE", "SSN"), "drop"))
RULES = {"version": 1, "categories": [
    {"name": "greeting", "role": "agent", "phrases": ["thank you for calling"],
     "window": {"to_ms": 10000}},
    {"name": "no_goodbye", "role": "agent", "absent": True,
     "phrases": ["goodbye", "have a nice day"]},
    {"name": "card_given", "role": "customer", "patterns": [r"\[CARD\]"]},
    {"name": "long_silence", "characteristics": {"longest_non_talk_ms": {"gt": 8000}}},
    {"name": "customer_interrupts", "role": "customer",
     "characteristics": {"interruptions": {"ge": 1}}},
    {"name": "never_said", "phrases": ["purple elephant"]},
    {"name": "greeting_late", "role": "agent", "phrases": ["thank you for calling"],
     "window": {"from_ms": 10000}},
]}
EXPECTED_CATEGORIES = ["greeting", "card_given", "no_goodbye", "long_silence",
                       "customer_interrupts"]


@pytest.fixture(scope="module")
def call(shared_audio: Path, tmp_path_factory):
    if not have_tools("espeak-ng", "sox"):
        pytest.skip("espeak-ng and sox are needed")
    d = tmp_path_factory.mktemp("call")
    path, truth = build_call(shared_audio, d)
    rules = d / "rules.json"
    rules.write_text(json.dumps(RULES))
    return path, truth, rules


def near(got: int, want: int) -> bool:
    return abs(got - want) <= TOL_MS


def check_call_analytics(call_doc: dict, channels: dict[int, dict], truth) -> None:
    """The characteristics against the call's layout (exact counts, times within TOL_MS)."""
    ints = call_doc["interruptions"]
    assert ints["count"] == 2, ints
    got = [(e["by_role"], e["of_role"], e["begin_ms"], e["end_ms"]) for e in ints["events"]]
    for (by, of, b, e), (tby, tof, tb, te) in zip(got, truth.interruptions):
        assert (by, of) == (tby, tof)
        assert near(b, tb) and near(e, te), (got, truth.interruptions)
    assert ints["total_ms"] == sum(e - b for _, _, b, e in got)
    gap = call_doc["longest_non_talk"]
    assert near(gap["begin_ms"], truth.longest_gap[0]) and \
        near(gap["end_ms"], truth.longest_gap[1]), (gap, truth.longest_gap)
    # non-talk: at least the long gap, at most the call minus what each side surely said
    assert call_doc["non_talk_ms"] >= gap["end_ms"] - gap["begin_ms"]
    assert call_doc["talk_ms"] + call_doc["non_talk_ms"] == truth.duration_ms or \
        abs(call_doc["talk_ms"] + call_doc["non_talk_ms"] - truth.duration_ms) <= 200
    assert [channels[0]["interruptions"], channels[0]["interrupted"]] == [1, 1]
    assert [channels[1]["interruptions"], channels[1]["interrupted"]] == [1, 1]
    for ch in (0, 1):
        a = channels[ch]
        assert 100 < a["words_per_minute"] < 300, a  # read speech and espeak
        assert -35 < a["loudness"]["average_dbfs"] < -10 and a["loudness"]["peak_dbfs"] <= 0
        assert len(a["polarity_by_quarter"]) == 4


def check_redacted_finals(sentences: list[dict]) -> None:
    """The card, phone and SSN sentences: tags in the text, spans on the tags, words emptied."""
    tagged = {}
    for s in sentences:
        for ent in (s.get("redaction") or {}).get("entities", []):
            assert s["text"][ent["begin"]:ent["end"]] == f"[{ent['type']}]", s
            tagged[ent["type"]] = s
    assert set(tagged) == {"CARD", "PHONE", "SSN"}, [s["text"] for s in sentences]
    for kind, s in tagged.items():
        emptied = [w for w in s["words"] if w.get("redacted")]
        assert emptied and all(w["text"] == "" for w in emptied)
        assert all(s["begin_ms"] <= w["begin_ms"] <= w["end_ms"] <= s["end_ms"]
                   for w in emptied)
        assert s["text"].startswith({"CARD": "My card number is [CARD]",
                                     "PHONE": "You can call me",
                                     "SSN": "My Social Security number is [SSN]"}[kind]), s
    for s in sentences:
        assert not find_entities(s["text"]), s["text"]


def test_transcribe_analytics_on_a_stereo_call(call, tmp_path: Path) -> None:
    path, truth, rules = call
    env = {**os.environ, "CALLSCRIBE_ANALYTICS_RULES_FILE": str(rules),
           "CALLSCRIBE_LOG_LEVEL": "warning"}
    out = subprocess.run([sys.executable, "-m", "callscribe.cli", "transcribe", "--analytics",
                          "--no-progress", "--language", "en", str(path)],
                         env=env, capture_output=True, text=True, timeout=600, check=True)
    doc = json.loads(out.stdout)
    assert doc["duration_ms"] == truth.duration_ms
    assert [c["role"] for c in doc["channels"]] == ["agent", "customer"]
    check_call_analytics(doc["call"], {c["channel"]: c for c in doc["channels"]}, truth)
    check_redacted_finals(doc["sentences"])
    assert [c["name"] for c in doc["categories"]] == EXPECTED_CATEGORIES
    greeting = doc["categories"][0]
    assert greeting["channel"] == 0 and near(greeting["begin_ms"], truth.greeting_ms[0])
    for s in doc["sentences"]:
        assert not any(d in re.sub(r"\D", "", s["text"]) for d in SECRETS), s["text"]


# --- the Kafka worker ----------------------------------------------------------------------


def strings(obj: Any, out: list[str]) -> list[str]:
    """Every string in a decoded record (base64 ``pending`` finals of the table decoded)."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k == "pending" and isinstance(v, str):
                strings(msgpack.unpackb(base64.b64decode(v), raw=False), out)
            elif k != "payload":
                strings(k, out)
                strings(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            strings(v, out)
    return out


def clear_pii(value: bytes | None) -> list[str]:
    """The PII found in a raw record's value (msgpack or JSON): [] when there is none."""
    if not value:
        return []
    try:
        obj = msgpack.unpackb(value, raw=False)
    except Exception:
        obj = json.loads(value)
    found = []
    for s in strings(obj, []):
        found += [f"{e.type}:{s[e.begin:e.end]}" for e in find_entities(s)]
        digits = re.sub(r"\D", "", s)
        found += [f"digits:{d}" for d in SECRETS if d in digits]
    return found


async def scan_topics(bootstrap: str) -> dict[str, list[str]]:
    """Every record of every topic on the broker, read raw: topic -> the PII found."""
    lister = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await lister.start()
    try:
        topics = sorted(t for t in await lister.topics() if not t.startswith("__"))
    finally:
        await lister.stop()
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while len({tp.topic for tp in consumer.assignment()}) < len(topics):
            assert loop.time() < deadline, "topics not assigned within 120 s"
            await consumer.getmany(timeout_ms=200)  # drives the metadata; nothing read yet
            await consumer.seek_to_beginning()
        tps = sorted(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        found: dict[str, list[str]] = {t: [] for t in topics}
        seen: dict[str, int] = {t: 0 for t in topics}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert loop.time() < deadline, "topics not read within 120 s"
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    if r.offset < ends[tp]:
                        seen[tp.topic] += 1
                        found[tp.topic] += clear_pii(r.value)
        return {t: found[t] for t in topics if seen[t]}
    finally:
        await consumer.stop()


async def test_worker_redacts_and_analyses_a_call(call, analytics_broker: KafkaBroker,
                                                  tmp_path: Path) -> None:
    path, truth, rules = call
    settings = pipeline_settings(analytics_broker.bootstrap, partitions=2,
                                 kafka_topic_clear_transcripts=f"clear-{uuid.uuid4().hex[:6]}")
    await ensure_topics(None, settings, deadline_s=30)
    worker = WorkerProcess(settings, tmp_path / "worker.log",
                           CALLSCRIBE_ANALYTICS_RULES_FILE=str(rules)).start()
    try:
        worker.wait_assigned(timeout=120)
        call_id, dropped = f"call-{uuid.uuid4().hex[:6]}", f"drop-{uuid.uuid4().hex[:6]}"
        await produce_file(path, call_id, ["agent", "customer"], settings=settings,
                           options=EN)
        await produce_file(path, dropped, ["agent", "customer"], settings=settings,
                           options=DROP)
        topics = [settings.kafka_topic_transcripts, settings.kafka_topic_partials,
                  settings.kafka_topic_analytics, settings.kafka_topic_dead_letters]
        records = await read_results(settings.kafka_bootstrap, topics,
                                     has_summaries(call_id, dropped), timeout=900)
    finally:
        worker.stop()
    assert not dead_letters(records)
    [summary] = summaries(records, call_id)
    channels = {c.channel: c.analytics for c in summary.channels}
    check_call_analytics(summary.analytics, channels, truth)
    check_redacted_finals([f.to_dict() for f in finals(records, call_id)])
    # partials: never a digit run that could be the start of a number, never an entity
    partials = [r for _, r in records if isinstance(r, TranscriptEvent) and not r.final
                and r.call_id == call_id]
    assert partials
    for p in partials:
        runs = re.findall(r"\d[\d ,.-]*", p.text)
        assert not find_entities(p.text), p.text
        assert all(len(re.sub(r"\D", "", r)) < 4 for r in runs), p.text
    # categories: live ones as soon as their sentence was out, the rest before the summary
    events = [(t, r) for t, r in records if isinstance(r, CategoryEvent)
              and r.call_id == call_id]
    assert {t for t, _ in events} == {settings.kafka_topic_analytics}
    assert [r.name for _, r in events] == EXPECTED_CATEGORIES
    assert [(r.name, r.trigger) for _, r in events][:2] == [("greeting", "phrase"),
                                                           ("card_given", "pattern")]
    assert [c["name"] for c in summary.categories] == EXPECTED_CATEGORIES
    # the call with its own option: entities dropped, empty spans where they were; so the
    # "[CARD]" pattern category does not match it
    texts = {}
    for f in finals(records, dropped):
        for ent in f.redaction.entities if f.redaction else ():
            assert f.redaction.mode == "drop" and ent.begin == ent.end
            texts[ent.type] = f.text
    assert set(texts) == {"CARD", "PHONE", "SSN"}, texts
    assert texts["CARD"].startswith("My card number is .") and "[" not in texts["CARD"]
    [other] = summaries(records, dropped)
    assert [c["name"] for c in other.categories] == [n for n in EXPECTED_CATEGORIES
                                                     if n != "card_given"]
    # no clear-text PII in any record of any topic; the clear-text topic has it (so the scan
    # does find PII where there is some)
    found = await scan_topics(settings.kafka_bootstrap)
    clear = found.pop(settings.kafka_topic_clear_transcripts)
    assert {f.split(":")[0] for f in clear} >= {"CARD", "PHONE"}, clear
    assert set(found) >= {settings.kafka_topic_transcripts, settings.kafka_topic_partials,
                          settings.kafka_topic_analytics, settings.kafka_topic_audio,
                          f"{settings.kafka_worker_group}-calls-changelog"}, sorted(found)
    assert all(v == [] for v in found.values()), {k: v for k, v in found.items() if v}
