"""Hotword vocabularies (the DashScope ``speech-biasing`` customization API), kept in SQLite.

A vocabulary is a list of ``{"text", "weight", "lang"}`` entries under an id like
``vocab-<prefix>-<32 hex>``.  DashScope's limits are enforced here with messages that say
what to fix: at most 500 entries; weight an integer 1..5; an entry at most 10 Chinese
characters or 5 English words; a prefix of at most 10 lowercase letters or digits.

Every vocabulary belongs to an *owner* (the API key's id, ``anonymous`` without keys): one
key never sees or uses another key's vocabularies.  The store is safe to share between
threads (one connection, one lock; WAL journal).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from callscribe.errors import SessionError
from callscribe.wire import WireError, parse_int

MAX_ENTRIES = 500
MAX_CJK_CHARS = 10
MAX_WORDS = 5
MAX_TEXT_CHARS = 100
#: largest ``page_index`` of list_vocabulary (OFFSET page_index * page_size stays in SQLite's
#: 64-bit range; no owner has that many pages under any quota)
MAX_PAGE_INDEX = 1_000_000
_PREFIX = re.compile(r"^[a-z0-9]{1,10}$")
_ID = re.compile(r"^vocab-[a-z0-9]{1,10}-[0-9a-f]{32}$")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_LANG = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


@dataclass(frozen=True, slots=True)
class Hotword:
    text: str
    weight: int
    lang: str | None = None


class VocabularyError(SessionError):
    """A vocabulary request broke a rule; the message says which."""

    code = "InvalidParameter"


class VocabularyNotFound(VocabularyError):
    code = "VocabularyNotFound"


class VocabularyQuotaExceeded(VocabularyError):
    """The owner (API key) holds as many vocabularies, or as many bytes of them, as its quota
    allows (``CALLSCRIBE_VOCABULARY_MAX_PER_KEY`` / ``..._MAX_BYTES_PER_KEY``)."""

    code = "VocabularyQuotaExceeded"


@dataclass(frozen=True, slots=True)
class Quota:
    """What one owner may store: vocabularies, and bytes of their entries (stored JSON)."""

    max_count: int
    max_bytes: int


def validate_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise VocabularyError(f"prefix {prefix!r} is invalid: use 1 to 10 lowercase letters "
                              "or digits")
    return prefix


def validate_entries(entries: Any) -> list[Hotword]:
    """Check a vocabulary against DashScope's limits; return it as Hotwords."""
    if not isinstance(entries, list) or not entries:
        raise VocabularyError("vocabulary must be a non-empty list of "
                              '{"text": ..., "weight": 1-5, "lang": ...} entries')
    if len(entries) > MAX_ENTRIES:
        raise VocabularyError(f"vocabulary has {len(entries)} entries; the limit is "
                              f"{MAX_ENTRIES}")
    out: list[Hotword] = []
    seen: set[str] = set()
    for i, e in enumerate(entries):
        where = f"vocabulary[{i}]"
        if not isinstance(e, dict):
            raise VocabularyError(f"{where} must be an object with text, weight and lang")
        text = e.get("text")
        if not isinstance(text, str) or not text.strip():
            raise VocabularyError(f"{where}.text must be a non-empty string")
        text = " ".join(text.split())
        if len(text) > MAX_TEXT_CHARS:
            raise VocabularyError(f"{where}.text is longer than {MAX_TEXT_CHARS} characters")
        cjk = len(_CJK.findall(text))
        if cjk:
            n = len(text.replace(" ", ""))
            if n > MAX_CJK_CHARS:
                raise VocabularyError(f"{where}.text {text!r} has {n} characters; an entry "
                                      f"with Chinese holds at most {MAX_CJK_CHARS}")
        else:
            n = len(text.split())
            if n > MAX_WORDS:
                raise VocabularyError(f"{where}.text {text!r} has {n} words; an entry holds "
                                      f"at most {MAX_WORDS} English words")
        weight = e.get("weight")
        if isinstance(weight, float) and weight.is_integer():
            weight = int(weight)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 5:
            raise VocabularyError(f"{where}.weight {weight!r} is invalid: an integer from 1 "
                                  "to 5")
        lang = e.get("lang")
        if lang is not None and (not isinstance(lang, str) or not _LANG.match(lang)):
            raise VocabularyError(f"{where}.lang {lang!r} is invalid: a language code such as "
                                  "zh or en")
        if text.lower() in seen:
            raise VocabularyError(f"{where}.text {text!r} appears twice")
        seen.add(text.lower())
        out.append(Hotword(text, weight, lang))
    return out


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _as_dicts(words: list[Hotword]) -> list[dict[str, Any]]:
    return [{"text": w.text, "weight": w.weight, "lang": w.lang} for w in words]


