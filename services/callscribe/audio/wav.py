"""Streaming RIFF/WAVE (and RF64) parser.

Sample layouts: PCM 8 (unsigned), 16, 24, 32-bit integer (also 12/20-bit in wider
containers), IEEE float 32/64, G.711 mu-law and A-law, each also inside
WAVE_FORMAT_EXTENSIBLE.  Unknown chunks are skipped without buffering them.  A data chunk
whose size is 0 or 0xFFFFFFFF (a wav written while streaming) runs to the end of the input.

``pcm_fallback=(rate, channels)``: a stream that does not start with a RIFF/RF64 header is
taken as headerless s16le PCM at that rate and channel count (``headerless`` becomes True).
DashScope's own Java microphone example declares ``format("wav")`` and sends raw PCM.
"""

from __future__ import annotations

import struct

from ..errors import CorruptAudio, UnsupportedFormat
from .base import STALL_LIMIT, Backend, Chunk, Skipper, check_layout
from .pcm import SAMPLE_WIDTH, SampleConverter

_FMT_MAX = 4096  # a fmt chunk is 16..40 bytes; anything this big is not a wav
_TAG_NAMES = {
    0x0002: "MS ADPCM",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
    0x0161: "WMA",
}


def _layout(tag: int, bits: int) -> str | None:
    if tag == 1:
        return {8: "u8", 16: "s16", 24: "s24", 32: "s32"}.get((bits + 7) // 8 * 8)
    if tag == 3:
        return {32: "f32", 64: "f64"}.get(bits)
    if tag == 6 and bits == 8:
        return "alaw"
    if tag == 7 and bits == 8:
        return "mulaw"
    return None


class WavBackend(Backend):
    fmt = "wav"
    rate_source = "wav header"

    def __init__(self, max_buffer_bytes: int,
                 pcm_fallback: tuple[int, int] | None = None) -> None:
        super().__init__(max_buffer_bytes)
        self._pcm_fallback = pcm_fallback
        #: True once the stream turned out to have no RIFF header (see pcm_fallback)
        self.headerless = False
        self._buf = b""
        self._offset = 0  # stream offset of _buf[0]
        self._state = "riff"  # riff -> chunk -> (fmt|ds64|skip|data) -> chunk ...
        self._chunk_id = b""
        self._chunk_size = 0
        self._skip = Skipper()
        self._data_left: int | None = None  # None: runs to the end of the stream
        self._pad = 0
        self._rf64_data_size: int | None = None
        self._conv: SampleConverter | None = None
        self._seen_data = False
        self._trailer_at = 0

    # -- helpers ---------------------------------------------------------------------------

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        out, self._buf = self._buf[:n], self._buf[n:]
        self._offset += n
        return out

    def _parse_fmt(self, body: bytes) -> None:
        if len(body) < 16:
            raise CorruptAudio(f"wav: fmt chunk is {len(body)} bytes, need at least 16")
        tag, channels, rate, _byte_rate, align, bits = struct.unpack_from("<HHIIHH", body)
        if tag == 0xFFFE:
            if len(body) < 40:
                raise CorruptAudio("wav: WAVE_FORMAT_EXTENSIBLE fmt chunk shorter than 40 bytes")
            tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the sub-format GUID
        check_layout("wav", "wav header", channels=channels, rate=rate, bits=bits)
        kind = _layout(tag, bits)
        if kind is None:
            name = _TAG_NAMES.get(tag, "")
            raise UnsupportedFormat(
                f"wav: format tag 0x{tag:04x}{' (' + name + ')' if name else ''} with "
                f"{bits}-bit samples is not supported; supported: PCM 8/16/24/32-bit, "
                "float 32/64-bit, mu-law, A-law"
            )
        if align != channels * SAMPLE_WIDTH[kind]:
            raise CorruptAudio(
                f"wav: block_align {align} does not match {channels} channels of {bits}-bit samples"
            )
        self.rate = rate
        self.channels = channels
        self._conv = SampleConverter(kind, channels)

    # -- Backend ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Chunk]:
        out: list[Chunk] = []
        if self._state == "data" and not self._buf:
            self._buf = self._feed_data(data, out)  # fast path: no copy into the buffer
        else:
            self._buf += data
        while self._buf and self._step(out):
            pass
        return out

    def _step(self, out: list[Chunk]) -> bool:
        """Advance the state machine once; False when more input is needed."""
        st = self._state
        if st == "riff":
            if self._pcm_fallback and not any(m.startswith(self._buf[:4])
                                              for m in (b"RIFF", b"RF64", b"RIFX")):
                self._start_headerless(*self._pcm_fallback)
                return True
            head = self._take(12)
            if head is None:
                if not any(m.startswith(self._buf[:4]) for m in (b"RIFF", b"RF64", b"RIFX")):
                    raise CorruptAudio("wav: not a RIFF/WAVE header")
                return False
            if head[:4] == b"RIFX":
                raise UnsupportedFormat("wav: big-endian RIFX files are not supported")
            if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
                raise CorruptAudio("wav: not a RIFF/WAVE header")
            self.meta_bytes += 12
            self._state = "chunk"
            return True
        if st == "chunk":
            head = self._take(8)
            if head is None:
                return False
            if not all(0x20 <= c < 0x7F for c in head[:4]):
                if not self._seen_data:
                    raise CorruptAudio(f"wav: bad chunk id {head[:4]!r} at byte {self._offset - 8}")
                self._offset -= 8
                self._trailer_at = self._offset  # not chunks: see the "trailer" state
                self._state = "trailer"
                self._buf = head + self._buf
                return True
            self.meta_bytes += 8
            self._chunk_id = head[:4]
            self._chunk_size = struct.unpack("<I", head[4:])[0]
            self._pad = self._chunk_size & 1
            if self._chunk_id == b"data":
                self._start_data()
            elif self._chunk_id in (b"fmt ", b"ds64"):
                if self._chunk_size > _FMT_MAX:
                    raise CorruptAudio(
                        f"wav: {self._chunk_id.decode()!r} chunk of {self._chunk_size} bytes "
                        f"at byte {self._offset - 8}"
                    )
                self._state = "header-chunk"
            else:
                self._skip.remaining = self._chunk_size + self._pad
                self._state = "skip"
            return True
        if st == "header-chunk":
            body = self._take(self._chunk_size + self._pad)
            if body is None:
                return False
            self.meta_bytes += len(body)
            if self._chunk_id == b"fmt ":
                self._parse_fmt(body[: self._chunk_size])
            elif len(body) >= 16:
                self._rf64_data_size = struct.unpack_from("<Q", body, 8)[0]
            self._state = "chunk"
            return True
        if st == "skip":
            pos = self._skip.skip(self._buf, 0)
            self.meta_bytes += pos
            self._offset += pos
            self._buf = self._buf[pos:]
            if self._skip.remaining:
                return False
            self._state = "chunk"
            return True
        if st == "trailer":
            # bytes after the audio that are not RIFF chunks: tolerate a little junk, but a
            # wrong (too small) data size would otherwise make us drop the rest of the audio
            n = len(self._buf)
            self._buf = b""
            self._offset += n
            if self._offset - self._trailer_at > STALL_LIMIT:
                raise CorruptAudio(
                    f"wav: {self._offset - self._trailer_at} bytes after the data chunk (from "
                    f"byte {self._trailer_at}) are not RIFF chunks; is the data size wrong?"
                )
            return False
        if st == "data":
            buf, self._buf = self._buf, b""
            self._buf = self._feed_data(buf, out)
            return True
        raise AssertionError(st)  # pragma: no cover

    def _start_headerless(self, rate: int, channels: int) -> None:
        self.rate, self.channels, self.rate_source = rate, channels, "caller"
        self._conv = SampleConverter("s16", channels)
        self.headerless = self._seen_data = True
        self._data_left = None
        self._state = "data"

    def _start_data(self) -> None:
        if self._conv is None:
            raise CorruptAudio(f"wav: data chunk at byte {self._offset - 8} before the fmt chunk")
        size = self._chunk_size
        if size == 0xFFFFFFFF and self._rf64_data_size is not None:
            self._data_left = self._rf64_data_size
        elif size in (0, 0xFFFFFFFF):
            self._data_left = None
        else:
            self._data_left = size
        self._seen_data = True
        self._state = "data"

    def _feed_data(self, data: bytes, out: list[Chunk]) -> bytes:
        """Decode the data-chunk part of ``data``; return what follows the chunk."""
        if self._data_left is None:
            part, rest = data, b""
        else:
            part, rest = data[: self._data_left], data[self._data_left :]
            self._data_left -= len(part)
        self._offset += len(part)
        assert self._conv is not None and self.rate is not None
        self.spend(self._conv.frames_in(len(part)), self.rate, self.channels)
        arr = self._conv.feed(part)
        if arr is not None:
            out.append((arr, self.rate))
        if self._data_left == 0:  # chunk done: padding and more chunks follow
            self._conv.reset()
            self._skip.remaining = self._pad
            self._state = "skip"
        return rest

    def finish(self) -> list[Chunk]:
        if not self._seen_data:
            got = self._offset + len(self._buf)
            if not got:
                return []
            if self._state in ("riff", "chunk", "header-chunk") and self._conv is None:
                raise CorruptAudio(f"wav: truncated header (stream ended after {got} bytes)")
            raise CorruptAudio(f"wav: no data chunk in {got} bytes")
        return []
