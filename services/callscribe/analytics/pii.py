"""PII detection in recognised text: pure functions, no I/O.

:func:`find_entities` returns the personal data found in a text as :class:`Entity` (type and
character span of the *original* text).  What it finds:

* ``CARD``: payment card numbers, 13-19 digits that pass the Luhn check;
* ``CN_ID``: Chinese resident identity numbers, 17 digits and a check character (0-9 or X)
  that passes ISO 7064 MOD 11-2, with a plausible birth date;
* ``SSN``: US social security numbers, 9 digits written 3-2-4 or said after "social
  security" / "SSN", with the SSA's rules (area not 000, 666 or 9xx; group not 00; serial
  not 0000);
* after a naming word ("card", "credit", 卡号 / "social security", "SSN" / "phone", "call
  me", 电话) 7-19 digits are a ``CARD``, 7-10 digits an ``SSN`` and 7-15 digits a ``PHONE``
  without the check: what recognition garbled, or a
  number said in pieces ("4532 0151, sorry, 4532 0151 ..."), is still redacted;
* ``PHONE``: Chinese mobiles (1[3-9] + 9 digits, optionally after 86), Chinese landlines
  (0 + area + number, 10-12 digits), NANP numbers (10 digits, [2-9]..[2-9].., optionally after
  1), any 8-15 digits after ``+``, and UK-style 0-led 11 digit numbers;
* ``IBAN``: two letters, two check digits and up to 30 letters/digits, mod-97 == 1;
* ``BANK_ACCOUNT``: 8-30 digits said after an account word (account, 账号, 账户, 卡号,
  银行卡, ...);
* ``EMAIL``: written (``a.b@c.com``) and spoken (``john dot smith at example dot com``,
  ``john点smith艾特example点com``).

Digits are read however the recogniser wrote them: ASCII or full-width digits, in groups
separated by spaces, dashes or dots, English digit words (``four five three two``, ``oh``,
``double five``, ``triple zero``) and Chinese digits (``四五三二``, ``幺``, ``两``, ``〇``).  A run
of such tokens (fillers such as ``uh``/``嗯`` in between are skipped) is one number; each run
is split, on token boundaries, into the longest pieces that validate.

:func:`trailing_number` finds a digit run at the end of a text (a partial that may still be
in the middle of saying a number), for :mod:`callscribe.analytics.redact`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

ENTITY_TYPES = ("CARD", "PHONE", "EMAIL", "IBAN", "BANK_ACCOUNT", "CN_ID", "SSN")
#: what a partial's unfinished trailing number is tagged as
PENDING_NUMBER = "NUMBER"

_EN_DIGITS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3",
              "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
              "nought": "0", "niner": "9"}
_EN_REPEAT = {"double": 2, "triple": 3}
_ZH_DIGITS = {"零": "0", "〇": "0", "○": "0", "一": "1", "幺": "1", "二": "2", "两": "2",
              "三": "3", "四": "4", "五": "5", "六": "6", "七": "7", "八": "8", "九": "9"}
_FILLERS = {"uh", "um", "er", "erm", "ah", "hmm", "嗯", "呃", "啊", "额"}
_SEPARATORS = set(" \t-‐–—.,，、·/()")
_TOKEN = re.compile(r"[0-9０-９]+|[A-Za-z]+(?:'[A-Za-z]+)?|[\u3400-\u9fff〇○]|\S", re.UNICODE)
_FULLWIDTH = str.maketrans("０１２３４５６７８９", "0123456789")

_ACCOUNT_WORDS = re.compile(r"(account|acct|账号|账户|帐号|帐户|卡号|银行卡|户号)", re.I)
_SSN_WORDS = re.compile(r"(social\s+security|\bssn\b|\bs\s?s\s?n\b)", re.I)
_CARD_WORDS = re.compile(r"(\bcard\b|credit|debit|卡号|信用卡|借记卡)", re.I)
_PHONE_WORDS = re.compile(r"(\bphone\b|\bcall\s+(?:me|us)\b|\breach\s+(?:me|us)\b|\bmobile\b|"
                          r"\bcell\b|\btelephone\b|电话|手机)", re.I)
_CONTEXT_CHARS = 40
_GAP_WORDS = re.compile(r"[A-Za-z]+|[\u3400-\u9fff]")
#: the longest run of digit tokens looked at (longer runs are split into windows)
MAX_RUN_TOKENS = 64
#: how much of the end of a partial is looked at for an unfinished number
TAIL_CHARS = 400

_EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]{1,63}"
                    r"(?:\.[A-Za-z0-9-]{1,63}){1,4}")
_IBAN = re.compile(r"\b[A-Za-z]{2}[0-9]{2}(?:[ ]?[A-Za-z0-9]){11,30}\b")
_TLDS = {"com", "net", "org", "edu", "gov", "io", "co", "cn", "uk", "de", "fr", "jp", "info",
         "biz", "me", "us", "ca", "au", "hk", "tw", "sg", "mil", "int", "eu", "ru", "in"}
_AT = {"at", "@", "艾特"}
_DOT = {"dot", ".", "点", "點"}
_JOIN = {"dot", ".", "点", "點", "underscore", "_", "dash", "hyphen", "-", "下划线"}


@dataclass(frozen=True, slots=True)
class Entity:
    type: str
    begin: int  # char offset in the text the detector read
    end: int


class _Tok(NamedTuple):
    text: str
    begin: int
    end: int
    digits: str | None  # the digits this token stands for (None: not a digit token)


# --- validators -----------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def cn_id_ok(value: str) -> bool:
    """18 characters, 17 digits and the ISO 7064 MOD 11-2 check character, born 1900-2099."""
    v = value.upper()
    if len(v) != 18 or not v[:17].isdigit() or v[0] == "0":
        return False
    year, month, day = int(v[6:10]), int(v[10:12]), int(v[12:14])
    if not (1900 <= year <= 2099 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    s = sum(int(c) * w for c, w in zip(v[:17], _CN_WEIGHTS))
    return _CN_CHECK[s % 11] == v[17]


def ssn_ok(digits: str) -> bool:
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (area not in ("000", "666") and area[0] != "9" and group != "00"
            and serial != "0000")


def iban_ok(value: str) -> bool:
    v = re.sub(r"\s", "", value).upper()
    if not (15 <= len(v) <= 34 and v[:2].isalpha() and v[2:4].isdigit() and v.isalnum()):
        return False
    moved = v[4:] + v[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def phone_ok(digits: str, plus: bool) -> bool:
    n = len(digits)
    if plus:
        return 8 <= n <= 15
    if n == 11 and re.fullmatch(r"1[3-9]\d{9}", digits):
        return True  # Chinese mobile
    if n == 13 and re.fullmatch(r"861[3-9]\d{9}", digits):
        return True  # +86 mobile said without the plus
    if n in (10, 11, 12) and digits[0] == "0" and digits[1] != "0":
        return True  # Chinese landline (0 + area + number), UK 0-led numbers
    if n == 10 and re.fullmatch(r"[2-9]\d\d[2-9]\d{6}", digits):
        return True  # NANP
    return n == 11 and re.fullmatch(r"1[2-9]\d\d[2-9]\d{6}", digits) is not None


# --- tokens and digit runs ------------------------------------------------------------------


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        t = m.group()
        low = t.lower()
        if t[0].isdigit():
            digits: str | None = t.translate(_FULLWIDTH)
        elif t in _ZH_DIGITS:
            digits = _ZH_DIGITS[t]
        elif low in _EN_DIGITS:
            digits = _EN_DIGITS[low]
        else:
            digits = None
        out.append(_Tok(t, m.start(), m.end(), digits))
    return out


def _runs(text: str, toks: list[_Tok]) -> list[list[_Tok]]:
    """Maximal runs of digit tokens; separators and fillers may sit between them, and
    ``double``/``triple`` multiply the next digit word.  "o"/"oh" only count inside a run or
    right before another digit."""
    runs: list[list[_Tok]] = []
    cur: list[_Tok] = []
    repeat, repeat_at = 1, -1
    i = 0
    while i < len(toks):
        t = toks[i]
        low = t.text.lower()
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.digits is not None and low in ("o", "oh") and not cur and (
                nxt is None or nxt.digits is None):
            t = _Tok(t.text, t.begin, t.end, None)
        if t.digits is not None:
            gap = text[cur[-1].end:t.begin] if cur else ""
            if cur and not _gap_ok(gap):
                runs.append(cur)
                cur = []
            d = t.digits * repeat if len(t.digits) == 1 else t.digits
            begin = repeat_at if repeat > 1 and not cur else t.begin  # "double five" starts
            cur.append(_Tok(t.text, begin, t.end, d))
            repeat = 1
        elif low in _EN_REPEAT and nxt is not None and nxt.digits is not None:
            repeat, repeat_at = _EN_REPEAT[low], t.begin
        elif cur and (low in _FILLERS or all(c in _SEPARATORS for c in t.text)):
            pass  # stays inside the run
        else:
            if cur:
                runs.append(cur)
                cur = []
            repeat = 1
        i += 1
    if cur:
        runs.append(cur)
    return runs


def _gap_ok(gap: str) -> bool:
    """What may sit between two digit tokens of one number: separators, fillers, repeats."""
    if not gap.strip(" ,-"):
        return True
    words = _GAP_WORDS.findall(gap)
    return all(w.lower() in _FILLERS or w.lower() in _EN_REPEAT for w in words) and \
        sum(1 for c in gap if c in "，,") <= 2 and len(gap) <= 24


def _classify(digits: str, plus: bool, grouped_ssn: bool, context: str) -> str | None:
    """The entity a digit string is, in order of how sure the check is; None: none."""
    n = len(digits)
    if n < 7:
        return None
    if n == 18 and cn_id_ok(digits):
        return "CN_ID"
    if 13 <= n <= 19 and luhn_ok(digits) and not plus:
        return "CARD"
    if n == 9 and ssn_ok(digits) and (grouped_ssn or _SSN_WORDS.search(context)):
        return "SSN"
    if 8 <= n <= 30 and _ACCOUNT_WORDS.search(context):
        return "BANK_ACCOUNT"
    if phone_ok(digits, plus):
        return "PHONE"
    # said right after what they are: redacted even when recognition lost or changed a
    # digit (a card number that fails Luhn, an SSN one digit short)
    if 7 <= n <= 19 and _CARD_WORDS.search(context) and not plus:
        return "CARD"
    if 7 <= n <= 10 and _SSN_WORDS.search(context):
        return "SSN"
    if 7 <= n <= 15 and _PHONE_WORDS.search(context) and not _ACCOUNT_WORDS.search(context):
        return "PHONE"
    return None


def _digit_entities(text: str, toks: list[_Tok], taken: list[tuple[int, int]]) -> list[Entity]:
    out: list[Entity] = []
    for run in _runs(text, toks):
        for w0 in range(0, len(run), MAX_RUN_TOKENS):
            out.extend(_split_run(text, run[w0:w0 + MAX_RUN_TOKENS], taken))
    return out


def _split_run(text: str, run: list[_Tok], taken: list[tuple[int, int]]) -> list[Entity]:
    out: list[Entity] = []
    cum = [0]
    for t in run:
        cum.append(cum[-1] + len(t.digits or ""))
    i = 0
    while i < len(run):
        found = None
        for j in range(len(run), i, -1):  # longest piece first
            if not 7 <= cum[j] - cum[i] <= 30:  # too long or too short for any entity
                continue
            piece = run[i:j]
            b, e = piece[0].begin, piece[-1].end
            if any(b < te and tb < e for tb, te in taken):
                continue
            digits = "".join(t.digits or "" for t in piece)
            plus = text[max(0, b - 1):b] == "+" or text[max(0, b - 5):b].lower().strip() \
                == "plus"
            grouped = [len(t.digits or "") for t in piece] == [3, 2, 4] and all(
                text[a.end:c.begin] in ("-", " ") for a, c in zip(piece, piece[1:]))
            context = text[max(0, b - _CONTEXT_CHARS):b]
            kind = _classify(digits, plus, grouped, context)
            end = e
            if kind is None and len(digits) == 17:  # a Chinese ID that ends in X
                m = re.match(r"[\s-]*([Xx])\b", text[e:])
                if m and cn_id_ok(digits + "X"):
                    kind, end = "CN_ID", e + m.end()
            if kind is not None:
                if text[max(0, b - 1):b] in ("+", "(", "（"):
                    b -= 1
                found = (Entity(kind, b, end), j)
                break
        if found is None:
            i += 1
        else:
            out.append(found[0])
            i = found[1]
    return out


# --- e-mail -----------------------------------------------------------------------------------


_EMAIL_TOKEN = re.compile(r"艾特|下划线|[A-Za-z0-9]+|[\u3400-\u9fff]|[@._-]")


def _spoken_emails(text: str) -> list[Entity]:
    toks = [(m.group(), m.start(), m.end()) for m in _EMAIL_TOKEN.finditer(text)]
    low = [t[0].lower() for t in toks]
    out: list[Entity] = []
    for k, word in enumerate(low):
        if word not in _AT or k == 0:
            continue
        # domain: word (dot word)+ with a known top-level domain last
        j, last_tld = k + 1, None
        if j < len(toks) and _wordish(low[j]):
            j += 1
            while j + 1 < len(toks) and low[j] in _DOT and _wordish(low[j + 1]):
                if low[j + 1] in _TLDS:
                    last_tld = j + 1
                j += 2
        if last_tld is None:
            continue
        # local part: word ((dot|underscore|dash) word)* before "at"
        i = k - 1
        if not _wordish(low[i]):
            continue
        while i - 2 >= 0 and low[i - 1] in _JOIN and _wordish(low[i - 2]):
            i -= 2
        out.append(Entity("EMAIL", toks[i][1], toks[last_tld][2]))
    return out


def _wordish(t: str) -> bool:
    return bool(t) and t not in _AT and t not in _JOIN and (t.isalnum())


# --- all of it ----------------------------------------------------------------------------------


def find_entities(text: str, types: frozenset[str] | set[str] | None = None) -> list[Entity]:
    """Entities of ``types`` (default all) in ``text``, sorted, not overlapping."""
    want = set(ENTITY_TYPES) if types is None else set(types)
    found: list[Entity] = []
    if "EMAIL" in want:
        found += [Entity("EMAIL", m.start(), m.end()) for m in _EMAIL.finditer(text)]
        found += _spoken_emails(text)
    if "IBAN" in want:
        for m in _IBAN.finditer(text):
            parts = m.group().split(" ")  # the match may run on into the next words
            for k in range(len(parts), 0, -1):
                cand = " ".join(parts[:k])
                if iban_ok(cand):
                    found.append(Entity("IBAN", m.start(), m.start() + len(cand)))
                    break
    taken = [(e.begin, e.end) for e in found]
    found += _digit_entities(text, _tokens(text), taken)
    found = [e for e in found if e.type in want]
    found.sort(key=lambda e: (e.begin, -e.end))
    out: list[Entity] = []
    for e in found:  # the first (and longest) of overlapping matches wins
        if out and e.begin < out[-1].end:
            continue
        out.append(e)
    return out


def trailing_number(text: str, min_digits: int = 4) -> tuple[int, int] | None:
    """The span of a digit run that ends the text (only separators or punctuation after it)
    with at least ``min_digits`` digits; None when there is none."""
    base = max(0, len(text) - TAIL_CHARS)  # a number being said is at the very end
    if base:
        base = text.find(" ", base) + 1 or base
    tail = text[base:]
    runs = _runs(tail, _tokens(tail))
    if not runs:
        return None
    last = runs[-1]
    rest = tail[last[-1].end:]
    if re.search(r"[A-Za-z0-9\u3400-\u9fff]", rest):
        return None
    if sum(len(t.digits or "") for t in last) < min_digits:
        return None
    return base + last[0].begin, base + last[-1].end
