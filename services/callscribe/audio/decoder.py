"""The streaming decoder: bytes in, float32 planar PCM at the target rate out."""

from __future__ import annotations

import struct

import av
import numpy as np
import soxr

from ..errors import (
    AudioError,
    CallscribeError,
    ConfigurationError,
    CorruptAudio,
    SampleRateMismatch,
    SessionError,
    UnsupportedFormat,
)
from .amr import AmrBackend
from .base import MAX_CHANNELS, Backend, Chunk, check_layout, empty
from .flac import FlacBackend
from .formats import RAW_FORMATS, canonical_format
from .m4a import M4aBackend
from .mpeg import AacBackend, Mp3Backend
from .ogg import OggBackend
from .pcm import RawBackend
from .wav import WavBackend

_MAX_RATE = 384_000
_MAX_CHANNELS = MAX_CHANNELS
_WRAPPED = (av.error.FFmpegError, struct.error, IndexError, ValueError, KeyError, OverflowError,
            EOFError, ZeroDivisionError)


def _make_backend(fmt: str, rate: int | None, channels: int | None, max_buffer: int) -> Backend:
    if fmt in RAW_FORMATS:
        if rate is None:
            raise SampleRateMismatch(f"{fmt}: sample_rate is required for headerless audio")
        return RawBackend(fmt, rate, channels or 1, max_buffer)
    if fmt == "wav":  # with a declared rate, a stream without a RIFF header is s16le PCM
        return WavBackend(max_buffer, (rate, channels or 1) if rate else None)
    if fmt == "mp3":
        return Mp3Backend(max_buffer)
    if fmt == "aac":
        return AacBackend(max_buffer)
    if fmt == "flac":
        return FlacBackend(max_buffer)
    if fmt == "amr":
        return AmrBackend(max_buffer)
    if fmt == "m4a":
        return M4aBackend(max_buffer)
    return OggBackend(fmt, max_buffer)  # opus, speex, ogg


