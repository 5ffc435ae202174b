"""PII detection and redaction (callscribe.analytics.pii / .redact): pure, exact."""

from __future__ import annotations

import pytest

from callscribe.analytics.pii import (cn_id_ok, find_entities, iban_ok, luhn_ok, ssn_ok,
                                      trailing_number)
from callscribe.analytics.redact import Redactor, parse_entities, redact_session_event
from callscribe.errors import ConfigurationError
from callscribe.recognition.events import FinalSentence, Partial, Word

MASK = Redactor()
CARD = "4532015112830366"  # passes Luhn
ID_X = "11010519491231002X"  # a valid resident ID ending in X


def types(text: str) -> list[tuple[str, str]]:
    return [(e.type, text[e.begin:e.end]) for e in find_entities(text)]


def test_validators() -> None:
    assert luhn_ok(CARD) and not luhn_ok("4532015112830367")
    assert cn_id_ok(ID_X) and cn_id_ok(ID_X.lower()) and not cn_id_ok("110105194912310021")
    assert not cn_id_ok("110105194913310027")  # month 13
    assert ssn_ok("123456789") and not ssn_ok("666456789") and not ssn_ok("900456789")
    assert not ssn_ok("123006789") and not ssn_ok("123450000") and not ssn_ok("000456789")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB83 WEST 1234 5698 7654 32")


@pytest.mark.parametrize("text,expected", [
    # cards: digits in groups, dashes, English digit words, Chinese digits
    ("My card number is 4532 0151 1283 0366, thanks.", [("CARD", "4532 0151 1283 0366")]),
    ("it's 4532-0151-1283-0366.", [("CARD", "4532-0151-1283-0366")]),
    ("four five three two zero one five one one two eight three zero three six six",
     [("CARD", "four five three two zero one five one one two eight three zero three six six")]),
    ("four five three two, zero one five one, uh, one two eight three, oh three six six",
     [("CARD", "four five three two, zero one five one, uh, one two eight three, "
               "oh three six six")]),
    ("我的卡号是四五三二零幺五幺幺二八三零三六六。", [("CARD", "四五三二零幺五幺幺二八三零三六六")]),
    # a Luhn failure is no card (and no piece of it is a phone number)
    ("the order number is 4532 1151 1283 0367", []),
    # phones
    ("call me at 138 1234 5678", [("PHONE", "138 1234 5678")]),
    ("我的手机是一三八一二三四五六七八", [("PHONE", "一三八一二三四五六七八")]),
    ("my number is (212) 555-0187", [("PHONE", "(212) 555-0187")]),
    ("reach me on +44 7911 123456 today", [("PHONE", "+44 7911 123456")]),
    ("电话010-62345678", [("PHONE", "010-62345678")]),
    ("double five five two one two three four five six", [("PHONE",
     "double five five two one two three four five six")]),
    # e-mail, written and spoken
    ("write to john.smith@example.com please", [("EMAIL", "john.smith@example.com")]),
    ("my email is john dot smith at example dot com please",
     [("EMAIL", "john dot smith at example dot com")]),
    ("邮箱是zhang点san艾特qq点com", [("EMAIL", "zhang点san艾特qq点com")]),
    ("we met at the office dot com launch", []),  # "at" must be followed by the domain
    # IBAN, bank account, national IDs
    ("IBAN GB82 WEST 1234 5698 7654 32 please", [("IBAN", "GB82 WEST 1234 5698 7654 32")]),
    ("my account number is 12345678901", [("BANK_ACCOUNT", "12345678901")]),
    ("身份证号码是11010519491231002X", [("CN_ID", ID_X)]),
    ("ID 110105194912310021 is wrong", []),
    ("my social security number is 123 45 6789", [("SSN", "123 45 6789")]),
    ("SSN 123-45-6789", [("SSN", "123-45-6789")]),
    ("it costs 123 45 6789 dollars", [("SSN", "123 45 6789")]),  # written 3-2-4: an SSN
    # recognition lost a digit or changed one: the naming word still gets it redacted
    ("My Social Security number is 123 45678 IN.", [("SSN", "123 45678")]),
    ("my card number is 4532 0151 1283 0367", [("CARD", "4532 0151 1283 0367")]),
    # a phone number heard with an extra digit (11 digits, not NANP) after "call me"
    ("You can call me Macon 212 5555 0187.", [("PHONE", "212 5555 0187")]),
    # a number said in pieces after "card": each piece of 7+ digits goes
    ("my card is 4532 0151, sorry, 4532 0151 1283 0366",
     [("CARD", "4532 0151"), ("CARD", "4532 0151 1283 0366")]),
    ("my card expires 0528", []),
    # no PII
    ("the year 2024 and 15 people, at 3 pm", []),
    ("one of the two options", []),
    ("Thank you for calling, how can I help you today?", []),
])
def test_find_entities(text: str, expected: list) -> None:
    assert types(text) == expected


