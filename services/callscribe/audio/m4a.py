"""MP4/M4A (ISO base media) audio.

An MP4 file's index (``moov``) is often written after the audio (``mdat``), so nothing can
be decoded before the whole file is there: this back end buffers everything until
``finish()`` (bounded by ``max_buffer_bytes``, beyond which it raises AudioTooLarge) and then
demuxes and decodes the first audio track with PyAV, which honours the edit list (encoder
delay).  Only the top-level box structure is checked while data arrives.
"""

from __future__ import annotations

import io

import av

from ..errors import CorruptAudio
from .base import Backend, Chunk, check_layout, frame_to_float

_TOP_LEVEL = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pnot",
              b"meta", b"moof", b"mfra", b"sidx", b"pdin", b"prft"}


class M4aBackend(Backend):
    fmt = "m4a"
    rate_source = "mp4 audio track"
    stall_limit = None  # nothing decodes before finish()

    def __init__(self, max_buffer_bytes: int) -> None:
        super().__init__(max_buffer_bytes)
        self._parts: list[bytes] = []
        self._size = 0
        self._checked = False

    def feed(self, data: bytes) -> list[Chunk]:
        self.check_buffer(self._size + len(data), "buffering m4a until finish()")
        self._parts.append(data)
        self._size += len(data)
        if not self._checked and self._size >= 8:
            head = b"".join(self._parts)[:8]
            if head[4:8] not in _TOP_LEVEL:
                raise CorruptAudio("m4a: not an MP4/ISO-BMFF file "
                                   "(no ftyp/moov/mdat box at byte 0)")
            self._checked = True
        return []

    def finish(self) -> list[Chunk]:
        if not self._size:
            return []
        data = b"".join(self._parts)
        self._parts = []
        if not self._checked:
            raise CorruptAudio(f"m4a: truncated header (stream ended after {len(data)} bytes)")
        out: list[Chunk] = []
        try:
            with av.open(io.BytesIO(data), mode="r", format="mp4") as container:
                streams = [s for s in container.streams if s.type == "audio"]
                if not streams:
                    raise CorruptAudio("m4a: the file has no audio track")
                stream = streams[0]
                for frame in container.decode(stream):
                    check_layout("m4a", "audio track", channels=frame.layout.nb_channels,
                                 rate=frame.sample_rate)
                    self.spend(frame.samples, frame.sample_rate, frame.layout.nb_channels)
                    arr = frame_to_float(frame)
                    if arr.shape[1]:
                        if self.channels is None:
                            self.channels, self.rate = arr.shape[0], frame.sample_rate
                        out.append((arr, frame.sample_rate))
        except av.error.FFmpegError as exc:
            if not out:
                raise CorruptAudio(f"m4a: cannot demux or decode: {exc}") from exc
            # a truncated or damaged tail: keep what decoded
        if not out:
            raise CorruptAudio("m4a: no decodable audio in the file")
        return out
