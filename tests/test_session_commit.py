"""Commits: ``SessionOptions.endpointing`` and ``force_endpoint`` (``AsyncStream.commit``), the
recognition side of the Qwen realtime protocol's manual mode and ``input_audio_buffer.clear``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import audiogen
from callscribe.errors import SessionError
from callscribe.recognition.events import Committed, FinalSentence, SpeechStarted, SpeechStopped
from callscribe.recognition.runtime import StreamOptions
from callscribe.recognition.session import RecognitionSession, SessionOptions

RATE = 16000


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("commit")
    from callscribe.audio import decode_bytes

    def say(text, name):
        return decode_bytes(audiogen.espeak_wav(text, tmp / f"{name}.wav", rate=RATE)
                            .read_bytes(), "wav")[0]
    a = say("Please check the balance of my savings account.", "a")
    b = say("I would like to speak with a manager about my bill.", "b")
    return a, b, audiogen.silence(1.5, RATE)


def feed(session, audio, step=1600, commit_after=None, discard=False) -> list:
    """Feed ``audio``; commit once ``commit_after`` samples are in; end the input."""
    events = []
    for i in range(0, len(audio), step):
        session.accept_waveform(audio[i:i + step])
        if commit_after is not None and i + step >= commit_after > i:
            session.force_endpoint(discard)
        events.extend(session.process())
    session.input_finished()
    while session.has_work():
        events.extend(session.process())
    return events


def finals(events):
    return [e for e in events if isinstance(e, FinalSentence)]


def test_without_endpointing_silence_does_not_split(runtime, parts):
    a, b, gap = parts
    audio = np.concatenate([gap, a, gap, b, gap])
    s = RecognitionSession(runtime.engine, runtime.vad, SessionOptions(endpointing=False))
    events = feed(s, audio, commit_after=len(audio))
    (f,) = finals(events)
    assert "account" in f.text.lower() and "manager" in f.text.lower(), f.text
    kinds = [type(e) for e in events]
    assert kinds.count(SpeechStarted) == 1
    assert kinds.index(FinalSentence) < kinds.index(SpeechStopped) < kinds.index(Committed)
    assert events[-1] == Committed(len(audio) * 1000 // RATE)
    # the same audio with endpointing (the default) is two sentences and no Committed
    s = RecognitionSession(runtime.engine, runtime.vad, SessionOptions())
    events = feed(s, audio)
    assert len(finals(events)) == 2 and not any(isinstance(e, Committed) for e in events)


def test_commit_ends_the_sentence_at_the_commit_point(runtime, parts):
    a, b, gap = parts
    first = np.concatenate([gap[:8000], a, gap[:3200]])  # only 200 ms of silence after a
    s = RecognitionSession(runtime.engine, runtime.vad, SessionOptions(endpointing=False))
    s.accept_waveform(first)
    s.force_endpoint()  # 200 ms after the first sentence: far less than any endpoint silence
    events = s.process()
    rest = np.concatenate([b, gap])
    for i in range(0, len(rest), 1600):
        s.accept_waveform(rest[i:i + 1600])
        events.extend(s.process())
    s.force_endpoint()
    events.extend(s.process())
    fs = finals(events)
    commits = [e for e in events if isinstance(e, Committed)]
    assert len(fs) == 2 and len(commits) == 2, events
    assert "account" in fs[0].text.lower() and "manager" in fs[1].text.lower()
    cut = commits[0].end_time
    assert fs[0].end_time <= cut <= fs[1].begin_time  # no audio shared across the commit
    assert events.index(fs[0]) < events.index(commits[0]) < events.index(fs[1])


def test_discard_drops_the_sentence(runtime, parts):
    a, b, gap = parts
    audio = np.concatenate([gap[:8000], a, b, gap])
    s = RecognitionSession(runtime.engine, runtime.vad, SessionOptions(endpointing=False))
    events = feed(s, audio, commit_after=8000 + len(a), discard=True)
    fs = finals(events)
    discarded = [e for e in events if isinstance(e, Committed)]
    assert discarded and discarded[0].discarded
    # the dropped sentence ends with the Committed event: no SpeechStopped for it
    i = events.index(discarded[0])
    assert any(isinstance(e, SpeechStarted) for e in events[:i])
    assert not any(isinstance(e, SpeechStopped) for e in events[:i])
    assert len(fs) == 1 and "manager" in fs[0].text.lower() and "account" not in fs[0].text.lower()
    assert fs[0].begin_time >= discarded[0].end_time


def test_commit_with_nothing_open_and_after_the_end(runtime):
    s = RecognitionSession(runtime.engine, runtime.vad, SessionOptions(endpointing=False))
    s.accept_waveform(audiogen.silence(0.5, RATE))
    s.force_endpoint()
    assert s.has_work()
    assert s.process() == [Committed(500)]
    s.input_finished()
    with pytest.raises(SessionError, match="commit after the end of input"):
        s.force_endpoint()


async def test_async_stream_commit_is_ordered_with_put(runtime, parts):
    a, _, gap = parts
    pcm = (np.clip(np.concatenate([gap[:8000], a, gap[:4800]]), -1, 1) * 32767).astype("<i2")
    stream = runtime.open_stream(StreamOptions(format="pcm", sample_rate=RATE,
                                               endpointing=False))
    reader = asyncio.create_task(_collect(stream))
    data = pcm.tobytes()
    for i in range(0, len(data), 6400):
        await stream.put(data[i:i + 6400])
    await stream.commit()
    await stream.finish()
    events = await asyncio.wait_for(reader, 120)
    fs = finals(events)
    assert len(fs) == 1 and "account" in fs[0].text.lower()
    assert isinstance(events[-1], Committed) and events[-1].end_time == len(pcm) * 1000 // RATE
    with pytest.raises(SessionError):
        await stream.commit()
    await stream.aclose()


async def _collect(stream):
    return [ev async for ev in stream.events()]