def test_a_run_is_split_on_its_groups_over_redacting_rather_than_under() -> None:
    # 16 digits failing Luhn are no card, but the last three groups are a 0-led 12 digit
    # number, which is redacted as a phone number: a misheard card still loses most digits
    assert types("the order number is 4532 0151 1283 0367") == [("PHONE", "0151 1283 0367")]


def test_two_numbers_in_one_run_are_split() -> None:
    text = f"card {CARD} 13812345678"
    assert types(text) == [("CARD", CARD), ("PHONE", "13812345678")]


def test_chinese_id_ending_in_spoken_x() -> None:
    assert types("号码 11010519491231002 X 对") == [("CN_ID", "11010519491231002 X")]


def test_mask_and_spans() -> None:
    r = MASK.text("card 4532 0151 1283 0366 and mail a@b.com ok")
    assert r.text == "card [CARD] and mail [EMAIL] ok"
    assert [(s.type, s.begin, s.end) for s in r.spans] == [("CARD", 5, 11), ("EMAIL", 21, 28)]
    assert [r.text[s.begin:s.end] for s in r.spans] == ["[CARD]", "[EMAIL]"]
    assert r.removed == ((5, 24), (34, 41))


def test_drop_mode_and_entity_choice() -> None:
    drop = Redactor(parse_entities("CARD"), "drop")
    r = drop.text("card 4532 0151 1283 0366 and mail a@b.com ok")
    assert r.text == "card  and mail a@b.com ok"
    assert [(s.type, s.begin, s.end) for s in r.spans] == [("CARD", 5, 5)]
    assert not Redactor(parse_entities("none")).text(f"card {CARD}").changed
    assert parse_entities("all") == parse_entities(None)
    with pytest.raises(ConfigurationError, match="PASSPORT"):
        parse_entities("CARD,PASSPORT")


def test_per_call_option_overrides_the_deployment() -> None:
    call = Redactor.for_call(MASK, {"entities": ["PHONE"], "mode": "drop"})
    assert call.entities == {"PHONE"} and call.mode == "drop"
    assert Redactor.for_call(MASK, {"entities": []}).enabled is False
    assert Redactor.for_call(MASK, None) is MASK
    assert Redactor.for_call(MASK, {"mode": "drop"}).entities == MASK.entities


def test_partial_masks_an_unfinished_trailing_number() -> None:
    # the final will say 4532 0151 1283 0366; each partial on the way shows no digit run
    said = "my card is 4532 0151 1283 0366"
    for cut in range(len("my card is 4532"), len(said) + 1):
        r = MASK.text(said[:cut], partial=True)
        assert not any(c.isdigit() for c in r.text), (said[:cut], r.text)
    assert MASK.text("my card is 4532 0151", partial=True).text == "my card is [NUMBER]"
    # spoken digits too, and a trailing space or comma does not end it
    assert MASK.text("it is four five three two zero, ", partial=True).text == \
        "it is [NUMBER], "
    # three digits stay (a time, a count); a finished sentence's number is judged as a final
    assert MASK.text("we have 3 options at 415", partial=True).text == \
        "we have 3 options at 415"
    assert MASK.text("my number is 4532 0151", partial=True).text == "my number is [NUMBER]"
    assert MASK.text("my number is 4532 0151", partial=False).text == "my number is 4532 0151"
    # a number followed by more words is not trailing
    assert MASK.text("in 2024 we moved", partial=True).text == "in 2024 we moved"


def test_trailing_number_span() -> None:
    assert trailing_number("call 138 1234") == (5, 13)
    assert trailing_number("call 138 1234 now") is None
    assert trailing_number("卡号四五三二") == (2, 6)
    assert trailing_number("at 415") is None


def test_words_lose_text_keep_times() -> None:
    words = (Word(0, 300, "card", ""), Word(400, 900, "4532", ""), Word(900, 1400, "0151", ""),
             Word(1400, 1900, "1283", ""), Word(1900, 2400, "0366", "."))
    final = FinalSentence(3, 0, 2400, "card 4532 0151 1283 0366.", words, "en")
    out = redact_session_event(MASK, final)
    assert out.text == "card [CARD]."
    assert [(w.begin_time, w.end_time, w.text, w.punctuation) for w in out.words] == [
        (0, 300, "card", ""), (400, 900, "", ""), (900, 1400, "", ""), (1400, 1900, "", ""),
        (1900, 2400, "", ".")]
    partial = Partial(3, 0, 1400, settled="card 4532 ", tail="0151")
    p = redact_session_event(MASK, partial)
    assert p.text == "card [NUMBER]" and p.settled == "card " and p.tail == "[NUMBER]"
