"""Ogg Opus and Ogg Speex.

A small Ogg page reader (capture pattern, CRC, lacing, packets spanning pages, pages
spanning feeds) follows the first logical stream; pages of other streams are ignored and a
chained stream (a new BOS page after EOS) is decoded too.  The first packet says the codec
(OpusHead or a Speex header) and becomes the decoder's extradata; comment packets are
skipped.  FFmpeg's Opus decoder removes the OpusHead pre-skip itself; the end of the stream
is cut at the EOS page's granule position.

Opus always decodes at 48 kHz whatever rate the encoder was fed, so a declared sample rate
is not checked against it; Speex decodes at the header's rate, which is checked.
"""

from __future__ import annotations

import struct
import zlib

import av

from ..errors import CorruptAudio, UnsupportedFormat
from .base import Backend, Chunk, Trimmer, check_layout, decode_packet

_MAX_PAGE = 27 + 255 + 255 * 255
_REV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, init 0) via zlib's reflected one."""
    raw = ~zlib.crc32(page.translate(_REV), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def _codec_name(first_packet: bytes) -> str:
    for magic, name in ((b"\x01vorbis", "vorbis"), (b"\x7fFLAC", "flac"), (b"fishead", "skeleton"),
                        (b"\x80theora", "theora"), (b"OpusHead", "opus"), (b"Speex   ", "speex")):
        if first_packet.startswith(magic):
            return name
    return "an unknown codec"


class OggBackend(Backend):
    rate_source = "speex header"

    def __init__(self, fmt: str, max_buffer_bytes: int) -> None:
        super().__init__(max_buffer_bytes)
        self.fmt = fmt  # "opus", "speex" or "ogg" until the first packet says which
        self._buf = b""
        self._offset = 0  # stream offset of _buf[0]
        self._serial: int | None = None
        self._packet = b""  # a packet continued on the next page
        self._ctx = None
        self._codec: str | None = None
        self._headers_left = 0
        self._trim = Trimmer()
        self._pre_skip = 0
        self._others: list[str] = []  # codecs of logical streams we skip
        self._eos = False

    # -- pages -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Chunk]:
        out: list[Chunk] = []
        self._buf += data
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 27:
            if buf[pos : pos + 4] != b"OggS" or buf[pos + 4] != 0:
                raise CorruptAudio(f"ogg: bad capture pattern at byte {self._offset + pos}")
            nseg = buf[pos + 26]
            if len(buf) - pos < 27 + nseg:
                break
            lacing = buf[pos + 27 : pos + 27 + nseg]
            size = 27 + nseg + sum(lacing)
            if len(buf) - pos < size:
                break
            page = buf[pos : pos + size]
            self._page(page, lacing, self._offset + pos, out)
            pos += size
        if pos:
            self._buf = buf[pos:]
            self._offset += pos
        elif len(buf) < 27 and not b"OggS".startswith(buf[:4]):
            raise CorruptAudio(f"ogg: bad capture pattern at byte {self._offset}")
        return out

    def _page(self, page: bytes, lacing: bytes, at: int, out: list[Chunk]) -> None:
        flags, granule, serial, _seq, crc = struct.unpack_from("<BqIII", page, 5)
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            raise CorruptAudio(f"ogg: page checksum mismatch at byte {at}")
        body = page[27 + len(lacing) :]
        if flags & 2 and (self._serial is None or self._eos):  # BOS: a (new) logical stream
            first = body[: lacing[0]] if lacing else b""
            if not first.startswith((b"OpusHead", b"Speex   ")):
                self._others.append(_codec_name(first))  # e.g. a Skeleton track: skip it
                self.meta_bytes += len(page)
                return
            self._serial, self._packet, self._ctx, self._eos = serial, b"", None, False
            self._trim = Trimmer()
        if serial != self._serial:
            if self._serial is None:
                raise UnsupportedFormat(
                    f"ogg: the stream carries {', '.join(self._others) or 'no known codec'}; "
                    "supported in Ogg: opus, speex"
                )
            self.meta_bytes += len(page)
            return
        if not flags & 1:
            self._packet = b""  # drop a continuation whose end we never saw
        packets, start, end = [], 0, 0
        for lace in lacing:
            end += lace
            if lace < 255:
                packets.append(self._packet + body[start:end])
                self._packet, start = b"", end
        self._packet += body[start:]
        self.check_buffer(len(self._packet), "an Ogg packet")
        if flags & 4 and self._codec is not None:  # EOS: cut the end padding
            self._trim.limit = max(0, granule - self._pre_skip)
            self._eos = True
        produced = False
        for pkt in packets:
            produced |= self._packet_in(pkt, at, out)
        if not produced:
            self.meta_bytes += len(page)

    # -- packets ---------------------------------------------------------------------------

    def _packet_in(self, pkt: bytes, at: int, out: list[Chunk]) -> bool:
        if self._ctx is None:
            self._identify(pkt, at)
            return False
        if self._headers_left:
            self._headers_left -= 1
            return False
        try:
            arrays = decode_packet(self._ctx, av.Packet(pkt), self)
        except av.error.FFmpegError as exc:
            raise CorruptAudio(f"{self.fmt}: undecodable packet in page at byte {at}: {exc}")
        produced = False
        for arr in arrays:
            self._check_layout(arr)
            arr = self._trim.apply(arr)
            if arr.shape[1]:
                out.append((arr, self._ctx.sample_rate))
                produced = True
        return produced

    def _check_layout(self, arr) -> None:
        if self.channels is None:
            self.channels = arr.shape[0]

    def _identify(self, pkt: bytes, at: int) -> None:
        if pkt.startswith(b"OpusHead"):
            codec = "opus"
            if len(pkt) < 19 or pkt[8] >> 4 != 0 or pkt[9] == 0:
                raise CorruptAudio(f"opus: bad OpusHead in page at byte {at}")
            channels = pkt[9]
            check_layout("opus", "OpusHead", channels=channels)
            self._pre_skip = struct.unpack_from("<H", pkt, 10)[0]
            self._headers_left = 1  # OpusTags
            rate = 48000
            self.check_rate = False
            self.rate_source = "opus stream"
        elif pkt.startswith(b"Speex   "):
            codec = "speex"
            if len(pkt) < 80:
                raise CorruptAudio(f"speex: header of {len(pkt)} bytes, expected 80")
            rate, _mode, _bsv, channels = struct.unpack_from("<iiii", pkt, 36)
            extra = struct.unpack_from("<i", pkt, 68)[0]
            if rate not in (8000, 16000, 32000) or channels not in (1, 2) or not 0 <= extra < 16:
                raise CorruptAudio(f"speex: bad header ({rate} Hz, {channels} channels)")
            self._pre_skip = 0
            self._headers_left = 1 + extra  # comment + extra headers
        else:  # pragma: no cover - _page only hands over Opus/Speex identification packets
            raise UnsupportedFormat(f"ogg: {_codec_name(pkt)} streams are not supported")
        if self._codec is not None and (codec != self._codec or channels != self.channels):
            raise CorruptAudio(f"ogg: chained stream at byte {at} changes codec or channels")
        self._codec = self.fmt = codec
        self.channels = channels
        self.rate = rate
        ctx = av.CodecContext.create(codec, "r")
        ctx.extradata = pkt
        self._ctx = ctx

    def finish(self) -> list[Chunk]:
        got = self._offset + len(self._buf)
        if self._serial is None and self._others:
            raise UnsupportedFormat(
                f"ogg: the stream carries {', '.join(self._others)}; supported in Ogg: opus, speex"
            )
        if self._ctx is None and got:
            raise CorruptAudio(f"{self.fmt}: truncated header (stream ended after {got} bytes)")
        out: list[Chunk] = []
        if self._ctx is not None:
            try:
                arrays = decode_packet(self._ctx, None, self)
            except av.error.FFmpegError:  # pragma: no cover - nothing left to salvage
                arrays = []
            for arr in arrays:
                arr = self._trim.apply(arr)
                if arr.shape[1]:
                    out.append((arr, self._ctx.sample_rate))
        return out
