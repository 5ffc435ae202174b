"""``callscribe serve`` (standalone) with ``CALLSCRIBE_GATEWAY_REDACT=true``: the real model,
a real gateway, the official dashscope SDK streaming an espeak-ng card number; neither the
interim results nor the final show the digits."""

from __future__ import annotations

import re
import threading
import wave
from pathlib import Path

import pytest
from analytics_call import PII
from audiogen import espeak_wav, have_tools
from serverutil import start_gateway

from callscribe.settings import load_settings

KEY = "sk-callscribe-redact-test"


@pytest.fixture(scope="module")
def redacting_gateway(loop_thread, tmp_path_factory):
    if not have_tools("espeak-ng", "sox"):
        pytest.skip("espeak-ng and sox are needed")
    from callscribe.recognition.runtime import Runtime

    settings = load_settings(api_keys=KEY, gateway_redact=True,
                             vocabulary_db=tmp_path_factory.mktemp("gw") / "vocab.sqlite3")
    runtime = Runtime.create(settings)
    gw = loop_thread.run(start_gateway(settings, runtime, open_timeout=2.0))
    yield gw
    loop_thread.run(gw.shutdown(0))
    runtime.close()


def test_sdk_stream_gets_redacted_interims_and_finals(redacting_gateway, monkeypatch,
                                                      tmp_path: Path) -> None:
    import dashscope
    from dashscope.audio.asr import Recognition, RecognitionCallback, RecognitionResult

    url = f"ws://127.0.0.1:{redacting_gateway.port}/api-ws/v1/inference"
    monkeypatch.setattr(dashscope, "base_websocket_api_url", url)
    monkeypatch.setattr(dashscope, "api_key", KEY)
    wav = espeak_wav(PII[0][1], tmp_path / "card.wav")
    with wave.open(str(wav)) as w:
        pcm = w.readframes(w.getnframes())
    interim: list[dict] = []
    final: list[dict] = []
    errors: list = []
    done = threading.Event()

    class CB(RecognitionCallback):
        def on_event(self, result):
            s = result.get_sentence()
            (final if RecognitionResult.is_sentence_end(s) else interim).append(s)

        def on_complete(self):
            done.set()

        def on_error(self, result):
            errors.append((result.code, result.message))
            done.set()

    rec = Recognition(model="fun-asr-realtime", format="pcm", sample_rate=16000,
                      callback=CB(), language_hints=["en"])
    rec.start()
    for off in range(0, len(pcm), 3200):
        rec.send_audio_frame(pcm[off:off + 3200])
    rec.stop()  # returns once the task finished
    assert done.wait(60) and not errors, errors
    assert interim, "no interim results"
    text = " ".join(s["text"] for s in final)
    assert "[CARD]" in text, text
    for s in interim + final:
        digits = [re.sub(r"\D", "", r) for r in re.findall(r"\d[\d ,.-]*", s["text"])]
        assert all(len(d) < 4 for d in digits), s["text"]
        assert not re.search(r"\b(four|five|three|two|zero|one)\b.*\b(five|one|six)\b",
                             s["text"].lower()), s["text"]
    card = next(s for s in final if "[CARD]" in s["text"])
    emptied = [w for w in card["words"] if w["text"] == ""]
    assert emptied and all(card["begin_time"] <= w["begin_time"] <= w["end_time"]
                           <= card["end_time"] for w in emptied)
