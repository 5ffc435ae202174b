"""The SQLite hotword vocabulary store and DashScope's limits."""

from __future__ import annotations

import re
import threading

import pytest

from callscribe.recognition.vocabulary import (Hotword, VocabularyError, VocabularyNotFound,
                                               VocabularyStore, validate_entries)


@pytest.fixture
def store(tmp_path):
    s = VocabularyStore(tmp_path / "v.sqlite3")
    yield s
    s.close()


WORDS = [{"text": "Dashwood", "weight": 4, "lang": "en"},
         {"text": "滨海新区", "weight": 5, "lang": "zh"}]


def test_crud(store):
    vid = store.create("k1", "fun-asr-realtime", "shop1", WORDS)
    assert re.fullmatch(r"vocab-shop1-[0-9a-f]{32}", vid)
    assert store.hotwords("k1", vid) == [Hotword("Dashwood", 4, "en"), Hotword("滨海新区", 5, "zh")]
    got = store.get("k1", vid)
    assert got["vocabulary"] == WORDS and got["target_model"] == "fun-asr-realtime"
    assert got["status"] == "OK"
    listed = store.list("k1")
    assert [v["vocabulary_id"] for v in listed] == [vid]
    assert set(listed[0]) == {"vocabulary_id", "gmt_create", "gmt_modified", "status"}
    store.update("k1", vid, [{"text": "Marianne", "weight": 2}])
    assert store.hotwords("k1", vid) == [Hotword("Marianne", 2, None)]
    store.delete("k1", vid)
    with pytest.raises(VocabularyNotFound):
        store.get("k1", vid)


def test_owners_are_isolated(store):
    vid = store.create("k1", "fun-asr-realtime", "a", WORDS)
    assert store.list("k2") == []
    for op in (lambda: store.get("k2", vid), lambda: store.hotwords("k2", vid),
               lambda: store.delete("k2", vid), lambda: store.update("k2", vid, WORDS)):
        with pytest.raises(VocabularyNotFound):
            op()


def test_list_prefix_and_pages(store):
    ids = [store.create("k", "fun-asr-realtime", "p" + str(i % 2), WORDS) for i in range(5)]
    assert {v["vocabulary_id"] for v in store.list("k", prefix="p0")} == set(ids[0::2])
    pages = [store.list("k", page_index=i, page_size=2) for i in range(3)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert {v["vocabulary_id"] for p in pages for v in p} == set(ids)


def test_persists_across_reopen(tmp_path):
    s = VocabularyStore(tmp_path / "v.sqlite3")
    vid = s.create("k", "fun-asr-realtime", "x", WORDS)
    s.close()
    s = VocabularyStore(tmp_path / "v.sqlite3")
    assert len(s.hotwords("k", vid)) == 2
    s.close()


@pytest.mark.parametrize("entries,message", [
    ([], "non-empty list"),
    ([{"text": f"w{i}", "weight": 1} for i in range(501)], "501 entries; the limit is 500"),
    ([{"text": "a", "weight": 0}], "weight 0 is invalid"),
    ([{"text": "a", "weight": 6}], "weight 6 is invalid"),
    ([{"text": "a", "weight": 2.5}], "weight 2.5 is invalid"),
    ([{"text": "a", "weight": True}], "weight True is invalid"),
    ([{"text": "one two three four five six", "weight": 3}], "6 words; an entry holds at most 5"),
    ([{"text": "我想问我在滨海新区有房子", "weight": 3}], "12 characters"),
    ([{"text": "", "weight": 3}], "text must be a non-empty string"),
    ([{"text": "x", "weight": 3, "lang": "English!"}], "lang 'English!' is invalid"),
    ([{"text": "x", "weight": 3}, {"text": "X", "weight": 2}], "appears twice"),
    (["just a string"], "must be an object"),
])
def test_limits(entries, message):
    with pytest.raises(VocabularyError, match=re.escape(message)):
        validate_entries(entries)


def test_limits_at_the_edge():
    ok = [{"text": f"w{i}", "weight": 1 + i % 5} for i in range(500)]
    ok[0] = {"text": "one two three four five", "weight": 5}
    ok[1] = {"text": "我想问我在滨海新区有", "weight": 1}
    assert len(validate_entries(ok)) == 500


@pytest.mark.parametrize("prefix", ["", "UPPER", "elevenchars", "a-b", None, 5])
def test_bad_prefix(store, prefix):
    with pytest.raises(VocabularyError, match="prefix"):
        store.create("k", "fun-asr-realtime", prefix, WORDS)


def test_unknown_ids(store):
    with pytest.raises(VocabularyNotFound, match="does not exist"):
        store.hotwords("k", "vocab-nope-" + "0" * 32)
    with pytest.raises(VocabularyNotFound, match="ids look like"):
        store.get("k", "'; DROP TABLE vocabularies; --")


def test_thread_safe(store):
    errors = []

    def work(n):
        try:
            for _ in range(20):
                vid = store.create(f"k{n}", "fun-asr-realtime", "t", WORDS)
                store.hotwords(f"k{n}", vid)
                store.update(f"k{n}", vid, WORDS[:1])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(len(store.list(f"k{n}", page_size=100)) for n in range(4)) == 80
