"""MP3 and AAC (ADTS) elementary streams, decoded frame by frame with PyAV.

Frames are found here rather than by FFmpeg's parsers, so that garbage can be measured: a
frame is accepted when its header is followed by another header of the same stream (same
version, rate and channel layout) or by the end of the input.  Bytes that are not part of
an accepted frame are skipped (both codecs resynchronise on their sync word); more than
64 KiB of them in a row raises CorruptAudio.  A leading ID3v2 tag is skipped.

Gapless trimming: an MP3 that starts with a Xing/Info frame carrying a LAME (or FFmpeg)
tag has its encoder delay, the decoder's 529-sample delay and the end padding removed, as
FFmpeg's demuxer does.  ADTS cannot signal the AAC encoder delay, so the first decoded
frame (MDCT priming, 1024 samples for AAC-LC, which every encoder adds) is dropped.
"""

from __future__ import annotations

import av

from ..errors import CorruptAudio
from .base import STALL_LIMIT, Backend, Chunk, Trimmer, decode_packet

_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_L3_KBPS = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_DECODER_DELAY = 529  # samples, as FFmpeg's mp3 demuxer assumes

Header = tuple[int, tuple]  # (frame length, key that must stay the same within a stream)


def mp3_header(buf: bytes, pos: int) -> Header | None:
    """Parse an MPEG-1/2/2.5 Layer III frame header at ``pos``."""
    if len(buf) - pos < 4 or buf[pos] != 0xFF or (buf[pos + 1] & 0xE0) != 0xE0:
        return None
    b1, b2, b3 = buf[pos + 1], buf[pos + 2], buf[pos + 3]
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    br_idx, rate_idx = b2 >> 4, (b2 >> 2) & 3
    if version == 1 or layer != 1 or br_idx in (0, 15) or rate_idx == 3 or (b3 & 3) == 2:
        return None
    rate = _RATES[version][rate_idx]
    kbps = _L3_KBPS[3 if version == 3 else 2][br_idx]
    size = (144000 if version == 3 else 72000) * kbps // rate + ((b2 >> 1) & 1)
    return size, (version, rate_idx, (b3 >> 6) == 3)


def adts_header(buf: bytes, pos: int) -> Header | None:
    """Parse an ADTS (AAC) frame header at ``pos``."""
    if len(buf) - pos < 7 or buf[pos] != 0xFF or (buf[pos + 1] & 0xF6) != 0xF0:
        return None
    b2, b3, b4, b5 = buf[pos + 2], buf[pos + 3], buf[pos + 4], buf[pos + 5]
    rate_idx = (b2 >> 2) & 0x0F
    size = (b3 & 3) << 11 | b4 << 3 | b5 >> 5
    header_len = 7 if buf[pos + 1] & 1 else 9
    if rate_idx > 12 or size <= header_len:
        return None
    return size, (buf[pos + 1] & 0x08, b2 >> 6, rate_idx, (b2 & 1) << 2 | b3 >> 6)


def _gapless(frame: bytes, off: int, spf: int) -> Trimmer:
    """Read a Xing/Info frame's frame count and LAME encoder delay/padding."""
    flags = int.from_bytes(frame[off + 4 : off + 8], "big")
    p = off + 8
    frames = None
    if flags & 1:
        frames = int.from_bytes(frame[p : p + 4], "big")
        p += 4
    p += (4 if flags & 2 else 0) + (100 if flags & 4 else 0) + (4 if flags & 8 else 0)
    if frame[p : p + 4] not in (b"LAME", b"Lavf", b"Lavc") or len(frame) < p + 24:
        return Trimmer()
    v = int.from_bytes(frame[p + 21 : p + 24], "big")
    start_pad, end_pad = v >> 12, v & 0xFFF
    limit = frames * spf - start_pad - end_pad if frames else None
    return Trimmer(skip=start_pad + _MP3_DECODER_DELAY,
                   limit=limit if limit and limit > 0 else None)


