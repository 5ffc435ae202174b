"""Inverse text normalisation (ITN) and disfluency removal for final sentences.

English: numbers via ``text2num.alpha2digit`` then rules for money ($25.50), percentages
(3.5%), times (3:30 PM), dates (March 5, 2024), years and spoken digit strings (5551234).
Chinese: numbers via ``cn2an`` inside our own context rules (2024年3月5日, 下午3:15, 3.5%,
1234元, 138...) so that words such as 一下, 一个, 十分, 万一, 千万 are left alone.
Other languages that ``alpha2digit`` knows (fr, es, pt, de, nl, it) get its plain number
conversion only.

Everything works on :class:`Word` lists: a rewritten run of words becomes one ``Word`` from
``begin_time`` of the first to ``end_time`` of the last, with the punctuation of the last.
A run never crosses a word that carries punctuation (it can end on one).
Pure functions; callers run them in a worker thread.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from difflib import SequenceMatcher

from text_to_num import alpha2digit

from callscribe.recognition.events import Word

__all__ = ["base_language", "normalize_text", "normalize_words", "remove_disfluencies"]

_CJK = re.compile(r"[\u3400-\u9fff]")
_ALPHA2DIGIT_LANGS = {"en", "fr", "es", "pt", "de", "nl", "it"}
_TRAILING_PUNCT = re.compile(r"^(.*?)([.,!?;:…。，！？；：、]*)$", re.DOTALL)


def base_language(language: str | None, sample: str = "") -> str | None:
    """``"en-US"`` → ``"en"``; ``zh``/``cmn``/``yue`` → ``"zh"``; None → guessed from script."""
    if language:
        lang = re.split(r"[-_]", language.strip().lower())[0]
        return "zh" if lang in {"zh", "cmn", "yue", "wuu", "chinese"} else lang
    if not sample:
        return None
    return "zh" if _CJK.search(sample) else "en"


def _segments(words: list[Word]) -> list[list[int]]:
    """Index runs that end at a word with punctuation (or the end)."""
    segs: list[list[int]] = [[]]
    for i, w in enumerate(words):
        segs[-1].append(i)
        if w.punctuation.strip():
            segs.append([])
    return [s for s in segs if s]


def _merge(words: list[Word], i0: int, i1: int, text: str) -> Word:
    if i0 == i1 and words[i0].text.strip() == text:
        return words[i0]
    return Word(words[i0].begin_time, words[i1].end_time, text, words[i1].punctuation)


# ---------------------------------------------------------------------------------- English


@dataclass(slots=True)
class _Tok:
    text: str
    i0: int  # first word index covered
    i1: int  # last word index covered
    src: tuple[str, ...]  # the source words (lower case)


_SMALL = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six",
                                        "seven", "eight", "nine", "ten", "eleven", "twelve"))}
_ORD_SMALL = {"first": 1, "second": 2, "third": 3}
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"sept": "september"}
_CURRENCY = {"dollar": "$", "dollars": "$", "bucks": "$", "usd": "$", "euro": "€", "euros": "€"}
_AMPM = {"am": "AM", "a.m.": "AM", "a.m": "AM", "pm": "PM", "p.m.": "PM", "p.m": "PM"}
_TIME_BEFORE = {"at", "by", "around", "until", "till", "before", "after", "about", "from"}
_DAYPART = {"morning", "afternoon", "evening", "night", "tonight", "tomorrow", "today"}
_YEAR_BEFORE = {"in", "since", "of", "year", "from", "until", "till", "by"}
_NUM_RE = re.compile(r"^\d+(?:\.\d+)?$")
_ORD_RE = re.compile(r"^(\d{1,2})(?:st|nd|rd|th)$")


def _num(t: str) -> str | None:
    t = t.lower()
    if _NUM_RE.match(t):
        return t
    return str(_SMALL[t]) if t in _SMALL else None


def _int(t: str) -> int | None:
    n = _num(t)
    return int(n) if n is not None and "." not in n else None


def _day(t: str) -> int | None:
    t = t.lower()
    m = _ORD_RE.match(t)
    d = int(m.group(1)) if m else _ORD_SMALL.get(t, _int(t))
    return d if d is not None and 1 <= d <= 31 else None


def _month(t: str) -> str | None:
    t = t.lower().rstrip(".")
    m = t if t in _MONTHS else _MONTH_ABBR.get(t)
    return m.capitalize() if m else None


def _year(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    """A year at ``k``: ``2024`` or two tokens ``20 24`` / ``19 oh 5``."""
    if k >= len(toks):
        return None
    a = toks[k].text
    if re.fullmatch(r"(1[0-9]|20)\d\d", a):
        return 1, a
    h = _int(a)
    if h is None or not 11 <= h <= 20 or k + 1 >= len(toks):
        return None
    b = toks[k + 1].text.lower()
    if b in {"oh", "o"} and k + 2 < len(toks) and (d := _int(toks[k + 2].text)) is not None \
            and d < 10:
        return 3, f"{h}0{d}"
    lo = _int(b)
    if lo is not None and 10 <= lo <= 99 and re.fullmatch(r"\d\d", b):
        return 2, f"{h}{lo:02d}"
    if b in {"hundred", "100"}:
        return 2, f"{h}00"
    return None


def _lw(toks: list[_Tok], k: int) -> str:
    return toks[k].text.lower() if 0 <= k < len(toks) else ""


def _ampm(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    a = _lw(toks, k)
    if a in _AMPM:
        return 1, _AMPM[a]
    if a in {"a", "p"} and _lw(toks, k + 1) == "m":
        return 2, a.upper() + "M"
    return None


def _rule_units(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    """Money ($25, $12.99, $0.50, €3) and percentages (3.5%)."""
    n = _num(toks[k].text)
    if n is None:
        return None
    unit = _lw(toks, k + 1)
    if unit in {"percent", "%", "pct"} or (unit == "per" and _lw(toks, k + 2) == "cent"):
        return 2 + (unit == "per"), f"{n}%"
    if unit in _CURRENCY:
        sym, j = _CURRENCY[unit], k + 2 + (_lw(toks, k + 2) == "and")
        c = _int(_lw(toks, j))
        if "." not in n and c is not None and c < 100 and _lw(toks, j + 1) in {"cent", "cents"}:
            return j + 2 - k, f"{sym}{n}.{c:02d}"
        return 2, f"{sym}{n}"
    if unit in {"cent", "cents"} and (c := _int(n)) is not None and c < 100:
        return 2, f"$0.{c:02d}"
    return None


def _rule_time(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    h = _int(toks[k].text)
    if h is None or not 1 <= h <= 12:
        return None
    j, mm = k + 1, None
    b = _lw(toks, j)
    if b in {"oh", "o"} and (d := _int(_lw(toks, j + 1))) is not None and d < 10:
        mm, j = d, j + 2
    elif re.fullmatch(r"\d\d", b) and int(b) < 60:
        mm, j = int(b), j + 1
    if _lw(toks, j) == "o'clock" and mm is None:
        mm, j = 0, j + 1
    ap = _ampm(toks, j)
    if ap:
        return j + ap[0] - k, f"{h}:{mm:02d} {ap[1]}" if mm is not None else f"{h} {ap[1]}"
    if mm is None:
        return None
    context = _lw(toks, k - 1) in _TIME_BEFORE or _lw(toks, j) in _DAYPART or (
        _lw(toks, j) == "in" and _lw(toks, j + 1) == "the" and _lw(toks, j + 2) in _DAYPART)
    if context or _lw(toks, j - 1) == "o'clock":
        return j - k, f"{h}:{mm:02d}"
    return None


def _rule_date(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    mon = _month(toks[k].text)
    if mon is None or (d := _day(_lw(toks, k + 1))) is None:
        return None
    if toks[k].text.lower() == "may" and not (_ORD_RE.match(_lw(toks, k + 1))
                                              or _lw(toks, k + 1) in _ORD_SMALL):
        return None  # "may one day ..." stays
    y = _year(toks, k + 2)
    if y:
        return 2 + y[0], f"{mon} {d}, {y[1]}"
    return 2, f"{mon} {d}"


def _rule_year(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    a = _int(toks[k].text)
    if a is None or not 11 <= a <= 20:
        return None
    y = _year(toks, k)
    if y is None or y[0] == 1:
        return None
    spoken = all(t.src and t.src[0].isalpha() for t in toks[k:k + 2])  # not "20 24" typed
    generic = a in (19, 20) and y[0] == 2 and spoken
    if generic or _lw(toks, k - 1) in _YEAR_BEFORE or _month(_lw(toks, k - 1)):
        return y
    return None


def _rule_small_ordinal(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    o = _lw(toks, k)
    if o in _ORD_SMALL and _lw(toks, k + 1) == "of" and _month(_lw(toks, k + 2)):
        return 1, {1: "1st", 2: "2nd", 3: "3rd"}[_ORD_SMALL[o]]
    return None


def _rule_digits(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    """Spoken digit strings (phone, account numbers): three or more single digits."""
    out, j = [], k
    while j < len(toks):
        t = _lw(toks, j)
        d = _int(t)
        if d is not None and d < 10 and len(_num(t) or "") == 1:
            out.append(str(d))
        elif t in {"oh", "o"} and out and j + 1 < len(toks) and _int(_lw(toks, j + 1)) is not None:
            out.append("0")
        elif t == "double" and j + 1 < len(toks) and (d := _int(_lw(toks, j + 1))) is not None \
                and d < 10:
            out.append(str(d))
        else:
            break
        j += 1
    if len(out) >= 3:
        return j - k, "".join(out)
    return None


def _rule_scale(toks: list[_Tok], k: int) -> tuple[int, str] | None:
    """``a 100`` (a hundred) → 100; ``2.5 1000000`` (two point five million) → 2500000."""
    nxt = toks[k + 1] if k + 1 < len(toks) else None
    if nxt is None or not re.fullmatch(r"10+", nxt.text):
        return None
    if _lw(toks, k) in {"a", "an"} and nxt.text in {"100", "1000"}:
        return 2, nxt.text
    n = _num(toks[k].text)
    if n is not None and "." in n and set(nxt.src) & {"million", "billion", "thousand"}:
        v = float(n) * int(nxt.text)
        return 2, str(int(v)) if v.is_integer() else str(v)
    return None


_EN_RULES = (_rule_date, _rule_small_ordinal, _rule_units, _rule_time, _rule_year,
             _rule_digits)


def _apply_rules(toks: list[_Tok], rules) -> list[_Tok]:
    out: list[_Tok] = []
    k = 0
    while k < len(toks):
        for rule in rules:
            r = rule(toks, k)
            if r:
                n, text = r
                seg = toks[k:k + n]
                out.append(_Tok(text, seg[0].i0, seg[-1].i1, sum((t.src for t in seg), ())))
                k += n
                break
        else:
            out.append(toks[k])
            k += 1
    return out


def _latin_segment(words: list[Word], idx: list[int], lang: str) -> list[Word]:
    texts = [words[i].text.strip() for i in idx]
    if not any(texts):
        return [words[i] for i in idx]
    try:
        out = alpha2digit(" ".join(texts), lang).split()
    except Exception:  # noqa: BLE001 - unknown language / library quirk: leave words alone
        out = list(texts)
    toks: list[_Tok] = []
    sm = SequenceMatcher(None, texts, out, autojunk=False)
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal" or (op == "replace" and a1 - a0 == b1 - b0):
            toks += [_Tok(out[b0 + n], a0 + n, a0 + n, (texts[a0 + n].lower(),))
                     for n in range(a1 - a0)]
        elif op == "replace":
            src = tuple(t.lower() for t in texts[a0:a1])
            toks += [_Tok(t, a0, a1 - 1, src) for t in out[b0:b1]]
        elif op == "delete":  # words swallowed by a neighbour's conversion
            if toks:
                toks[-1].i1 = a1 - 1
            else:
                toks.append(_Tok("", a0, a1 - 1, ()))
        elif op == "insert" and toks:
            toks[-1].text = f"{toks[-1].text} {' '.join(out[b0:b1])}".strip()
    if lang == "en":
        toks = _apply_rules(_apply_rules(toks, (_rule_scale,)), _EN_RULES)
    return _emit(words, idx, toks)


def _emit(words: list[Word], idx: list[int], toks: list[_Tok]) -> list[Word]:
    """Group tokens whose word spans overlap; one Word per group."""
    result: list[Word] = []
    g: list[_Tok] = []

    def flush() -> None:
        if g:
            i0, i1 = min(t.i0 for t in g), max(t.i1 for t in g)
            text = " ".join(t.text for t in g if t.text)
            result.extend([_merge(words, idx[i0], idx[i1], text)] if text
                          else (words[idx[i]] for i in range(i0, i1 + 1)))
            g.clear()

    for t in toks:
        if g and t.i0 > max(x.i1 for x in g):
            flush()
        g.append(t)
    flush()
    return result


# ---------------------------------------------------------------------------------- Chinese

_D = "零〇一二三四五六七八九"
_DIGIT = {c: str(i) for i, c in enumerate("〇一二三四五六七八九")} | {"零": "0", "幺": "1"}
_DN = f"[{_D}两]"
_NUM = f"(?:[{_D}两十][{_D}两十百千万亿]*)"
_MONTH_ZH = "(?:十[一二]?|[一二三四五六七八九])"
_DAY_ZH = "(?:三十一?|三十|二十[一二三四五六七八九]?|十[一二三四五六七八九]?|[一二三四五六七八九])"
_MIN_ZH = "(?:[二三四五]十[一二三四五六七八九]?|十[一二三四五六七八九]?|零?[一二三四五六七八九])"
_HOUR_ZH = "(?:十[一二]?|[一二三四五六七八九两]|零)"
_DAYPART_ZH = "凌晨|早上|早晨|上午|中午|下午|晚上|傍晚|夜里"
_UNIT_AFTER = "元|块钱|块|美元|欧元|万|亿|倍|公斤|公里|千米|米|岁|%|个月|年|天|小时|分钟|秒|次|号"

_RE_DATE = re.compile(
    f"(?:(?P<y4>[{_D}]{{4}})年|(?P<y2>[{_D}]{{2}})年(?={_MONTH_ZH}月))?"
    f"(?:(?P<m>{_MONTH_ZH})月)?(?:(?P<d>{_DAY_ZH})(?P<dd>[日号]))?")
_RE_TIME = re.compile(
    f"(?P<p>{_DAYPART_ZH})?(?P<h>{_HOUR_ZH})点(?:(?P<half>半)|(?P<q>[一三])刻|"
    f"(?P<mm>{_MIN_ZH})(?P<fen>分)?)?(?P<zhong>钟)?")
_RE_PERCENT = re.compile(f"百分之(?P<n>{_NUM}(?:点{_DN}+)?)")
_RE_NUM = re.compile(f"(?P<n>{_NUM})(?:点(?P<f>[{_D}]+))?")
_RE_DIGITS = re.compile(f"[{_D}幺]{{3,}}")
_RE_UNIT = re.compile(f"(?:{_UNIT_AFTER})")
_RE_MONEY_SINGLE = re.compile(f"(?P<n>{_DN})(?=元|美元|块钱)")


def _cn(s: str) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import cn2an

            v = cn2an.cn2an(s, "normal")
        except Exception:  # noqa: BLE001 - cn2an raises several kinds on malformed numerals
            return None
    return str(int(v)) if float(v).is_integer() else str(v)


def _zh_match(s: str, pos: int) -> tuple[int, str] | None:
    """A rewrite starting at ``pos``: (end, replacement), or None."""
    m = _RE_DATE.match(s, pos)
    if m and m.end() > pos and (m["m"] or m["y4"] or (m["d"] and m["dd"] == "日")):
        out = ""
        if y := m["y4"] or m["y2"]:
            out += "".join(_DIGIT[c] for c in y) + "年"
        if m["m"]:
            out += f"{_cn(m['m'])}月"
        if m["d"]:
            out += f"{_cn(m['d'])}{m['dd']}"
        return m.end(), out
    if (m := _RE_TIME.match(s, pos)) and (h := _cn(m["h"])) is not None and int(h) <= 24:
        p, mm, end = m["p"] or "", None, m.end()
        if m["half"]:
            mm, end = 30, m.end("half")
        elif m["q"]:
            mm, end = (15 if m["q"] == "一" else 45), m.end("q") + 1
        elif m["mm"] and (m["fen"] or p or "十" in m["mm"]):
            mm = int(_cn(m["mm"].lstrip("零")) or 0)
            end = m.end("fen") if m["fen"] else m.end("mm")
        if mm is not None and mm < 60:
            if m["zhong"] and m.start("zhong") == end:
                end = m.end("zhong")
            return end, f"{p}{h}:{mm:02d}"
        zhong_next = s.startswith("钟", m.end("h") + 1)
        if p or zhong_next:
            return m.end("h") + 1 + zhong_next, f"{p}{h}点"
    if (m := _RE_PERCENT.match(s, pos)) and (v := _cn(m["n"])) is not None:
        return m.end(), f"{v}%"
    if (m := _RE_DIGITS.match(s, pos)) and not re.search("[十百千万亿]", s[m.end():m.end() + 1]):
        return m.end(), "".join(_DIGIT[c] for c in m.group())
    if m := _RE_NUM.match(s, pos):
        n, f = m["n"], m["f"]
        unit_next = bool(_RE_UNIT.match(s, m.end()))
        if f and unit_next and (v := _cn(f"{n}点{f}")) is not None:
            return m.end(), v
        if ((len(n) >= 2 and re.search("[十百千万亿]", n)) or (n == "十" and unit_next)) \
                and (v := _cn(n)) is not None:
            return m.end("n"), v
    if m := _RE_MONEY_SINGLE.match(s, pos):
        return m.end(), _DIGIT.get(m["n"], "2")
    return None


def _zh_spans(s: str) -> list[tuple[int, int, str]]:
    spans, pos = [], 0
    while pos < len(s):
        # a numeral glued to a preceding numeral/unit char is part of something we skipped
        if (pos and re.match(f"[{_D}两十百千万亿]", s[pos - 1])
                and re.match(f"[{_D}十百千]", s[pos])):
            pos += 1
            continue
        r = _zh_match(s, pos)
        if r and r[0] > pos and r[1] != s[pos:r[0]]:
            spans.append((pos, r[0], r[1]))
            pos = r[0]
        else:
            pos += 1
    return spans


def _rewrite(s: str, spans: list[tuple[int, int, str]], base: int = 0) -> str:
    out, last = [], base
    for a, b, rep in spans:
        out += [s[last - base:a - base], rep]
        last = b
    out.append(s[last - base:])
    return "".join(out)


def _zh_segment(words: list[Word], idx: list[int]) -> list[Word]:
    texts = [words[i].text.strip() for i in idx]
    joined = "".join(texts)
    owner, starts = [], []
    for k, t in enumerate(texts):
        starts.append(len(owner))
        owner += [k] * len(t)
    spans = _zh_spans(joined)
    if not spans:
        return [words[i] for i in idx]
    out: list[Word] = []
    k, si = 0, 0
    while k < len(texts):
        if si < len(spans) and owner[spans[si][0]] == k:
            g0, g1, group = k, owner[spans[si][1] - 1], [spans[si]]
            si += 1
            while si < len(spans) and owner[spans[si][0]] <= g1:
                group.append(spans[si])
                g1 = max(g1, owner[spans[si][1] - 1])
                si += 1
            a, b = starts[g0], starts[g1] + len(texts[g1])
            out.append(_merge(words, idx[g0], idx[g1], _rewrite(joined[a:b], group, a)))
            k = g1 + 1
        else:
            out.append(words[idx[k]])
            k += 1
    return out


# ---------------------------------------------------------------------------------- API


def normalize_words(words: list[Word], language: str | None) -> list[Word]:
    """Inverse-normalise numbers, money, dates, times and percentages in ``words``."""
    words = list(words)
    lang = base_language(language, "".join(w.text for w in words))
    if lang != "zh" and lang not in _ALPHA2DIGIT_LANGS:
        return words
    out: list[Word] = []
    for seg in _segments(words):
        out += _zh_segment(words, seg) if lang == "zh" else _latin_segment(words, seg, lang)
    return out


def _words_from_text(text: str) -> list[Word]:
    words = []
    for i, tok in enumerate(text.split()):
        m = _TRAILING_PUNCT.match(tok)
        body, punct = (m.group(1), m.group(2)) if m and m.group(1) else (tok, "")
        words.append(Word(i, i + 1, body, punct))
    return words


def normalize_text(text: str, language: str | None) -> str:
    """:func:`normalize_words` for a plain string."""
    lang = base_language(language, text)
    if lang == "zh":
        return _rewrite(text, _zh_spans(text))
    if lang not in _ALPHA2DIGIT_LANGS:
        return text
    return " ".join(w.text + w.punctuation for w in normalize_words(_words_from_text(text), lang))


# ---------------------------------------------------------------------------------- fillers

_EN_FILLERS = {"uh", "um", "uhm", "umm", "er", "erm", "ah", "hmm", "hm", "mm", "mhm"}
_ZH_FILLERS = set("嗯呃额")
_ZH_STUTTER = set("我你他她它这那就")
_EN_KEEP_REPEATS = {"that", "had", "bye", "ha", "no", "very", "really", "so", "is"}


def _is_filler(w: Word, lang: str | None, first_or_after_punct: bool) -> bool:
    t = w.text.strip().lower().strip("-.")
    if not t:
        return False
    if lang == "zh" or _CJK.search(t):
        if all(c in _ZH_FILLERS for c in t):
            return True
        return t == "啊" and first_or_after_punct
    return t in _EN_FILLERS


def remove_disfluencies(words: list[Word], language: str | None) -> list[Word]:
    """Drop fillers (uh, um, 嗯, 呃, hesitation 啊) and collapse stutters ("I I" → "I").

    A collapsed stutter keeps one word spanning the repeats; a dropped filler's sentence-final
    punctuation moves to the word before it when that word has none.
    """
    words = list(words)
    lang = base_language(language, "".join(w.text for w in words))
    out: list[Word] = []
    for i, w in enumerate(words):
        first = not out or bool(out[-1].punctuation.strip())
        if _is_filler(w, lang, first or i == 0):
            p = w.punctuation.strip()
            if out and p and p[-1] in ".!?。！？" and not out[-1].punctuation:
                out[-1] = Word(out[-1].begin_time, out[-1].end_time, out[-1].text, w.punctuation)
            continue
        if out and not out[-1].punctuation and _stutter(out[-1].text, w.text, lang):
            prev = out[-1]
            out[-1] = Word(prev.begin_time, w.end_time, w.text, w.punctuation)
            continue
        out.append(w)
    return out


def _stutter(a: str, b: str, lang: str | None) -> bool:
    a, b = a.strip(), b.strip()
    if not a or a.lower() != b.lower():
        return False
    if _CJK.search(a):
        return len(a) >= 2 or a in _ZH_STUTTER
    return a.lower() not in _EN_KEEP_REPEATS and not a.isdigit()
