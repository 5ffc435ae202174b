"""Inverse text normalisation and disfluency removal on Word lists."""

from __future__ import annotations

import itertools

import pytest
from callscribe.recognition.events import Word
from callscribe.recognition.textnorm import (
    normalize_text,
    normalize_words,
    remove_disfluencies,
)


def words_of(text: str, step: int = 100) -> list[Word]:
    """English words with 100 ms slots; trailing , . ? ! become punctuation."""
    out = []
    for i, tok in enumerate(text.split()):
        p = tok[-1] if tok[-1] in ",.?!" else ""
        out.append(Word(i * step, i * step + step - 10, tok.rstrip(",.?!"), p))
    return out


def tokens(toks: list[str], punct: dict[int, str] | None = None) -> list[Word]:
    punct = punct or {}
    return [Word(i * 100, i * 100 + 90, t, punct.get(i, "")) for i, t in enumerate(toks)]


@pytest.mark.parametrize("spoken, written", [
    ("It costs twenty five dollars.", "It costs $25."),
    ("twelve dollars and ninety nine cents", "$12.99"),
    ("I paid one hundred and twenty dollars and fifty cents yesterday",
     "I paid $120.50 yesterday"),
    ("a hundred dollars", "$100"),
    ("two point five million dollars", "$2500000"),
    ("two dollars", "$2"),
    ("fifty cents", "$0.50"),
    ("The rate is three point five percent.", "The rate is 3.5%."),
    ("ninety nine per cent", "99%"),
    ("call me at three thirty pm", "call me at 3:30 PM"),
    ("at ten fifteen a m", "at 10:15 AM"),
    ("three oh five pm", "3:05 PM"),
    ("six am", "6 AM"),
    ("seven o'clock", "7:00"),
    ("see you at nine thirty in the morning", "see you at 9:30 in the morning"),
    ("on March fifth twenty twenty four", "on March 5, 2024"),
    ("May third", "May 3"),
    ("the first of March", "the 1st of March"),
    ("in nineteen ninety nine", "in 1999"),
    ("twenty twenty was a hard year", "2020 was a hard year"),
    ("two thousand and twenty four", "2024"),
    ("my number is five five five one two three four", "my number is 5551234"),
    ("it is forty two", "it is 42"),
])
def test_english_itn(spoken: str, written: str) -> None:
    assert normalize_text(spoken, "en") == written


@pytest.mark.parametrize("text", [
    "I need one of them", "one more thing", "I may one day call back",
    "I have two accounts", "Hello, how can I help you today?", "",
])
def test_english_itn_leaves_ordinary_words(text: str) -> None:
    assert normalize_text(text, "en-US") == text


@pytest.mark.parametrize("spoken, written", [
    ("二零二四年三月五日", "2024年3月5日"),
    ("十二月三十一日", "12月31日"),
    ("三月五号", "3月5号"),
    ("两千零二十四年", "2024年"),
    ("利率是百分之三点五", "利率是3.5%"),
    ("三点半", "3:30"),
    ("下午三点十五分", "下午3:15"),
    ("上午十点半", "上午10:30"),
    ("晚上八点", "晚上8点"),
    ("三点钟", "3点"),
    ("二十五块钱", "25块钱"),
    ("一共是一千二百三十四元", "一共是1234元"),
    ("两百元", "200元"),
    ("五块钱", "5块钱"),
    ("十分钟后", "10分钟后"),
    ("我的电话是幺三八一二三四五六七八", "我的电话是13812345678"),
])
def test_chinese_itn(spoken: str, written: str) -> None:
    assert normalize_text(spoken, "zh") == written


@pytest.mark.parametrize("text", [
    "等一下", "我要一个", "十分感谢", "万一出问题", "千万不要", "好一点", "一五一十地说", "三五年",
    "一天",
])
def test_chinese_itn_leaves_ordinary_words(text: str) -> None:
    assert normalize_text(text, "zh-CN") == text


