"""Native FLAC streams ("fLaC" + metadata blocks + frames).

The metadata is parsed here (STREAMINFO becomes the decoder's extradata; other blocks such
as pictures are skipped without buffering).  Frames are split here too, because FFmpeg's
FLAC parser loses frames when driven through PyAV's ``parse()``: a frame ends where the
next valid frame header starts (sync code, CRC-8 and the expected frame/sample number).
"""

from __future__ import annotations

import av

from ..errors import CorruptAudio
from .base import STALL_LIMIT, Backend, Chunk, Skipper, check_layout, decode_packet

_RATE_CODES = (0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)


def _crc8_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC8 = _crc8_table()


def _crc8(data: bytes) -> int:
    c = 0
    for b in data:
        c = _CRC8[c ^ b]
    return c


def parse_frame_header(buf: bytes, pos: int) -> tuple[int, int, int, int] | None:
    """Validate a frame header at ``pos``: (header_len, strategy, number, blocksize) or None."""
    end = len(buf)
    if pos + 6 > end or buf[pos] != 0xFF or (buf[pos + 1] & 0xFE) != 0xF8:
        return None
    strategy = buf[pos + 1] & 1
    bs_code, rate_code = buf[pos + 2] >> 4, buf[pos + 2] & 0x0F
    ch_code, size_code = buf[pos + 3] >> 4, (buf[pos + 3] >> 1) & 7
    if bs_code == 0 or rate_code == 15 or ch_code > 10 or size_code == 3 or buf[pos + 3] & 1:
        return None
    p = pos + 4
    first = buf[p]
    if first < 0x80:
        n, value = 0, first
    elif first >= 0xC0 and first != 0xFF:
        n = 1
        while first & (0x40 >> n):
            n += 1
        if n > 6:
            return None
        value = first & (0x3F >> n)
    else:
        return None
    if p + 1 + n > end:
        return None
    for b in buf[p + 1 : p + 1 + n]:
        if b & 0xC0 != 0x80:
            return None
        value = value << 6 | (b & 0x3F)
    p += 1 + n
    extra = (1 if bs_code == 6 else 2 if bs_code == 7 else 0) + (
        1 if rate_code == 12 else 2 if rate_code in (13, 14) else 0
    )
    if p + extra + 1 > end:
        return None
    if bs_code == 1:
        blocksize = 192
    elif bs_code <= 5:
        blocksize = 576 << (bs_code - 2)
    elif bs_code == 6:
        blocksize = buf[p] + 1
    elif bs_code == 7:
        blocksize = (buf[p] << 8 | buf[p + 1]) + 1
    else:
        blocksize = 256 << (bs_code - 8)
    p += extra
    if _crc8(buf[pos:p]) != buf[p]:
        return None
    return p + 1 - pos, strategy, value, blocksize


