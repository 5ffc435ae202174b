"""Shared pieces of the format back ends.

A back end turns bytes of one container/codec into float32 planar chunks at the source's
own rate; :class:`callscribe.audio.decoder.StreamDecoder` does rate checks, resampling and
the "no audio for too long" watchdog on top.

Bounds, so that no input can make the decoder allocate much more than it is worth:

* every header's channel count, sample rate and sample size is checked against
  :data:`MAX_CHANNELS` / :data:`MIN_RATE`..:data:`MAX_RATE` (:func:`check_layout`) before
  anything is sized from it (a WAV header claiming 65535 channels is refused, not resampled);
* one ``feed()``/``finish()`` call produces at most ``call_limit_ms`` of audio (counted over
  all channels, so the memory of one call is at most ``call_limit_ms`` at the source rate of
  one channel, whatever the layout): a back end
  calls :meth:`Backend.spend` *before* it decodes or converts each piece, so compressed input
  that expands enormously (one-byte AMR NO_DATA frames, one-byte Opus packets) stops with
  :class:`~callscribe.errors.DecodeLimitExceeded` after at most that much audio, instead of
  allocating all of it.
"""

from __future__ import annotations

import av
import numpy as np

from ..errors import AudioTooLarge, CorruptAudio, DecodeLimitExceeded, UnsupportedFormat

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
    #: most audio (ms, per channel) one feed()/finish() call may produce; None: no limit
    call_limit_ms: int | None = None

    def __init__(self, max_buffer_bytes: int) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self._call_ms = 0.0

    def begin_call(self) -> None:
        """A new feed()/finish() call starts: its output budget is full again."""
        self._call_ms = 0.0

    def spend(self, samples: int, rate: int | None, channels: int | None = 1) -> None:
        """Account for ``samples`` (per channel, at ``rate``, times ``channels``: the budget
        counts every channel) about to be produced; raise DecodeLimitExceeded when this
        call's output would exceed ``call_limit_ms``."""
        if self.call_limit_ms is None or not rate or samples <= 0:
            return
        self._call_ms += samples * (channels or 1) * 1000.0 / rate
        if self._call_ms > self.call_limit_ms:
            raise DecodeLimitExceeded(
                f"{self.fmt}: one input decodes to more than {self.call_limit_ms} ms of audio "
                "(all channels counted), "
                f"the most a session may buffer (CALLSCRIBE_MAX_BUFFERED_AUDIO_MS="
                f"{self.call_limit_ms}); send the audio in smaller pieces")

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


#: most channels a stream may have (a corrupt or hostile header can claim 65535)
MAX_CHANNELS = 8
#: sample rates accepted from any header (telephony 8 kHz .. studio 384 kHz; a lower rate
#: would multiply the resampler's output per input byte)
MIN_RATE = 4000
MAX_RATE = 384_000
#: bits per sample accepted from any header
MAX_SAMPLE_BITS = 64


def check_layout(fmt: str, source: str, *, channels: int | None = None,
                 rate: int | None = None, bits: int | None = None) -> None:
    """Refuse (UnsupportedFormat) a header's channel count, rate or sample size outside what
    the decoders support, before anything is allocated from it."""
    if channels is not None and not 1 <= channels <= MAX_CHANNELS:
        raise UnsupportedFormat(f"{fmt}: the {source} says {channels} channels; at most "
                                f"{MAX_CHANNELS} are supported")
    if rate is not None and not MIN_RATE <= rate <= MAX_RATE:
        raise UnsupportedFormat(f"{fmt}: the {source} says {rate} Hz; supported sample rates "
                                f"are {MIN_RATE} to {MAX_RATE} Hz")
    if bits is not None and not 1 <= bits <= MAX_SAMPLE_BITS:
        raise UnsupportedFormat(f"{fmt}: the {source} says {bits}-bit samples; at most "
                                f"{MAX_SAMPLE_BITS} bits are supported")


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


def decode_packet(ctx, packet, backend: Backend | None = None) -> list[np.ndarray]:
    """Decode one packet (or None to flush) with a PyAV codec context; with ``backend``, each
    frame is charged to its output budget (:meth:`Backend.spend`) before it is converted."""
    out = []
    for f in ctx.decode(packet):
        if f.samples:
            if backend is not None:
                backend.spend(f.samples, f.sample_rate, f.layout.nb_channels)
            out.append(frame_to_float(f))
    return out


def empty(channels: int | None) -> np.ndarray:
    return np.zeros((channels or 1, 0), dtype=np.float32)
