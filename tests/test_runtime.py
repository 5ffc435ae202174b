"""The asyncio stream adapter: bytes in, events out, backpressure, errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import audiogen
from callscribe.errors import AudioError, UnsupportedFormat
from callscribe.recognition.events import FinalSentence, Partial
from callscribe.recognition.runtime import Runtime, StreamOptions
from callscribe.settings import load_settings


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("rt")
    path = audiogen.espeak_wav("Thank you for calling, how can I help you today?", tmp / "a.wav")
    from callscribe.audio import decode_bytes
    pcm = decode_bytes(path.read_bytes(), "wav")[0]
    pcm = np.concatenate([np.zeros(8000, np.float32), pcm, np.zeros(16000, np.float32)])
    return (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()


async def collect(stream, data: bytes, chunk: int, pace: float = 0.0) -> list:
    """Stream ``data``; ``pace`` > 0 sleeps that fraction of each chunk's duration."""
    async def reader():
        return [ev async for ev in stream.events()]
    task = asyncio.create_task(reader())
    for i in range(0, len(data), chunk):
        await stream.put(data[i:i + chunk])
        if pace:
            await asyncio.sleep(pace * chunk / 32000)
    await stream.finish()
    return await asyncio.wait_for(task, 120)


async def test_stream_events(runtime, speech_pcm):
    stream = runtime.open_stream(StreamOptions(format="pcm", sample_rate=16000))
    events = await collect(stream, speech_pcm, 3200, pace=0.5)  # twice real time
    finals = [e for e in events if isinstance(e, FinalSentence)]
    assert finals and "help" in " ".join(f.text for f in finals).lower()
    assert any(isinstance(e, Partial) for e in events)
    assert stream.audio_ms == len(speech_pcm) // 32


async def test_backpressure_takes_everything_without_loss(runtime, speech_pcm):
    """Far faster than real time into a small buffer: put() waits, nothing is dropped."""
    small = Runtime(load_settings(max_buffered_audio_ms=2000), runtime.engine, runtime.vad)
    try:
        data = speech_pcm * 4
        stream = small.open_stream(StreamOptions(format="pcm", sample_rate=16000))
        events = await collect(stream, data, 64000)
        assert stream.audio_ms == len(data) // 32
        finals = [e for e in events if isinstance(e, FinalSentence)]
        assert len(finals) == 4
    finally:
        small.close()


async def test_unknown_format_and_corrupt_audio(runtime):
    with pytest.raises(UnsupportedFormat):
        runtime.open_stream(StreamOptions(format="xyz", sample_rate=16000))
    stream = runtime.open_stream(StreamOptions(format="mp3", sample_rate=16000))
    with pytest.raises(AudioError):
        for _ in range(40):
            await stream.put(bytes(range(256)) * 16)
    await stream.aclose()
