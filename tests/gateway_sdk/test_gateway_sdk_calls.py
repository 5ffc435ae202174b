"""The SDK's recognition calls against ``callscribe serve`` (``[local]`` and ``[kafka]``):
``Recognition.call`` on a file in every format family, streaming with callbacks at real-time
pace, the v2 client with three tasks on one connection, and the vocabulary service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import audiogen
from sdkutil import KEY, LDC_WORDS, OTHER_KEY, call, joined, norm, stream_realtime

# --- Recognition.call(file) --------------------------------------------------------------


def test_call_file_words_usage_emotion(sdk, shared_audio):
    rec, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_jfk_16k.wav",
                       language_hints=["en"], some_unknown_knob=42)
    assert result.status_code == 200, result.message
    text = norm(joined(result))
    for w in ("fellow americans", "country", "ask"):
        assert w in text, text
    sentences = result.get_sentence()
    for s in sentences:
        assert s["sentence_end"] is True and s["end_time"] > s["begin_time"]
        assert s["words"] and all(w["end_time"] >= w["begin_time"] for w in s["words"])
        # fun-asr-realtime: no vendor emo_tag; callscribe's own emotion object instead
        assert "emo_tag" not in s and "emo_confidence" not in s
        assert s["emotion"]["polarity"] in ("positive", "negative", "neutral")
        assert 0.0 <= s["emotion"]["confidence"] <= 1.0
        assert result.get_usage(s)["duration"] >= 1
    print(f"\nRecognition.call en_jfk_16k.wav: first package delay "
          f"{rec.get_first_package_delay():.0f} ms, last package delay "
          f"{rec.get_last_package_delay():.0f} ms")


def _formats(shared_audio: Path, tmp: Path):
    """(id, model, format, rate, file, language, expected words): one real recording per
    format family; compressed ones are the real recordings re-encoded."""
    a = shared_audio
    lib70, lib80, lib90 = (a / f"en_ps_librivox_08{n}0.wav" for n in (7, 8, 9))
    return [
        ("pcm", "fun-asr-realtime", "pcm", 16000, a / "en_ps_goforward.raw", "en",
         ["forward"]),
        ("wav-8k", "paraformer-realtime-8k-v2", "wav", 8000, a / "en_ldc93s1_8k.wav", "en",
         LDC_WORDS),
        ("mp3", "paraformer-realtime-v2", "mp3", 24000, a / "en_de_multilingual.mp3", "en",
         ["permission", "software"]),
        ("opus", "fun-asr-realtime", "opus", 16000,
         audiogen.encode(a / "en_ldc93s1_16k.wav", "opus", tmp / "ldc.opus", 16000), "en",
         LDC_WORDS),
        ("speex", "fun-asr-realtime-2025-11-07", "speex", 16000,
         audiogen.encode(lib80, "speex", tmp / "l80.spx", 16000), "en", ["disposed", "young"]),
        ("aac", "paraformer-realtime-v1", "aac", 16000,
         audiogen.encode(lib90, "aac", tmp / "l90.aac", 16000), "en", ["selfish", "cold"]),
        ("amr", "paraformer-realtime-8k-v1", "amr", 8000,
         audiogen.encode(lib70, "amr", tmp / "l70.amr"), "en", ["dashwood", "leisure", "power"]),
        ("wav-zh", "fun-asr-realtime", "wav", 16000, a / "zh_funasr_sample.wav", "zh",
         ["滨海", "新区", "房"]),
    ]


@pytest.fixture(scope="module")
def format_cases(shared_audio, tmp_path_factory):
    if not audiogen.have_tools("ffmpeg", "sox"):
        pytest.skip("ffmpeg/sox not installed (needed to encode opus/speex/aac/amr)")
    return {c[0]: c for c in _formats(shared_audio, tmp_path_factory.mktemp("fmt"))}


@pytest.mark.parametrize("case", ["pcm", "wav-8k", "mp3", "opus", "speex", "aac", "amr",
                                  "wav-zh"])
def test_call_each_format_family(sdk, format_cases, case):
    _, model, fmt, rate, path, lang, words = format_cases[case]
    _, result = call(model, fmt, rate, path, language_hints=[lang])
    assert result.status_code == 200, result.message
    text = norm(joined(result))
    assert any(w in text for w in words), (case, text)



def test_streaming_realtime_interim_final_complete(sdk, shared_audio):
    c, rec = stream_realtime(shared_audio / "en_jfk_16k.wav", language_hints=["en"],
                             heartbeat=True)
    assert not c.errors, c.errors
    assert c.opened and c.completed and c.closed
    assert c.interim, "no interim results"
    assert all(s["end_time"] is None and s["sentence_end"] is False for s in c.interim)
    assert c.final and all(s["end_time"] is not None and s["words"] for s in c.final)
    text = norm(" ".join(s["text"] for s in c.final))
    assert "fellow americans" in text and "your country" in text, text
    print(f"\nstreaming en_jfk_16k (real time): first package delay "
          f"{rec.get_first_package_delay():.0f} ms, last package delay "
          f"{rec.get_last_package_delay():.0f} ms")


# --- v2 client: three tasks on one connection --------------------------------------------------


def test_v2_three_tasks_on_one_connection(server, shared_audio):
    import dashscope
    client = dashscope.Client(api_key=KEY, base_url=server.http_url)
    conn = dashscope.WsConnection(url=server.ws_url, api_key=KEY, timeout=60)
    cases = [("en_ps_goforward.raw", "pcm", ["forward"]),
             ("en_ldc93s1_16k.wav", "wav", LDC_WORDS),
             ("en_ps_librivox_0880.wav", "wav", ["disposed", "young man"])]
    task_ids = []
    try:
        for name, fmt, words in cases:
            rec = client.audio.asr.recognize(model="fun-asr-realtime", format=fmt,
                                             sample_rate=16000, connection=conn,
                                             parameters={"language_hints": ["en"]})
            with rec:
                data = (shared_audio / name).read_bytes()
                for off in range(0, len(data), 12800):
                    rec.send_audio_frame(data[off:off + 12800])
                rec.stop()
                events = list(rec.events())
                task_ids.append(rec.request_id)
            assert events[-1]["header"]["event"] == "task-finished"
            finals = [e["payload"]["output"]["sentence"] for e in events
                      if e["header"]["event"] == "result-generated"
                      and e["payload"]["output"]["sentence"]["sentence_end"]]
            text = norm(" ".join(s["text"] for s in finals))
            assert any(w in text for w in words), (name, text)
            assert not conn.closed
    finally:
        conn.close()
    assert len(set(task_ids)) == 3


# --- vocabularies ----------------------------------------------------------------------------


def test_vocabulary_service_lifecycle(sdk, server, shared_audio, monkeypatch):
    from dashscope.audio.asr import VocabularyService
    from dashscope.audio.asr.vocabulary import VocabularyServiceException
    svc = VocabularyService()
    words = [{"text": "Dashwood", "weight": 4, "lang": "en"},
             {"text": "Marianne", "weight": 2, "lang": "en"}]
    vid = svc.create_vocabulary(target_model="fun-asr-realtime", prefix="sense",
                                vocabulary=words)
    assert re.fullmatch(r"vocab-sense-[0-9a-f]{32}", vid)
    assert vid in [v["vocabulary_id"] for v in svc.list_vocabularies(prefix="sense")]
    got = svc.query_vocabulary(vid)
    assert got["vocabulary"] == words and got["status"] == "OK"
    svc.update_vocabulary(vid, words[:1])
    assert svc.query_vocabulary(vid)["vocabulary"] == words[:1]

    # used in a task: the recognizer gets the hotwords
    seen = []
    real_open = server.gw.runtime.open_stream
    monkeypatch.setattr(server.gw.runtime, "open_stream",
                        lambda opts: seen.append(opts.hotwords) or real_open(opts))
    _, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_ps_librivox_0870.wav",
                     vocabulary_id=vid)
    assert result.status_code == 200, result.message
    assert "dashwood" in norm(joined(result))
    assert [h.text for h in seen[0]] == ["Dashwood"]

    # another key cannot see it
    other = VocabularyService(api_key=OTHER_KEY)
    assert vid not in [v["vocabulary_id"] for v in other.list_vocabularies()]

    svc.delete_vocabulary(vid)
    with pytest.raises(VocabularyServiceException) as err:
        svc.query_vocabulary(vid)
    assert "404" in str(err.value) and "VocabularyNotFound" in str(err.value)
    with pytest.raises(VocabularyServiceException, match="weight 9 is invalid"):
        svc.create_vocabulary(target_model="fun-asr-realtime", prefix="bad",
                              vocabulary=[{"text": "x", "weight": 9}])
    # a deleted vocabulary in a task: a specific task-failed
    _, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_ldc93s1_16k.wav",
                     vocabulary_id=vid)
    assert result.code == "VocabularyNotFound", (result.code, result.message)

