"""`callscribe transcribe` as a user runs it: a subprocess on files the test makes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import audiogen
from callscribe.audio import decode_bytes


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "callscribe.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stereo_call(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    left = decode_bytes(audiogen.espeak_wav("Good morning, this is the billing department.",
                                            tmp / "l.wav").read_bytes(), "wav")[0]
    right = decode_bytes(audiogen.espeak_wav("Hello, my internet connection keeps dropping.",
                                             tmp / "r.wav", voice="en-gb").read_bytes(), "wav")[0]
    n = max(len(left), len(right)) + 16000
    both = np.zeros((2, n + 48000), np.float32)
    both[0, 8000:8000 + len(left)] = left           # agent speaks first
    both[1, n - len(right):n] = right               # then the customer
    path = tmp / "call.wav"
    audiogen.write_wav(path, both, 16000, 2)
    return path


def test_json_output_per_channel(stereo_call):
    out = run_cli("transcribe", "--format", "json", str(stereo_call))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    sentences = doc["sentences"]
    by_ch = {ch: " ".join(s["text"] for s in sentences if s["channel"] == ch) for ch in (0, 1)}
    assert "department" in by_ch[0].lower() and "internet" in by_ch[1].lower(), by_ch
    assert "internet" not in by_ch[0].lower() and "department" not in by_ch[1].lower()
    for s in sentences:
        assert set(s) >= {"sentence_id", "channel", "begin_time", "end_time", "text", "language",
                          "words"}
        assert s["language"] == "en"
        for w in s["words"]:
            assert set(w) == {"begin_time", "end_time", "text", "punctuation"}
            assert s["begin_time"] <= w["begin_time"] <= w["end_time"] <= s["end_time"]
    first_left = min(s["begin_time"] for s in sentences if s["channel"] == 0)
    first_right = min(s["begin_time"] for s in sentences if s["channel"] == 1)
    assert first_left < first_right


def test_srt_and_vtt(stereo_call):
    srt = run_cli("transcribe", "--format", "srt", str(stereo_call))
    assert srt.returncode == 0, srt.stderr
    blocks = [b for b in srt.stdout.strip().split("\n\n") if b.strip()]
    assert blocks and blocks[0].splitlines()[0] == "1"
    assert " --> " in blocks[0].splitlines()[1] and "," in blocks[0].splitlines()[1]
    assert blocks[0].splitlines()[2].startswith("[ch0] ")
    vtt = run_cli("transcribe", "--format", "vtt", str(stereo_call))
    assert vtt.stdout.startswith("WEBVTT\n")


def test_raw_pcm_needs_rate_and_errors_are_clear(tmp_path):
    garbage = tmp_path / "x.mp3"
    garbage.write_bytes(b"\x00\x01not audio at all" * 5000)
    out = run_cli("transcribe", str(garbage))
    assert out.returncode == 2 and "callscribe: error:" in out.stderr
    assert "Traceback" not in out.stderr
    missing = run_cli("transcribe", str(tmp_path / "nope.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_text_output_shows_language_and_emotion(stereo_call):
    out = run_cli("transcribe", str(stereo_call))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) >= 2
    import re
    for line in lines:
        assert re.match(r"^\[ch[01]\] \[\d\d:\d\d\.\d{3} en (positive|negative|neutral)\] \S", line), line


def test_hotword_options_are_validated(stereo_call, tmp_path):
    bad = run_cli("transcribe", "--hotword", "billing:9", str(stereo_call))
    assert bad.returncode == 2 and "weight 9 is invalid" in bad.stderr
    vocab = tmp_path / "v.json"
    vocab.write_text('[{"text": "one two three four five six", "weight": 3, "lang": "en"}]')
    bad = run_cli("transcribe", "--vocabulary", str(vocab), str(stereo_call))
    assert bad.returncode == 2 and "at most 5 English words" in bad.stderr
    vocab.write_text('[{"text": "billing department", "weight": 4, "lang": "en"}]')
    ok = run_cli("transcribe", "--format", "json", "--vocabulary", str(vocab), str(stereo_call))
    assert ok.returncode == 0, ok.stderr
    assert "billing department" in ok.stdout.lower()