class FlacBackend(Backend):
    fmt = "flac"
    rate_source = "flac STREAMINFO"

    def __init__(self, max_buffer_bytes: int) -> None:
        super().__init__(max_buffer_bytes)
        self._state = "magic"  # magic -> block -> (streaminfo | skip) -> ... -> frames
        self._buf = b""
        self._offset = 0
        self._skip = Skipper()
        self._last_block = False
        self._block_len = 0
        self._ctx = None
        self._cur: tuple[int, int, int] | None = None  # (strategy, number, blocksize)
        self._search_from = 0
        self._limit = STALL_LIMIT

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        out, self._buf = self._buf[:n], self._buf[n:]
        self._offset += n
        self.meta_bytes += n
        return out

    def _header_step(self) -> bool:
        if self._state == "magic":
            if not b"fLaC".startswith(self._buf[:4]):
                raise CorruptAudio("flac: missing 'fLaC' stream marker at byte 0")
            return self._take(4) is not None and self._set("block")
        if self._state == "block":
            head = self._take(4)
            if head is None:
                return False
            kind, self._block_len = head[0] & 0x7F, int.from_bytes(head[1:4], "big")
            self._last_block = bool(head[0] & 0x80)
            if kind == 127:
                raise CorruptAudio(f"flac: invalid metadata block type at byte {self._offset - 4}")
            if self._ctx is None and kind != 0:
                raise CorruptAudio("flac: first metadata block is not STREAMINFO")
            if kind == 0:
                if self._block_len != 34:
                    raise CorruptAudio(f"flac: STREAMINFO of {self._block_len} bytes, expected 34")
                return self._set("streaminfo")
            self._skip.remaining = self._block_len
            return self._set("skip")
        if self._state == "streaminfo":
            info = self._take(34)
            if info is None:
                return False
            self._streaminfo(info)
        else:  # skip
            pos = self._skip.skip(self._buf, 0)
            self._buf = self._buf[pos:]
            self._offset += pos
            self.meta_bytes += pos
            if self._skip.remaining:
                return False
        return self._set("frames" if self._last_block else "block")

    def _set(self, state: str) -> bool:
        self._state = state
        return True

    def _streaminfo(self, info: bytes) -> None:
        bits = int.from_bytes(info[10:18], "big")
        rate = bits >> 44
        self.channels = ((bits >> 41) & 7) + 1
        max_frame = int.from_bytes(info[7:10], "big")
        if rate == 0:
            raise CorruptAudio("flac: STREAMINFO says the sample rate is 0")
        check_layout("flac", "STREAMINFO", channels=self.channels, rate=rate,
                     bits=((bits >> 36) & 0x1F) + 1)
        self.rate = rate
        self._limit = max(STALL_LIMIT, min(2 * max_frame, self.max_buffer_bytes))
        self.stall_limit = self._limit + STALL_LIMIT
        self._ctx = av.CodecContext.create("flac", "r")
        self._ctx.extradata = info

    def feed(self, data: bytes) -> list[Chunk]:
        self._buf += data
        while self._state != "frames" and self._buf and self._header_step():
            pass
        out: list[Chunk] = []
        if self._state == "frames":
            self._split(out)
        return out

    def _split(self, out: list[Chunk], final: bool = False) -> None:
        buf = self._buf
        need = 0 if final else 16  # bytes a header may need before it can be judged
        if self._cur is None:
            if len(buf) < max(need, 1):
                return
            head = parse_frame_header(buf, 0)
            if head is None:
                raise CorruptAudio(f"flac: no frame header at byte {self._offset}")
            self._cur = head[1:]
            self._search_from = head[0]
        strategy, number, blocksize = self._cur
        want_next = number + (1 if strategy == 0 else blocksize)
        sync = bytes((0xFF, 0xF8 | strategy))
        start = 0
        while True:
            i = buf.find(sync, self._search_from)
            if i < 0 or i + need > len(buf):
                self._search_from = i if i >= 0 else max(self._search_from, len(buf) - 1)
                break
            head = parse_frame_header(buf, i)
            if head is None or head[2] != want_next:
                self._search_from = i + 1
                continue
            if i - start > self._limit:
                raise CorruptAudio(
                    f"flac: {i - start} bytes between frames at byte {self._offset + start} "
                    "(garbage in the stream)"
                )
            self._decode(buf[start:i], self._offset + start, out)
            start = i
            self._cur = head[1:]
            strategy, number, blocksize = self._cur
            want_next = number + (1 if strategy == 0 else blocksize)
            self._search_from = i + head[0]
        if start:
            self._buf = buf[start:]
            self._offset += start
            self._search_from -= start
        if len(self._buf) > self._limit:
            raise CorruptAudio(
                f"flac: no valid frame follows the frame at byte {self._offset} "
                f"within {len(self._buf)} bytes"
            )

    def _decode(self, frame: bytes, at: int, out: list[Chunk], final: bool = False) -> None:
        assert self._ctx is not None and self.rate is not None
        try:
            arrays = decode_packet(self._ctx, av.Packet(frame), self)
            if final:
                arrays += decode_packet(self._ctx, None, self)
        except av.error.FFmpegError as exc:
            if final:  # a truncated last frame: drop it
                return
            raise CorruptAudio(f"flac: bad frame at byte {at}: {exc}") from exc
        out.extend((a, self.rate) for a in arrays)

    def finish(self) -> list[Chunk]:
        if self._state != "frames":
            got = self._offset + len(self._buf)
            if got:
                raise CorruptAudio(f"flac: truncated header (stream ended after {got} bytes)")
            return []
        out: list[Chunk] = []
        self._split(out, final=True)
        if self._buf:
            self._decode(self._buf, self._offset, out, final=True)
            self._buf = b""
        return out