class StreamDecoder:
    """Decode one audio stream fed in arbitrary byte chunks.

    ``feed(data)`` returns whatever audio is complete so far, as float32 shaped
    ``(channels, n)`` at ``target_rate`` with values in [-1, 1] (``n`` may be 0; channels
    are never mixed).  ``finish()`` flushes decoder delay and the resampler tail; ``feed``
    after it raises SessionError.  Concatenating every output equals decoding the whole
    input at once, whatever the chunk boundaries (bit-exact for pcm/G.711/wav at the
    target rate, within float noise otherwise).

    Output is produced as data arrives for every format except m4a/MP4, whose index may sit
    at the end of the file: it is buffered until ``finish()`` (at most ``max_buffer_bytes``,
    else AudioTooLarge).  No other buffer grows beyond ``max_buffer_bytes``.

    Empty results before the channel count is known have shape ``(1, 0)`` (or the declared
    channel count); skip empty arrays when concatenating.  A stream of zero bytes decodes to
    nothing without error; a stream that stops inside its header raises CorruptAudio.

    Errors (callscribe.errors): UnsupportedFormat, CorruptAudio (including any PyAV/struct
    error, and a stream that yields no decodable audio for ~64 KiB of input),
    SampleRateMismatch (a declared rate the container contradicts, or a raw format without
    a rate), AudioTooLarge, AudioError (declared channels the container contradicts).
    Once an error is raised the decoder is dead: later calls raise it again.

    ``max_feed_ms``: the most audio one ``feed()`` (or ``finish()``) may produce.  The back
    end stops as soon as it would go past it, before decoding the rest, and raises
    DecodeLimitExceeded (an AudioTooLarge): a small compressed input cannot expand into
    minutes of audio and gigabytes of memory.  None: no limit (whole files).  Channel counts,
    rates and sample sizes of every header are checked before anything is sized from them
    (UnsupportedFormat: at most 8 channels, 4000..384000 Hz).
    """

    def __init__(
        self,
        format: str,
        sample_rate: int | None = None,
        channels: int | None = None,
        *,
        target_rate: int = 16000,
        max_buffer_bytes: int = 64 << 20,
        max_feed_ms: int | None = None,
    ) -> None:
        fmt = canonical_format(format)
        if sample_rate is not None and not (
            isinstance(sample_rate, int) and 0 < sample_rate <= _MAX_RATE
        ):
            raise SampleRateMismatch(f"invalid sample_rate {sample_rate!r}")
        if channels is not None and not (
            isinstance(channels, int) and 0 < channels <= _MAX_CHANNELS
        ):
            raise UnsupportedFormat(f"invalid channels {channels!r} (1..{_MAX_CHANNELS})")
        if not (isinstance(target_rate, int) and 0 < target_rate <= _MAX_RATE):
            raise ConfigurationError(f"invalid target_rate {target_rate!r}")
        if not (isinstance(max_buffer_bytes, int) and max_buffer_bytes > 0):
            raise ConfigurationError(f"invalid max_buffer_bytes {max_buffer_bytes!r}")
        self.target_rate = target_rate
        self.max_buffer_bytes = max_buffer_bytes
        self._declared_rate = sample_rate
        self._declared_channels = channels
        if max_feed_ms is not None and not (isinstance(max_feed_ms, int) and max_feed_ms > 0):
            raise ConfigurationError(f"invalid max_feed_ms {max_feed_ms!r}")
        self._backend = _make_backend(fmt, sample_rate, channels, max_buffer_bytes)
        self._backend.call_limit_ms = max_feed_ms
        self.channels: int | None = self._backend.channels
        self.source_rate: int | None = self._backend.rate
        self.bytes_in = 0
        self.samples_out = 0  # per channel, at target_rate
        self._resampler: soxr.ResampleStream | None = None
        self._finished = False
        self._error: CallscribeError | None = None
        self._produced = False
        self._mark = 0  # effective input position at the last decoded audio

    # -- public ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> np.ndarray:
        """Decode ``data``; return the audio that became available (may be empty)."""
        self._check_alive("feed")
        if self._finished:
            raise SessionError(f"{self.format}: feed() after finish()")
        if not data:
            return self._empty()
        data = bytes(data)
        self.bytes_in += len(data)
        self._backend.begin_call()
        chunks = self._call(self._backend.feed, data)
        out = self._call(self._emit, chunks, False)
        self._call(self._watchdog, chunks)
        return out

    def finish(self) -> np.ndarray:
        """Flush everything buffered and close the decoder (calling it again returns nothing)."""
        self._check_alive("finish")
        if self._finished:
            return self._empty()
        self._finished = True
        self._backend.begin_call()
        chunks = self._call(self._backend.finish)
        return self._call(self._emit, chunks, True)

    @property
    def format(self) -> str:
        """Canonical format; "ogg" becomes "opus" or "speex" once the stream says which."""
        return self._backend.fmt

    @property
    def headerless(self) -> bool:
        """True when a "wav" stream had no RIFF header and is decoded as s16le PCM."""
        return getattr(self._backend, "headerless", False)

    @property
    def finished(self) -> bool:
        return self._finished

    # -- internals -------------------------------------------------------------------------

    def _check_alive(self, what: str) -> None:
        if self._error is not None:
            err = self._error
            raise type(err)(f"{err.message} (decoder failed earlier; {what}() refused)")

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except CallscribeError as exc:
            self._error = exc
            raise
        except _WRAPPED as exc:
            err = CorruptAudio(f"{self._backend.fmt}: {type(exc).__name__}: {exc}")
            self._error = err
            raise err from exc

    def _empty(self) -> np.ndarray:
        return empty(self.channels or self._declared_channels)

    def _learn(self) -> None:
        """Copy rate/channels from the back end once known, checking declared values."""
        b = self._backend
        if (self.source_rate is None and b.rate) or (self.channels is None and b.channels):
            # before any resampler or buffer is sized from them, whatever the container
            check_layout(b.fmt, b.rate_source, channels=b.channels or None,
                         rate=None if b.rate_source == "caller" else (b.rate or None))
        if self.source_rate is None and b.rate:
            if b.check_rate and self._declared_rate and self._declared_rate != b.rate:
                raise SampleRateMismatch(
                    f"declared sample_rate {self._declared_rate} but the {b.rate_source} "
                    f"says {b.rate}"
                )
            self.source_rate = b.rate
        if self.channels is None and b.channels:
            if self._declared_channels and self._declared_channels != b.channels:
                raise AudioError(
                    f"declared channels {self._declared_channels} but the {b.rate_source} "
                    f"says {b.channels}"
                )
            self.channels = b.channels

    def _emit(self, chunks: list[Chunk], last: bool) -> np.ndarray:
        self._learn()
        parts = []
        for arr, rate in chunks:
            if self.channels is None:
                self._backend.channels = self._backend.channels or arr.shape[0]
                self._learn()
            if arr.shape[0] != self.channels:
                raise CorruptAudio(
                    f"{self._backend.fmt}: channel count changed from {self.channels} to "
                    f"{arr.shape[0]} mid-stream"
                )
            if self.source_rate is None:
                self._backend.rate = self._backend.rate or rate
                self._learn()
            if rate != self.source_rate:
                raise CorruptAudio(
                    f"{self._backend.fmt}: sample rate changed from {self.source_rate} to "
                    f"{rate} mid-stream"
                )
            parts.append(self._resample(arr, False))
        if last and self._resampler is not None:
            parts.append(self._resample(None, True))
        parts = [p for p in parts if p.shape[1]]
        if not parts:
            return self._empty()
        out = np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=1)
        np.clip(out, -1.0, 1.0, out=out)
        self.samples_out += out.shape[1]
        return out

    def _resample(self, arr: np.ndarray | None, last: bool) -> np.ndarray:
        if self.source_rate == self.target_rate:
            assert arr is not None
            return np.asarray(arr, dtype=np.float32)
        if self._resampler is None:
            assert self.source_rate is not None and self.channels is not None
            self._resampler = soxr.ResampleStream(
                self.source_rate, self.target_rate, self.channels, dtype="float32", quality="HQ"
            )
        x = np.zeros((0, self.channels), np.float32) if arr is None else np.ascontiguousarray(arr.T)
        y = self._resampler.resample_chunk(x, last=last)
        return np.ascontiguousarray(y.reshape(-1, self.channels).T, dtype=np.float32)

    def _watchdog(self, chunks: list[Chunk]) -> None:
        b = self._backend
        effective = self.bytes_in - b.meta_bytes
        if any(arr.shape[1] for arr, _ in chunks):
            self._produced = True
            self._mark = effective
            return
        if b.stall_limit is not None and effective - self._mark > b.stall_limit:
            n = effective - self._mark
            if not self._produced:
                raise CorruptAudio(f"{b.fmt}: no valid frame in the first {n} bytes")
            raise CorruptAudio(f"{b.fmt}: no decodable audio in the last {n} bytes of input")


