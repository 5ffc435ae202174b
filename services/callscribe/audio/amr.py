"""AMR-NB (and AMR-WB) in the RFC 4867 storage format ("#!AMR\\n" / "#!AMR-WB\\n").

Frames are split with the frame-type size table and decoded one by one with OpenCORE
(``libopencore_amrnb``/``libopencore_amrwb``, which handle DTX/comfort-noise frames), or
with FFmpeg's native decoder when OpenCORE is missing (SID and NO_DATA frames then become
silence).  AMR cannot resynchronise, so a reserved frame type means the stream is corrupt.
"""

from __future__ import annotations

import av
import numpy as np

from ..errors import CorruptAudio, UnsupportedFormat
from .base import Backend, Chunk, decode_packet

# speech bytes after the one-byte frame header, by frame type; None = reserved
_NB_SIZES = (12, 13, 15, 17, 19, 20, 26, 31, 5, None, None, None, None, None, None, 0)
_WB_SIZES = (17, 23, 32, 36, 40, 46, 50, 58, 60, 5, None, None, None, None, 0, 0)
_NB = {"magic": b"#!AMR\n", "sizes": _NB_SIZES, "rate": 8000, "speech": 8, "decoders": (
    "libopencore_amrnb", "amrnb")}
_WB = {"magic": b"#!AMR-WB\n", "sizes": _WB_SIZES, "rate": 16000, "speech": 9, "decoders": (
    "libopencore_amrwb", "amrwb")}


def _open(names: tuple[str, ...]):
    for name in names:
        try:
            ctx = av.CodecContext.create(name, "r")
        except (av.error.FFmpegError, ValueError, KeyError):
            continue
        ctx.layout = "mono"
        return ctx, name.startswith("libopencore")
    raise UnsupportedFormat(f"amr: no decoder available ({', '.join(names)})")  # pragma: no cover


class AmrBackend(Backend):
    fmt = "amr"
    rate_source = "AMR header"

    def __init__(self, max_buffer_bytes: int) -> None:
        super().__init__(max_buffer_bytes)
        self._buf = b""
        self._offset = 0
        self._kind: dict | None = None
        self._ctx = None
        self._opencore = False

    def _magic(self) -> bool:
        buf = self._buf
        for kind in (_NB, _WB):
            if buf.startswith(kind["magic"]):
                self._kind = kind
                self.rate, self.channels = kind["rate"], 1
                self._ctx, self._opencore = _open(kind["decoders"])
                self._ctx.sample_rate = kind["rate"]
                n = len(kind["magic"])
                self._buf, self._offset = buf[n:], n
                self.meta_bytes += n
                return True
        if buf.startswith((b"#!AMR_MC", b"#!AMR-WB_MC")):
            raise UnsupportedFormat("amr: multi-channel AMR files are not supported")
        if not any(k["magic"].startswith(buf) for k in (_NB, _WB)):  # not even a prefix
            raise CorruptAudio("amr: missing '#!AMR' header at byte 0")
        return False

    def feed(self, data: bytes) -> list[Chunk]:
        self._buf += data
        if self._kind is None and not self._magic():
            return []
        assert self._kind is not None
        sizes, speech = self._kind["sizes"], self._kind["speech"]
        frames_per_call = self._kind["rate"] // 50
        buf, pos, arrays = self._buf, 0, []
        while pos < len(buf):
            ft = (buf[pos] >> 3) & 0x0F
            size = sizes[ft]
            if size is None:
                raise CorruptAudio(
                    f"{self.fmt}: invalid frame type {ft} at byte {self._offset + pos}"
                )
            if pos + 1 + size > len(buf):
                break
            frame = buf[pos : pos + 1 + size]
            # every frame is 20 ms (even a one-byte NO_DATA frame): charge it before decoding
            self.spend(frames_per_call, self.rate)
            if ft > speech and not self._opencore:  # SID / NO_DATA: native decoders can't
                arrays.append(np.zeros((1, frames_per_call), dtype=np.float32))
            else:
                try:
                    arrays += decode_packet(self._ctx, av.Packet(frame))
                except av.error.FFmpegError as exc:
                    raise CorruptAudio(
                        f"{self.fmt}: undecodable frame at byte {self._offset + pos}: {exc}"
                    ) from exc
            pos += 1 + size
        self._buf = buf[pos:]
        self._offset += pos
        if not arrays:
            return []
        return [(np.concatenate(arrays, axis=1), self._kind["rate"])]

    def finish(self) -> list[Chunk]:
        if self._kind is None:
            if self._buf:
                raise CorruptAudio(f"amr: truncated header ({len(self._buf)} bytes)")
            return []
        # a trailing partial frame (a cut stream) is dropped
        try:
            arrays = decode_packet(self._ctx, None)
        except av.error.FFmpegError:  # pragma: no cover
            arrays = []
        return [(a, self._kind["rate"]) for a in arrays]
