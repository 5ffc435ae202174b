"""Streaming audio decoding: bytes of pcm/wav/mp3/opus/speex/aac/m4a/amr/flac/G.711 in,
float32 planar PCM at the recognizer's rate out.

    dec = open_decoder("mp3")             # or "pcm", sample_rate=8000, channels=2
    for chunk in websocket_chunks:
        audio = dec.feed(chunk)            # float32 (channels, n) at 16 kHz, n may be 0
    audio = dec.finish()                   # decoder delay + resampler tail

Everything is done in-process with PyAV and soxr; channels are never mixed.
"""

from __future__ import annotations

from .decoder import StreamDecoder, decode_bytes, open_decoder, select_channel
from .formats import SUPPORTED_FORMATS, canonical_format, sniff_format

__all__ = [
    "SUPPORTED_FORMATS",
    "StreamDecoder",
    "canonical_format",
    "decode_bytes",
    "open_decoder",
    "select_channel",
    "sniff_format",
]