class _SyncBackend(Backend):
    """ID3v2 skipping, frame sync with garbage accounting, per-frame decoding."""

    codec_name = ""
    header_min = 4

    def __init__(self, max_buffer_bytes: int) -> None:
        super().__init__(max_buffer_bytes)
        self._ctx = av.CodecContext.create(self.codec_name, "r")
        self._trim = Trimmer()
        self._buf = b""
        self._offset = 0  # stream offset of _buf[0]
        self._id3_done = False
        self._skip = 0
        self._key: tuple | None = None
        self._synced = False
        self._garbage = 0  # bytes skipped since the last good frame
        self._garbage_at = 0
        self.frames = 0
        self._last_error = ""

    def header(self, buf: bytes, pos: int) -> Header | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def first_frame(self, frame: bytes) -> bool:
        """Hook for the first accepted frame; True drops it (a metadata frame)."""
        return False

    def feed(self, data: bytes) -> list[Chunk]:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self.meta_bytes += n
            self._offset += n
            data = data[n:]
        self._buf += data
        out: list[Chunk] = []
        if self._id3_done or self._id3():
            self._split(out, final=False)
        return out

    def _id3(self) -> bool:
        buf = self._buf
        if len(buf) < 10:
            return bool(buf) and not b"ID3".startswith(buf[:3]) and self._set_id3_done()
        if buf[:3] != b"ID3":
            return self._set_id3_done()
        s = buf[6:10]
        size = (s[0] & 0x7F) << 21 | (s[1] & 0x7F) << 14 | (s[2] & 0x7F) << 7 | s[3] & 0x7F
        size += 10 + (10 if buf[5] & 0x10 else 0)
        if size > self.max_buffer_bytes:
            raise CorruptAudio(f"{self.fmt}: ID3 tag claims {size} bytes")
        n = min(size, len(buf))
        self._buf, self._skip = buf[n:], size - n
        self._offset += n
        self.meta_bytes += n
        return not self._skip and self._id3()  # another tag may follow

    def _set_id3_done(self) -> bool:
        self._id3_done = True
        return True

    def _split(self, out: list[Chunk], final: bool) -> None:
        buf, pos, end = self._buf, 0, len(self._buf)
        hmin = self.header_min
        while end - pos >= (1 if final else hmin):
            head = self.header(buf, pos)
            if head is not None and (self._key is None or head[1] == self._key):
                size, key = head
                nxt = pos + size
                if nxt > end and not final:
                    break  # wait for the rest of the frame
                if nxt <= end:
                    if self._synced:  # the previous frame vouched for this header
                        accept = True
                    elif end - nxt >= hmin:  # a new sync needs the next header to agree
                        follow = self.header(buf, nxt)
                        accept = follow is not None and follow[1] == key
                    elif final:
                        accept = True  # a lone last frame
                    else:
                        break  # wait for the next header
                    if accept:
                        self._frame(buf[pos:nxt], key, self._offset + pos, out)
                        pos = nxt
                        continue
            self._synced = False
            i = buf.find(b"\xff", pos + 1)
            skipped = (i if i >= 0 else end) - pos
            self._garbage_skip(skipped, self._offset + pos)
            pos += skipped
        if final and pos < end:
            self._garbage_skip(end - pos, self._offset + pos)
            pos = end
        self._buf = buf[pos:]
        self._offset += pos

    def _garbage_skip(self, n: int, at: int) -> None:
        """Count ``n`` skipped bytes starting at stream offset ``at``."""
        if not self._garbage:
            self._garbage_at = at
        self._garbage += n
        if self._garbage > STALL_LIMIT:
            if self.frames == 0:
                msg = f"{self.fmt}: no valid frame in the first {at + n} bytes"
            else:
                msg = (f"{self.fmt}: no valid frame in {self._garbage} bytes from byte "
                       f"{self._garbage_at}")
            raise CorruptAudio(msg)

    def _frame(self, frame: bytes, key: tuple, at: int, out: list[Chunk]) -> None:
        self._key, self._synced = key, True
        self.frames += 1
        if self.frames == 1 and self.first_frame(frame):
            self.meta_bytes += len(frame)
            return
        try:
            arrays = decode_packet(self._ctx, av.Packet(frame), self)
        except av.error.FFmpegError as exc:  # a damaged frame: count it as garbage
            self._last_error = str(exc)
            self._garbage_skip(len(frame), at)
            return
        self._garbage = 0
        self._collect(arrays, out)

    def _collect(self, arrays, out: list[Chunk]) -> None:
        for arr in arrays:
            if self.rate is None:
                self.rate, self.channels = self._ctx.sample_rate, arr.shape[0]
            arr = self._trim.apply(arr)
            if arr.shape[1]:
                out.append((arr, self._ctx.sample_rate))

    def finish(self) -> list[Chunk]:
        out: list[Chunk] = []
        if self._buf:
            self._id3_done = True
            self._split(out, final=True)
        if self.frames:
            try:
                self._collect(decode_packet(self._ctx, None, self), out)
            except av.error.FFmpegError:  # pragma: no cover - nothing left to salvage
                pass
        if self.rate is None and self._offset > self.meta_bytes:
            why = f" (last error: {self._last_error})" if self._last_error else ""
            raise CorruptAudio(f"{self.fmt}: no valid frame in {self._offset} bytes{why}")
        return out


class Mp3Backend(_SyncBackend):
    fmt = "mp3"
    rate_source = "mp3 stream"
    codec_name = "mp3float"
    header = staticmethod(mp3_header)

    def first_frame(self, frame: bytes) -> bool:
        """Drop a Xing/Info/VBRI frame (it decodes to silence); read its gapless info."""
        version = (frame[1] >> 3) & 3
        mono = (frame[3] >> 6) == 3
        side = (21 if mono else 36) if version == 3 else (13 if mono else 21)
        if frame[side : side + 4] in (b"Xing", b"Info"):
            self._trim = _gapless(frame, side, 1152 if version == 3 else 576)
            return True
        return frame[36:40] == b"VBRI"


class AacBackend(_SyncBackend):
    fmt = "aac"
    rate_source = "ADTS header"
    codec_name = "aac"
    header_min = 7
    header = staticmethod(adts_header)

    def __init__(self, max_buffer_bytes: int) -> None:
        super().__init__(max_buffer_bytes)
        self._primed = False

    def _collect(self, arrays, out: list[Chunk]) -> None:
        if arrays and not self._primed:  # MDCT priming frame (see module docstring)
            self._primed = True
            self.rate, self.channels = self._ctx.sample_rate, arrays[0].shape[0]
            arrays = arrays[1:]
        super()._collect(arrays, out)
