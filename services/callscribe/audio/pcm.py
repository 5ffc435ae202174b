"""Headerless sample formats: s16le, G.711 mu-law/A-law, and the integer/float layouts of WAV."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Backend, Chunk


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    sample = np.where(u & 0x80, -magnitude, magnitude)
    return (sample / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    sample = np.where(a & 0x80, magnitude, -magnitude)
    return (sample / 32768.0).astype(np.float32)


#: G.711 byte -> float sample in [-1, 1] (ITU-T G.711, same values as FFmpeg's tables)
ULAW_TABLE = _ulaw_table()
ALAW_TABLE = _alaw_table()

#: sample layout -> bytes per sample
SAMPLE_WIDTH = {"u8": 1, "s16": 2, "s24": 3, "s32": 4, "f32": 4, "f64": 8, "mulaw": 1, "alaw": 1}


def samples_to_float(raw: bytes, kind: str, channels: int) -> np.ndarray:
    """Whole frames of interleaved little-endian samples -> float32 (channels, n)."""
    if kind == "s16":
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    elif kind == "mulaw":
        x = ULAW_TABLE[np.frombuffer(raw, dtype=np.uint8)]
    elif kind == "alaw":
        x = ALAW_TABLE[np.frombuffer(raw, dtype=np.uint8)]
    elif kind == "u8":
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / np.float32(128.0)
    elif kind == "s24":
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((b.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = b  # little-endian: 24 bits go to the top of an int32
        x = wide.view("<i4").reshape(-1).astype(np.float32) / np.float32(2147483648.0)
    elif kind == "s32":
        x = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    elif kind == "f32":
        x = np.nan_to_num(np.frombuffer(raw, dtype="<f4"), nan=0.0, posinf=1.0, neginf=-1.0)
    elif kind == "f64":
        x = np.nan_to_num(np.frombuffer(raw, dtype="<f8"), nan=0.0, posinf=1.0, neginf=-1.0)
        x = x.astype(np.float32)
    else:  # pragma: no cover - callers only pass SAMPLE_WIDTH keys
        raise ValueError(f"unknown sample layout {kind!r}")
    x = np.clip(x, -1.0, 1.0)
    return np.ascontiguousarray(x.reshape(-1, channels).T, dtype=np.float32)


class SampleConverter:
    """Streams interleaved samples, keeping a partial trailing frame across feeds."""

    def __init__(self, kind: str, channels: int) -> None:
        self.kind = kind
        self.channels = channels
        self.frame_bytes = SAMPLE_WIDTH[kind] * channels
        self._rest = b""

    def frames_in(self, nbytes: int) -> int:
        """Whole frames (samples per channel) that ``feed`` of ``nbytes`` more would return."""
        return (len(self._rest) + nbytes) // self.frame_bytes

    def feed(self, data: bytes) -> np.ndarray | None:
        if self._rest:
            data = self._rest + data
        usable = len(data) - len(data) % self.frame_bytes
        self._rest = data[usable:]
        if not usable:
            return None
        return samples_to_float(data[:usable], self.kind, self.channels)

    def reset(self) -> None:
        """Drop a partial trailing frame (the end of a data chunk)."""
        self._rest = b""


class RawBackend(Backend):
    """pcm (s16le), mulaw, alaw: rate and channels come from the caller.

    A partial trailing frame (an odd byte of s16, or fewer bytes than channels) is kept
    across feeds and dropped at finish.
    """

    _KIND: ClassVar[dict[str, str]] = {"pcm": "s16", "mulaw": "mulaw", "alaw": "alaw"}

    def __init__(self, fmt: str, rate: int, channels: int, max_buffer_bytes: int) -> None:
        super().__init__(max_buffer_bytes)
        self.fmt = fmt
        self.rate = rate
        self.channels = channels
        self.rate_source = "caller"
        self._conv = SampleConverter(self._KIND[fmt], channels)

    def feed(self, data: bytes) -> list[Chunk]:
        self.spend(self._conv.frames_in(len(data)), self.rate, self.channels)
        arr = self._conv.feed(data)
        return [] if arr is None else [(arr, self.rate)]

    def finish(self) -> list[Chunk]:
        return []