def open_decoder(
    format: str,
    sample_rate: int | None = None,
    channels: int | None = None,
    *,
    target_rate: int = 16000,
    max_buffer_bytes: int = 64 << 20,
    max_feed_ms: int | None = None,
) -> StreamDecoder:
    """Create a :class:`StreamDecoder` for ``format`` (a name in SUPPORTED_FORMATS or an alias).

    ``sample_rate`` is required for pcm/mulaw/alaw (``channels`` defaults to 1 there); for
    containers it is optional and must match the stream when given.  ``max_feed_ms``: see
    :class:`StreamDecoder`.
    """
    return StreamDecoder(
        format, sample_rate, channels, target_rate=target_rate, max_buffer_bytes=max_buffer_bytes,
        max_feed_ms=max_feed_ms,
    )


def decode_bytes(
    data: bytes,
    format: str,
    sample_rate: int | None = None,
    channels: int | None = None,
    target_rate: int = 16000,
) -> np.ndarray:
    """Decode a whole buffer: float32 ``(channels, n)`` at ``target_rate``."""
    dec = open_decoder(
        format, sample_rate, channels, target_rate=target_rate,
        max_buffer_bytes=max(64 << 20, len(data) + 1),
    )
    parts = [dec.feed(data), dec.finish()]
    parts = [p for p in parts if p.shape[1]]
    if not parts:
        return dec._empty()
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def select_channel(pcm: np.ndarray, channel: int) -> np.ndarray:
    """One channel of decoder output ``(channels, n)`` as a 1-D array (never a downmix)."""
    if pcm.ndim == 2:
        if pcm.shape[1] and channel >= pcm.shape[0]:
            raise SessionError(f"channel {channel} requested but the audio has "
                               f"{pcm.shape[0]} channel(s)")
        pcm = pcm[channel] if pcm.shape[1] else pcm.reshape(-1)
    return pcm

