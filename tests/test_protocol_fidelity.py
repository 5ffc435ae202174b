"""Protocol details the vendor's own clients depend on (issue 16), Sans-I/O: feed frames and
recognition events, assert the exact fields.  The Java SDK suite (tests/java, run by
test_java_sdk.py) checks the same details end to end."""

from __future__ import annotations

import json

import pytest

from callscribe.gateway.auth import ApiKeys
from callscribe.protocols.common import SendFrame

from test_qwen_realtime_protocol import make, types, error_of, Clock


# --- 6: /api-ws/v1/realtime without ?model= -------------------------------------------------


@pytest.mark.parametrize("model", [None, ""])
def test_realtime_without_model_names_the_missing_parameter(model):
    err = error_of(make(Clock(), model).outputs())
    assert err["code"] == "ModelNotFound"
    assert "None" not in err["message"] and "''" not in err["message"]
    assert "?model=qwen3-asr-flash-realtime" in err["message"]


# --- 7: Authorization without "Bearer" ------------------------------------------------------


@pytest.mark.parametrize("header,ok", [
    ("Bearer sk-team-a", True), ("bearer sk-team-a", True), ("sk-team-a", True),
    ("  sk-team-a  ", True), ("sk-team-b", False), ("Basic sk-team-a", False),
    ("Bearer", False), ("", False), (None, False)])
def test_bare_api_key_is_accepted_like_bearer(header, ok):
    keys = ApiKeys(["sk-team-a"])
    got = keys.identify(header)
    assert (got is not None) is ok
    if ok:
        assert got == keys.identify("Bearer sk-team-a")


# --- 5: Qwen .completed never has "language": null ------------------------------------------


def _manual(p):
    from test_qwen_realtime_protocol import configure, start_audio
    configure(p, turn_detection=None, input_audio_transcription={})
    start_audio(p)


def _qwen():
    p = make(Clock())
    assert types(p.outputs()) == ["session.created"]
    return p


def _frames(p) -> list[dict]:
    return [json.loads(o.text) for o in p.outputs() if isinstance(o, SendFrame)]


def test_completed_of_silence_without_hint_has_a_language():
    from callscribe.recognition.events import Committed
    p = _qwen()
    _manual(p)
    p.receive_text(json.dumps({"event_id": "e1", "type": "input_audio_buffer.commit"}))
    p.outputs()
    p.recognition_event("sess_1", Committed(100))
    (done,) = [f for f in _frames(p)
               if f["type"] == "conversation.item.input_audio_transcription.completed"]
    assert done["language"] == "en" and done["transcript"] == ""


def test_completed_of_silence_takes_the_language_heard_last():
    from callscribe.recognition.events import Committed, FinalSentence
    p = _qwen()
    _manual(p)
    p.receive_text(json.dumps({"event_id": "e1", "type": "input_audio_buffer.commit"}))
    p.recognition_event("sess_1", FinalSentence(1, 0, 900, "你好。", (), "zh"))
    p.recognition_event("sess_1", Committed(1000))
    p.receive_text(json.dumps({"event_id": "e2", "type": "input_audio_buffer.append",
                               "audio": "AAAA"}))
    p.receive_text(json.dumps({"event_id": "e3", "type": "input_audio_buffer.commit"}))
    p.recognition_event("sess_1", Committed(2000))
    langs = [f["language"] for f in _frames(p)
             if f["type"] == "conversation.item.input_audio_transcription.completed"]
    assert langs == ["zh", "zh"]


# --- 4: Qwen .text: ``text`` only grows within an item --------------------------------------