def test_rewritten_run_is_one_word_spanning_the_run() -> None:
    words = words_of("It costs twenty five dollars.")
    out = normalize_words(words, "en")
    assert [w.text for w in out] == ["It", "costs", "$25"]
    money = out[2]
    assert (money.begin_time, money.end_time) == (words[2].begin_time, words[4].end_time)
    assert money.punctuation == "."
    assert out[0] is words[0] and out[1] is words[1]  # untouched words are kept as they were


def test_run_does_not_cross_punctuation() -> None:
    words = words_of("twenty, five dollars")
    out = normalize_words(words, "en")
    assert [(w.text, w.punctuation) for w in out] == [("20", ","), ("$5", "")]
    assert out[1].begin_time == words[1].begin_time


def test_time_and_percent_spans() -> None:
    words = words_of("at three thirty pm rates rise three point five percent")
    out = normalize_words(words, "en")
    assert [w.text for w in out] == ["at", "3:30 PM", "rates", "rise", "3.5%"]
    assert (out[1].begin_time, out[1].end_time) == (words[1].begin_time, words[3].end_time)
    assert (out[4].begin_time, out[4].end_time) == (words[6].begin_time, words[9].end_time)


def test_chinese_words_spans() -> None:
    words = tokens(["时间是", "二零二四", "年三月", "五日"], {3: "。"})
    out = normalize_words(words, "zh")
    assert [w.text for w in out] == ["时间是", "2024年3月5日"]
    assert (out[1].begin_time, out[1].end_time, out[1].punctuation) == (100, 390, "。")
    assert out[0] is words[0]


def test_chinese_partial_words_keep_their_other_characters() -> None:
    words = tokens(["我要付二", "十五块钱", "可以吗"])
    out = normalize_words(words, None)  # language guessed from the script
    assert [w.text for w in out] == ["我要付25块钱", "可以吗"]
    assert (out[0].begin_time, out[0].end_time) == (0, 190)


def test_unknown_language_is_left_alone() -> None:
    words = words_of("dwadzieścia pięć dolarów")
    assert normalize_words(words, "pl") == words


# ----------------------------------------------------------------------------- disfluencies


def test_fillers_and_stutters_removed_english() -> None:
    words = words_of("um I I want to uh cancel my my plan.")
    out = remove_disfluencies(words, "en")
    assert " ".join(w.text for w in out) == "I want to cancel my plan"
    i_word = out[0]
    assert (i_word.begin_time, i_word.end_time) == (words[1].begin_time, words[2].end_time)
    assert out[-1].punctuation == "."
    assert all(a.end_time <= b.begin_time for a, b in itertools.pairwise(out))


def test_sentence_final_filler_gives_its_punctuation_away() -> None:
    out = remove_disfluencies(words_of("I want to cancel, hmm."), "en")
    # "cancel" already has its comma; the period is dropped with the filler
    assert [(w.text, w.punctuation) for w in out][-1] == ("cancel", ",")
    out = remove_disfluencies(words_of("I want to cancel um."), "en")
    assert [(w.text, w.punctuation) for w in out][-1] == ("cancel", ".")


def test_grammatical_repeats_are_kept() -> None:
    text = "I know that that is right and I had had enough"
    assert [w.text for w in remove_disfluencies(words_of(text), "en")] == text.split()


def test_fillers_and_stutters_removed_chinese() -> None:
    words = tokens(["嗯", "我", "我", "想", "呃", "问", "一下", "谢", "谢"], {0: "，"})
    out = remove_disfluencies(words, "zh")
    assert "".join(w.text for w in out) == "我想问一下谢谢"  # 谢谢 is a word, not a stutter
    assert (out[0].begin_time, out[0].end_time) == (100, 290)


def test_chinese_particle_a_kept_after_a_word() -> None:
    words = tokens(["啊", "好", "啊"], {0: "，"})
    assert [w.text for w in remove_disfluencies(words, "zh")] == ["好", "啊"]
