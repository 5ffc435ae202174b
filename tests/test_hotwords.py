"""Hotword prompt and sound-alike correction."""

from __future__ import annotations

import pytest
from callscribe.recognition.events import Word
from callscribe.recognition.hotwords import (
    Hotword,
    build_prompt,
    correct_words,
    pinyin_similarity,
    similarity,
)

CALL = """Hello, thank you for calling. My name is Sarah, how can I help you today? I want to check
my balance and the last payment. I called yesterday and nobody picked up. Can you tell me when
the bill is due? I think there was a charge I did not make, on the fifth. Could you please hold
the line while I look into this? Sure, no problem. Your account shows a payment of forty dollars.
I would like to close my account and move to another bank. Is there anything else I can do for
you? Yes, I also need to update my address, we moved to a new house last week. Thank you, bye."""

ZH_CALL = ("您好，请问有什么可以帮您？我想查一下我的账户余额，上个月的账单好像多扣了钱。好的，请您稍等，"
           "我帮您查询一下。您的套餐是每月五十八元，包含流量和通话。我要投诉，你们的服务太差了。"
           "非常感谢您的耐心，祝您生活愉快。")


def words_of(text: str) -> list[Word]:
    out = []
    for i, tok in enumerate(text.split()):
        p = tok[-1] if tok[-1] in ",.?!" else ""
        out.append(Word(i * 100, i * 100 + 90, tok.rstrip(",.?!"), p))
    return out


def chars_of(text: str) -> list[Word]:
    out: list[Word] = []
    for c in text:
        if c in "，。？！" and out:
            out[-1] = Word(out[-1].begin_time, out[-1].end_time, out[-1].text, c)
        else:
            out.append(Word(len(out) * 100, len(out) * 100 + 90, c))
    return out


def tokens(toks: list[str]) -> list[Word]:
    return [Word(i * 100, i * 100 + 90, t) for i, t in enumerate(toks)]


def texts(words: list[Word]) -> list[str]:
    return [w.text for w in words]


# ----------------------------------------------------------------------------- prompt


def test_prompt_lists_highest_weight_first() -> None:
    hs = [Hotword("Acme", 2, None), Hotword("Dashwood", 5, None), Hotword("Zelle", 3, "en")]
    assert build_prompt(hs, "en") == "Glossary: Dashwood, Zelle, Acme."


def test_prompt_is_bounded_and_keeps_the_important_ones() -> None:
    hs = [Hotword(f"Product{i:03d}", 1 if i % 2 else 5, None) for i in range(200)]
    prompt = build_prompt(hs, "en")
    assert prompt is not None and len(prompt) <= 420  # ~100 tokens at ~4 chars a token
    assert "Product000" in prompt and "Product001" not in prompt  # weight 5 before weight 1


def test_prompt_chinese_and_language_filter() -> None:
    hs = [Hotword("滨海新区", 4, "zh"), Hotword("Dashwood", 5, "en"), Hotword("招商银行", 3, None)]
    assert build_prompt(hs, "zh") == "以下是相关词汇：滨海新区、招商银行。"
    assert build_prompt(hs, "en") == "Glossary: Dashwood, 招商银行."
    assert build_prompt([], "en") is None
    assert build_prompt([Hotword("滨海新区", 4, "zh")], "en") is None


def test_prompt_chinese_budget() -> None:
    hs = [Hotword("测试词汇" + str(i), 3, "zh") for i in range(100)]
    prompt = build_prompt(hs, "zh")
    assert prompt is not None and len(prompt) < 100


# ----------------------------------------------------------------------------- English


def test_split_near_miss_becomes_the_hotword_spanning_the_run() -> None:
    words = words_of("I live on dash wood street.")
    out = correct_words(words, [Hotword("Dashwood", 4, None)], "en")
    assert texts(out) == ["I", "live", "on", "Dashwood", "street"]
    assert (out[3].begin_time, out[3].end_time) == (words[3].begin_time, words[4].end_time)
    assert out[-1].punctuation == "."
    assert out[0] is words[0]


def test_misspelt_sound_alike_is_corrected() -> None:
    out = correct_words(words_of("Mister dashwud called, twice."), [Hotword("Dashwood", 4)], "en")
    assert texts(out) == ["Mister", "Dashwood", "called", "twice"]
    assert out[1].punctuation == ""


def test_punctuation_of_the_run_end_is_kept() -> None:
    out = correct_words(words_of("ask for dash wood."), [Hotword("Dashwood", 4)], "en")
    assert (out[-1].text, out[-1].punctuation) == ("Dashwood", ".")


def test_multi_word_hotword() -> None:
    out = correct_words(words_of("I bank with acne bank"), [Hotword("Acme Bank", 3)], "en")
    assert texts(out) == ["I", "bank", "with", "Acme Bank"]