def test_text_is_never_retracted_within_an_item():
    from callscribe.recognition.events import FinalSentence, Partial, SpeechStarted
    from test_qwen_realtime_protocol import configure, start_audio
    p = _qwen()
    configure(p)
    start_audio(p)
    p.recognition_event("sess_1", SpeechStarted(1, 0))
    # what the recogniser produced in the issue: the settled "what your " is re-decoded as
    # "What your ..." and its settled prefix falls back to ""
    p.recognition_event("sess_1", Partial(1, 0, 800, "ask not ", "what"))
    p.recognition_event("sess_1", Partial(1, 0, 1600, "ask not what your ", "country"))
    p.recognition_event("sess_1", Partial(1, 0, 2400, "", "Ask not, What your country can do"))
    p.recognition_event("sess_1", Partial(1, 0, 3200, "Ask not, What your country ", "can do for"))
    p.recognition_event("sess_1", FinalSentence(1, 0, 4000, "Ask not what your country can do.",
                                                (), "en"))
    fs = _frames(p)
    texts = [(f["text"], f["stash"]) for f in fs
             if f["type"] == "conversation.item.input_audio_transcription.text"]
    assert texts == [("ask not ", "what"),
                     ("ask not what your ", "country"),
                     ("ask not what your ", "country can do"),
                     ("ask not what your country ", "can do for")]
    for (a, _), (b, _) in zip(texts, texts[1:]):
        assert b.startswith(a)
    (done,) = [f for f in fs if f["type"].endswith(".completed")]
    assert done["transcript"] == "Ask not what your country can do."


def test_stash_after_an_earlier_sentence_of_the_item_keeps_the_space():
    from callscribe.recognition.events import FinalSentence, Partial
    p = _qwen()
    _manual(p)
    p.recognition_event("sess_1", FinalSentence(1, 0, 900, "Hello.", (), "en"))
    p.recognition_event("sess_1", Partial(2, 1000, 1800, "", "how are"))
    (f,) = [f for f in _frames(p) if f["type"].endswith(".text")]
    assert f["text"] + f["stash"] == "Hello. how are"
    assert f["language"] == "en"


@pytest.mark.parametrize("shown,settled,full,unspaced,want", [
    ("", "", "hi", False, ("", "hi")),
    ("a b ", "a b c ", "a b c d", False, ("a b c ", "d")),
    ("a b ", "", "A b c", False, ("a b ", "c")),
    ("a b ", "A B c ", "A B c d", False, ("a b c ", "d")),
    ("a b c ", "A ", "A b", False, ("a b c ", "")),
    ("你好", "", "您好吗", True, ("你好", "吗")),
    ("你好", "您好吗", "您好吗呀", True, ("你好吗", "呀")),
])
def test_grow(shown, settled, full, unspaced, want):
    from callscribe.protocols.qwen_text import grow
    assert grow(shown, settled, full, unspaced) == want


# --- 2 and 8: run-task sentence_begin, emotion fields ---------------------------------------


def _run_task(model="fun-asr-realtime", rate=16000, **params):
    from callscribe.protocols.run_task import RunTaskProtocol
    from test_run_task_protocol import start
    p = RunTaskProtocol(clock=Clock(), max_frame_bytes=1 << 20, max_task_seconds=3600)
    start(p, model=model, sample_rate=rate, **params)
    return p


def _sentences(p) -> list[dict]:
    return [json.loads(o.text)["payload"]["output"]["sentence"] for o in p.outputs()
            if isinstance(o, SendFrame)]


def test_sentence_begin_on_the_first_result_of_each_sentence():
    from callscribe.recognition.events import FinalSentence, Partial
    from test_run_task_protocol import TID
    p = _run_task()
    p.recognition_event(TID, Partial(1, 0, 800, "", "ask"))
    p.recognition_event(TID, Partial(1, 0, 1600, "ask ", "not"))
    p.recognition_event(TID, FinalSentence(1, 0, 2000, "Ask not.", (), "en"))
    # a sentence whose only result is its final: that final is also its beginning
    p.recognition_event(TID, FinalSentence(2, 2500, 3000, "Yes.", (), "en"))
    p.recognition_event(TID, Partial(3, 3500, 4000, "", "and"))
    got = [(s["sentence_id"], s["sentence_begin"], s["sentence_end"]) for s in _sentences(p)]
    assert got == [(1, True, False), (1, False, False), (1, False, True), (2, True, True),
                   (3, True, False)]