class VocabularyStore:
    """CRUD on vocabularies; ``path`` may be ``":memory:"`` for tests."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        with self._lock:
            if str(path) != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("""CREATE TABLE IF NOT EXISTS vocabularies (
                vocabulary_id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                prefix TEXT NOT NULL,
                target_model TEXT NOT NULL,
                entries TEXT NOT NULL,
                gmt_create TEXT NOT NULL,
                gmt_modified TEXT NOT NULL)""")
            self._db.execute("CREATE INDEX IF NOT EXISTS vocab_owner ON vocabularies "
                             "(owner, gmt_create)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, owner: str, target_model: str, prefix: str, entries: Any,
               quota: Quota | None = None) -> str:
        """A new vocabulary of ``owner``; with ``quota``, refused (VocabularyQuotaExceeded)
        when it would take the owner over its count or bytes (checked and inserted under one
        lock, so concurrent creates cannot overshoot)."""
        if not isinstance(target_model, str) or not target_model:
            raise VocabularyError("target_model is required (the ASR model the vocabulary is "
                                  "for, e.g. fun-asr-realtime)")
        validate_prefix(prefix)
        words = validate_entries(entries)
        vid = f"vocab-{prefix}-{uuid.uuid4().hex}"
        now = _now()
        doc = json.dumps(_as_dicts(words), ensure_ascii=False)
        with self._lock:
            if quota is not None:
                self._check_quota(owner, quota, len(doc.encode("utf-8")), new=True)
            self._db.execute("INSERT INTO vocabularies VALUES (?,?,?,?,?,?,?)",
                             (vid, owner, prefix, target_model, doc, now, now))
        return vid

    def usage(self, owner: str, exclude: str | None = None) -> tuple[int, int]:
        """(vocabularies, bytes of their entries) held by ``owner``."""
        with self._lock:
            return self._usage(owner, exclude)

    def _usage(self, owner: str, exclude: str | None = None) -> tuple[int, int]:
        n, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(entries AS BLOB))), 0) FROM vocabularies "
            "WHERE owner=? AND vocabulary_id IS NOT ?", (owner, exclude)).fetchone()
        return int(n), int(size)

    def _check_quota(self, owner: str, quota: Quota, size: int, *, new: bool,
                     replacing: str | None = None) -> None:
        n, used = self._usage(owner, replacing)
        if new and n >= quota.max_count:
            raise VocabularyQuotaExceeded(
                f"this API key holds {n} vocabularies, its quota is {quota.max_count} "
                "(CALLSCRIBE_VOCABULARY_MAX_PER_KEY); delete one to make room")
        if used + size > quota.max_bytes:
            raise VocabularyQuotaExceeded(
                f"this API key's vocabularies would take {used + size} bytes, its quota is "
                f"{quota.max_bytes} (CALLSCRIBE_VOCABULARY_MAX_BYTES_PER_KEY); delete or shrink "
                "vocabularies to make room")

    def list(self, owner: str, prefix: str | None = None, page_index: int = 0,
             page_size: int = 10) -> list[dict[str, Any]]:
        if prefix is not None:
            validate_prefix(prefix)
        if not isinstance(page_index, int) or isinstance(page_index, bool) \
                or not 0 <= page_index <= MAX_PAGE_INDEX:
            raise VocabularyError(f"page_index must be an integer from 0 to {MAX_PAGE_INDEX}")
        if not isinstance(page_size, int) or isinstance(page_size, bool) \
                or not 1 <= page_size <= 100:
            raise VocabularyError("page_size must be an integer from 1 to 100")
        sql = "SELECT vocabulary_id, gmt_create, gmt_modified FROM vocabularies WHERE owner=?"
        args: list[Any] = [owner]
        if prefix is not None:
            sql += " AND prefix=?"
            args.append(prefix)
        sql += " ORDER BY gmt_create DESC, vocabulary_id LIMIT ? OFFSET ?"
        args += [page_size, page_index * page_size]
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{"vocabulary_id": r[0], "gmt_create": r[1], "gmt_modified": r[2],
                 "status": "OK"} for r in rows]

    def _row(self, owner: str, vocabulary_id: Any) -> tuple:
        if not isinstance(vocabulary_id, str) or not _ID.match(vocabulary_id):
            raise VocabularyNotFound(f"vocabulary_id {vocabulary_id!r} does not exist (ids look "
                                     "like vocab-<prefix>-<32 hex digits>)")
        row = self._db.execute("SELECT target_model, entries, gmt_create, gmt_modified FROM "
                               "vocabularies WHERE vocabulary_id=? AND owner=?",
                               (vocabulary_id, owner)).fetchone()
        if row is None:
            raise VocabularyNotFound(f"vocabulary_id {vocabulary_id} does not exist")
        return row

    def get(self, owner: str, vocabulary_id: str) -> dict[str, Any]:
        with self._lock:
            target_model, entries, created, modified = self._row(owner, vocabulary_id)
        return {"vocabulary": json.loads(entries), "target_model": target_model,
                "gmt_create": created, "gmt_modified": modified, "status": "OK"}

    def update(self, owner: str, vocabulary_id: str, entries: Any,
               quota: Quota | None = None) -> None:
        words = validate_entries(entries)
        doc = json.dumps(_as_dicts(words), ensure_ascii=False)
        with self._lock:
            self._row(owner, vocabulary_id)
            if quota is not None:
                self._check_quota(owner, quota, len(doc.encode("utf-8")), new=False,
                                  replacing=vocabulary_id)
            self._db.execute("UPDATE vocabularies SET entries=?, gmt_modified=? WHERE "
                             "vocabulary_id=? AND owner=?",
                             (doc, _now(), vocabulary_id, owner))

    def delete(self, owner: str, vocabulary_id: str) -> None:
        with self._lock:
            self._row(owner, vocabulary_id)
            self._db.execute("DELETE FROM vocabularies WHERE vocabulary_id=? AND owner=?",
                             (vocabulary_id, owner))

    def hotwords(self, owner: str, vocabulary_id: str) -> list[Hotword]:
        """The entries of ``vocabulary_id`` for recognition; VocabularyNotFound if absent."""
        with self._lock:
            _, entries, _, _ = self._row(owner, vocabulary_id)
        return [Hotword(e["text"], int(e["weight"]), e.get("lang")) for e in json.loads(entries)]


def load_hotwords(vocabulary_file: str | Path | None, specs=()) -> list[Hotword]:
    """Hotwords for the command line: a vocabulary file (the DashScope JSON list, or one
    ``text[:weight]`` per line) plus ``text[:weight]`` specs (weight 1..5, default 4),
    checked against the same limits as the vocabulary API."""
    entries: list = []
    if vocabulary_file:
        path = Path(vocabulary_file)
        if not path.is_file():
            raise VocabularyError(f"{path}: no such vocabulary file")
        raw = path.read_text(encoding="utf-8")
        if raw.lstrip().startswith(("[", "{")):
            doc = json.loads(raw)
            entries.extend(doc.get("vocabulary", []) if isinstance(doc, dict) else doc)
        else:
            entries.extend(_entry(line) for line in raw.splitlines() if line.strip())
    entries.extend(_entry(h) for h in specs)
    return validate_entries(entries) if entries else []


def _entry(spec: str) -> dict:
    text, _, weight = spec.strip().rpartition(":")
    try:
        value = parse_int(weight.strip(), max_digits=3)
    except WireError:
        value = None
    if not text or value is None:  # "word:²" is text, not a weight (str.isdigit() is true)
        text, value = spec.strip(), 4
    return {"text": text, "weight": value}

