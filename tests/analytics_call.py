"""A stereo call for the analytics tests (a helper module, not a test file).

Built from real recordings (../shared/audio) placed on the agent (left) and customer (right)
channels, with espeak-ng sentences for the greeting and the PII (a card number, a phone
number and a social security number).  Layout (seconds):

    agent    | greeting 0.5 |        librivox_0880 @8.0 |                  | librivox_0890 @T  |
    customer |              | librivox_0870 @5.0        | (silence ~10 s)  | card, phone, SSN  | librivox_0880 @T+2

so the agent interrupts the customer once (at 8.0 s + the clip's onset, while the customer
reads librivox_0870) and the customer interrupts the agent once (at T+2 s + onset); the longest
time nobody talks is from the end of librivox_0870 to the first PII sentence.  ``Truth`` has
those times, taken from the audio itself (the first and last 20 ms frame above -40 dBFS of each
placed clip), for the tests to compare with what recognition's word times give.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from audiogen import espeak_wav

RATE = 16000
GREETING = "Thank you for calling Acme Bank. How can I help you today?"
PII = [
    ("CARD", "My card number is four five three two, zero one five one, one two eight three, "
             "zero three six six."),
    ("PHONE", "You can call me back on two one two, five five five, zero one eight seven."),
    ("SSN", "My social security number is one two three, four five, six seven eight nine."),
]
#: digit strings that must never appear in clear text outside the clear-text topic
SECRETS = ["4532015112830366", "2125550187", "123456789"]


@dataclass
class Truth:
    duration_ms: int
    #: (by_role, of_role, begin_ms, end_ms) of each interruption, in time order
    interruptions: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: the longest time nobody talks (begin_ms, end_ms)
    longest_gap: tuple[int, int] = (0, 0)
    greeting_ms: tuple[int, int] = (0, 0)


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1, path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)


def speech_span(pcm: np.ndarray, thr_db: float = -40.0) -> tuple[int, int]:
    """(first, last) ms of the 20 ms frames above ``thr_db`` dBFS."""
    f = RATE // 50
    n = len(pcm) // f
    x = pcm[:n * f].astype(np.float32).reshape(n, f) / 32768.0
    db = 10 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    on = np.nonzero(db > thr_db)[0]
    return int(on[0]) * 20, int(on[-1] + 1) * 20


def build_call(audio: Path, tmp: Path) -> tuple[Path, Truth]:
    clips = {name: _read(audio / f"{name}.wav") for name in
             ("en_ps_librivox_0870", "en_ps_librivox_0880", "en_ps_librivox_0890")}
    greet = _read(espeak_wav(GREETING, tmp / "greeting.wav"))
    pii = [_read(espeak_wav(text, tmp / f"pii{i}.wav")) for i, (_, text) in enumerate(PII)]
    placed: list[tuple[int, int, np.ndarray]] = []  # (channel, start ms, pcm)

    def put(ch: int, at_ms: int, pcm: np.ndarray) -> tuple[int, int]:
        placed.append((ch, at_ms, pcm))
        b, e = speech_span(pcm)
        return at_ms + b, at_ms + e

    g = put(0, 500, greet)
    c1 = put(1, 5000, clips["en_ps_librivox_0870"])
    a1 = put(0, 8000, clips["en_ps_librivox_0880"])
    at = c1[1] + 10000  # ~10 s of silence on both channels
    first_pii = None
    for p in pii:
        span = put(1, at, p)
        first_pii = first_pii or span
        at = span[1] + 1500
    t = at + 1000
    a2 = put(0, t, clips["en_ps_librivox_0890"])
    c2 = put(1, t + 2000, clips["en_ps_librivox_0880"])
    total = max(at_ms * RATE // 1000 + len(pcm) for _, at_ms, pcm in placed) + RATE
    out = np.zeros((total, 2), np.int32)
    for ch, at_ms, pcm in placed:
        i = at_ms * RATE // 1000
        out[i:i + len(pcm), ch] += pcm
    path = tmp / "call.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.clip(out, -32768, 32767).astype("<i2").tobytes())
    truth = Truth(duration_ms=total * 1000 // RATE, greeting_ms=g,
                  interruptions=[("agent", "customer", a1[0], min(a1[1], c1[1])),
                                 ("customer", "agent", c2[0], min(a2[1], c2[1]))],
                  longest_gap=(c1[1], first_pii[0]))
    return path, truth