def _final_with(emotion):
    from callscribe.recognition.events import FinalSentence
    return FinalSentence(1, 0, 900, "Thank you.", (), "en", emotion)


@pytest.mark.parametrize("model,rate,semantic,vendor", [
    ("paraformer-realtime-8k-v2", 8000, False, True),
    ("paraformer-realtime-8k-v2", 8000, True, False),   # the vendor: not with semantic punct.
    ("fun-asr-realtime", 16000, False, False),
    ("paraformer-realtime-v2", 16000, False, False),
    ("paraformer-realtime-8k-v1", 8000, False, False)])
def test_emo_fields_only_where_the_vendor_has_them(model, rate, semantic, vendor):
    from callscribe.recognition.events import Emotion
    from test_run_task_protocol import TID
    p = _run_task(model, rate, semantic_punctuation_enabled=semantic)
    p.recognition_event(TID, _final_with(Emotion("positive", 0.734, "happy", "text:vader")))
    (s,) = _sentences(p)
    assert s["emotion"] == {"label": "happy", "polarity": "positive", "confidence": 0.734}
    if vendor:
        assert (s["emo_tag"], s["emo_confidence"]) == ("positive", 0.734)
    else:
        assert "emo_tag" not in s and "emo_confidence" not in s


def test_emotion_confidence_follows_the_classifier_score():
    """Not a constant: a clear sentiment scores higher than a faint one, a long neutral
    sentence higher than a one-word one, and calm speech is a surer neutral than agitated."""
    from callscribe.recognition.emotion import TextProsodyEmotion
    e = TextProsodyEmotion()
    conf = lambda text: e.estimate(text, "en", None).confidence  # noqa: E731
    assert conf("This is absolutely terrible, the worst service ever.") > \
        conf("It was not great.")
    long_neutral = "I am calling about the order number that I placed on the fourth of March."
    assert e.estimate(long_neutral, "en", None).polarity == "neutral"
    assert conf(long_neutral) > conf("Okay.")
    values = {conf(t) for t in ("Okay.", long_neutral, "It was not great.",
                                "Thank you so much, that was great.")}
    assert len(values) == 4 and all(0.0 < v < 1.0 for v in values)
    calm = e._label("neutral", 0.0, "", True)[1]
    agitated = e._label("neutral", 0.8, "", True)[1]
    assert calm > agitated


# --- 3: a final closed by the end of input ends with its last word (generated speech) -------


def test_final_closed_by_end_of_input_ends_with_its_last_word(runtime, tmp_path):
    """espeak-ng speech then 700 ms of silence, less than max_sentence_silence: the end of
    input (finish-task) closes the sentence, which ends with its last word, not with the
    stream."""
    import numpy as np

    import audiogen
    from callscribe.audio import decode_bytes
    from callscribe.recognition.events import FinalSentence
    from callscribe.recognition.session import RecognitionSession, SessionOptions
    path = audiogen.espeak_wav("Please check the balance of my savings account.",
                               tmp_path / "s.wav", rate=16000)
    speech = decode_bytes(path.read_bytes(), "wav")[0]
    audio = np.concatenate([audiogen.silence(0.3, 16000), speech, audiogen.silence(0.7, 16000)])
    session = RecognitionSession(runtime.engine, runtime.vad,
                                 SessionOptions(max_sentence_silence_ms=1300))
    events = []
    for i in range(0, len(audio), 1600):
        session.accept_waveform(audio[i:i + 1600])
        events += session.process()
    assert not [e for e in events if isinstance(e, FinalSentence)]  # not closed by silence
    session.input_finished()
    while session.has_work():
        events += session.process()
    (final,) = [e for e in events if isinstance(e, FinalSentence)]
    stream_ms = len(audio) * 1000 // 16000
    assert final.end_time == final.words[-1].end_time, final
    assert final.end_time <= stream_ms - 400, (final.end_time, stream_ms)
