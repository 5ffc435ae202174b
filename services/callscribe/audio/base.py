"""Shared pieces of the format back ends.

A back end turns bytes of one container/codec into float32 planar chunks at the source's
own rate; :class:`callscribe.audio.decoder.StreamDecoder` does rate checks, resampling and
the "no audio for too long" watchdog on top.
"""

from __future__ import annotations

import av
import numpy as np

from ..errors import AudioTooLarge, CorruptAudio

#: a decoder that turns this many bytes into no audio at all is fed garbage
STALL_LIMIT = 64 * 1024

Chunk = tuple[np.ndarray, int]  # (float32 array shaped (channels, n), sample rate)


class Backend:
    """Interface of a format back end (see module docstring)."""

    #: name used in messages ("wav", "mp3", ...)
    fmt: str = "?"
    #: sample rate and channel count once the header/first frame says so
    rate: int | None = None
    channels: int | None = None
    #: what told us the rate, for messages ("wav header", "mp3 stream")
    rate_source: str = "stream"
    #: whether a declared rate must match ``rate`` (False for Opus: it decodes at any rate)
    check_rate: bool = True
    #: bytes recognised as metadata (tags, cover art, comment packets); the watchdog skips them
    meta_bytes: int = 0
    #: None disables the watchdog (buffering back ends such as m4a)
    stall_limit: int | None = STALL_LIMIT

    def __init__(self, max_buffer_bytes: int) -> None:
        self.max_buffer_bytes = max_buffer_bytes

    def feed(self, data: bytes) -> list[Chunk]:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> list[Chunk]:  # pragma: no cover - interface
        raise NotImplementedError

    def check_buffer(self, size: int, what: str) -> None:
        if size > self.max_buffer_bytes:
            raise AudioTooLarge(
                f"{self.fmt}: {what} needs {size} bytes, more than max_buffer_bytes="
                f"{self.max_buffer_bytes}"
            )


class Skipper:
    """Counts down bytes to drop without buffering them (unknown chunks, tags, cover art)."""

    def __init__(self) -> None:
        self.remaining = 0

    def skip(self, data: bytes, pos: int) -> int:
        """Consume up to ``remaining`` bytes of ``data`` from ``pos``; return the new pos."""
        n = min(self.remaining, len(data) - pos)
        self.remaining -= n
        return pos + n


class Trimmer:
    """Drops ``skip`` leading samples and caps the total at ``limit`` (gapless trimming)."""

    def __init__(self, skip: int = 0, limit: int | None = None) -> None:
        self.skip = skip
        self.limit = limit
        self.emitted = 0

    def apply(self, arr: np.ndarray) -> np.ndarray:
        if self.skip:
            k = min(self.skip, arr.shape[1])
            arr = arr[:, k:]
            self.skip -= k
        if self.limit is not None:
            room = max(0, self.limit - self.emitted)
            if arr.shape[1] > room:
                arr = arr[:, :room]
        self.emitted += arr.shape[1]
        return arr


_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0}


#: most channels a decoded frame may have (a corrupt header can claim dozens)
MAX_CHANNELS = 8


def frame_to_float(frame) -> np.ndarray:
    """PyAV AudioFrame -> float32 array shaped (channels, samples)."""
    ch = frame.layout.nb_channels
    if not 1 <= ch <= MAX_CHANNELS:
        raise CorruptAudio(f"the decoder produced a frame with {ch} channels")
    if frame.format.is_planar and ch >= 8:
        # PyAV's AudioFrame.planes looks for a NULL after the last plane pointer, which a
        # planar frame with 8+ channels does not have: let FFmpeg interleave it instead.
        rs = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
        frames = rs.resample(frame) + rs.resample(None)
        return np.concatenate([frame_to_float(f) for f in frames], axis=1)
    fmt = frame.format.name
    arr = frame.to_ndarray()
    if frame.format.is_planar:
        arr = arr.reshape(ch, -1)
    else:
        arr = arr.reshape(-1, ch).T
    base = fmt.rstrip("p")
    if base in ("flt", "dbl"):
        out = arr.astype(np.float32, copy=False)
    elif base == "u8":
        out = (arr.astype(np.float32) - 128.0) / 128.0
    elif base in _SCALE:
        out = arr.astype(np.float32) / np.float32(_SCALE[base])
    elif base == "s64":
        out = (arr.astype(np.float64) / 9223372036854775808.0).astype(np.float32)
    else:  # pragma: no cover - every audio decoder we use emits one of the above
        raise CorruptAudio(f"unexpected decoder sample format {fmt!r}")
    return np.ascontiguousarray(out)


def decode_packet(ctx, packet) -> list[np.ndarray]:
    """Decode one packet (or None to flush) with a PyAV codec context."""
    return [frame_to_float(f) for f in ctx.decode(packet) if f.samples]


def empty(channels: int | None) -> np.ndarray:
    return np.zeros((channels or 1, 0), dtype=np.float32)