def test_weight_gates_the_match() -> None:
    words = words_of("Mister dashwud called")
    assert texts(correct_words(words, [Hotword("Dashwood", 1)], "en")) == texts(words)
    assert texts(correct_words(words, [Hotword("Dashwood", 3)], "en"))[1] == "Dashwood"
    # "dash wood" is the hotword but for a space: near-exact, so even weight 1 takes it
    out = correct_words(words_of("Mister dash wood called"), [Hotword("Dashwood", 1)], "en")
    assert texts(out)[1] == "Dashwood"


def test_similarity_orders_near_and_far() -> None:
    assert similarity("dash wood", "Dashwood") == 1.0
    assert similarity("dashwud", "Dashwood") > similarity("dashboard", "Dashwood")
    assert similarity("hello", "Hall") < 0.8


def test_unrelated_vocabulary_changes_nothing_english() -> None:
    words = words_of(CALL)
    names = ("Dashwood", "Acme", "Kim", "Zoom", "Visa", "Chase", "Nora", "Brandon", "Paypal",
             "Mastercard", "Colby", "Ashley", "Bailey", "Zelle", "Venmo", "Comcast", "Verizon",
             "Coinbase", "Citi", "Fargo", "Hall", "Helen")
    hs = [Hotword(n, 5) for n in names]
    assert correct_words(words, hs, "en") == words


def test_ordinary_words_are_not_recased_or_inflected() -> None:
    words = words_of("the bill is due, thank you")
    hs = [Hotword("Bill", 3), Hotword("Thanks", 5)]
    assert correct_words(words, hs, "en") == words
    # a heavier hotword may re-case an exact spelling
    assert texts(correct_words(words, [Hotword("Bill", 5)], "en"))[1] == "Bill"


def test_hotword_for_another_language_is_ignored() -> None:
    words = words_of("Mister dashwud called")
    assert correct_words(words, [Hotword("Dashwood", 5, "zh")], "en") == words
    assert texts(correct_words(words, [Hotword("Dashwood", 5, "en")], "en-GB"))[1] == "Dashwood"


# ----------------------------------------------------------------------------- Chinese


def test_chinese_homophones_become_the_hotword() -> None:
    words = tokens(["我", "住在", "宾海", "新区"])
    out = correct_words(words, [Hotword("滨海新区", 4, "zh")], "zh")
    assert texts(out) == ["我", "住在", "滨海新区"]
    assert (out[2].begin_time, out[2].end_time) == (200, 390)


def test_chinese_per_character_homophones() -> None:
    words = tokens(["我", "在", "彬", "海", "心", "区", "上班"])
    out = correct_words(words, [Hotword("滨海新区", 3, "zh")], "zh")
    assert texts(out) == ["我", "在", "滨海新区", "上班"]
    assert (out[2].begin_time, out[2].end_time) == (200, 590)


def test_chinese_window_inside_longer_tokens_keeps_the_rest() -> None:
    words = tokens(["我住宾海", "新区附近"])
    out = correct_words(words, [Hotword("滨海新区", 4, "zh")], "zh")
    assert texts(out) == ["我住滨海新区附近"]
    assert (out[0].begin_time, out[0].end_time) == (0, 190)


def test_chinese_weight_gating() -> None:
    words = tokens(["冰", "海", "新", "区"])  # bing vs bin: a fuzzy, not exact, match
    assert pinyin_similarity("冰海新区", "滨海新区") < pinyin_similarity("宾海新区", "滨海新区")
    assert texts(correct_words(words, [Hotword("滨海新区", 4, "zh")], "zh")) == ["滨海新区"]
    assert correct_words(words, [Hotword("滨海新区", 1, "zh")], "zh") == words


def test_chinese_different_syllable_is_not_a_near_miss() -> None:
    words = tokens(["北", "海", "新", "区"])  # bei: another place, not a homophone
    assert correct_words(words, [Hotword("滨海新区", 5, "zh")], "zh") == words


@pytest.mark.parametrize("weight", [5, 3, 1])
def test_unrelated_vocabulary_changes_nothing_chinese(weight: int) -> None:
    words = chars_of(ZH_CALL)
    vocab = ("滨海新区", "招商银行", "流量包", "余额宝", "花呗", "账单分期", "移动", "联通", "宽带", "退款",
             "北京", "上海", "微信", "支付宝", "信用卡", "积分")
    hs = [Hotword(t, weight, "zh") for t in vocab]
    assert correct_words(words, hs, "zh") == words


def test_no_hotwords_no_change() -> None:
    words = words_of("dash wood")
    assert correct_words(words, [], "en") == words
    assert correct_words([], [Hotword("Dashwood", 5)], "en") == []
