"""Hostile audio inputs: small inputs that expand enormously, and headers that lie.

Shared by the decoder unit tests (tests/test_audio_limits.py) and the gateway abuse tests
(tests/test_abuse_audio.py).  Every builder is deterministic and writes nothing to disk.
"""

from __future__ import annotations

import struct

from callscribe.audio.ogg import ogg_crc

#: an AMR-NB frame header of type 15 (NO_DATA): one byte that decodes to 20 ms of audio
AMR_NO_DATA = b"\x7c"
#: an Opus TOC byte (SILK narrowband, 60 ms, one frame) with no payload: one byte, 60 ms
OPUS_60MS_EMPTY = b"\x18"


def amr_no_data_flood(nbytes: int) -> bytes:
    """``#!AMR\\n`` followed by one-byte NO_DATA frames: ``nbytes`` in all (20 ms per byte)."""
    magic = b"#!AMR\n"
    return magic + AMR_NO_DATA * (nbytes - len(magic))


def ogg_page(serial: int, seq: int, granule: int, flags: int, packets: list[bytes]) -> bytes:
    lacing = b"".join(b"\xff" * (len(p) // 255) + bytes([len(p) % 255]) for p in packets)
    head = (b"OggS" + struct.pack("<BBqIII", 0, flags, granule, serial, seq, 0)
            + bytes([len(lacing)]) + lacing)
    raw = head + b"".join(packets)
    return raw[:22] + struct.pack("<I", ogg_crc(raw)) + raw[26:]


def opus_head(channels: int = 1, rate: int = 16000) -> bytes:
    family = 0 if channels <= 2 else 255
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, rate, 0, family)
    if family:
        head += bytes([channels, 0]) + bytes(range(channels))
    return head


def ogg_opus_flood(nbytes: int, channels: int = 1) -> bytes:
    """An Ogg Opus stream of one-byte 60 ms packets (255 per page), ``nbytes`` long."""
    out = ogg_page(1, 0, 0, 2, [opus_head(channels)])
    out += ogg_page(1, 1, 0, 0, [b"OpusTags" + struct.pack("<I", 4) + b"test"
                                 + struct.pack("<I", 0)])
    seq = 2
    while len(out) < nbytes:
        out += ogg_page(1, seq, 0, 0, [OPUS_60MS_EMPTY] * 255)
        seq += 1
    return out[:nbytes]


def wav_header(channels: int, rate: int, bits: int = 8, tag: int = 1,
               data_size: int = 0xFFFFFFFF) -> bytes:
    """A RIFF/WAVE header (streaming data size by default) claiming any layout."""
    align = channels * ((bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align & 0xFFFFFFFF,
                      align & 0xFFFF, bits)
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size))


def flac_header(rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """``fLaC`` + a last-block STREAMINFO claiming ``rate``/``channels``/``bits``."""
    info = struct.pack(">HH", 4096, 4096) + (0).to_bytes(3, "big") + (0).to_bytes(3, "big")
    packed = (rate << 44) | ((channels - 1) << 41) | ((bits - 1) << 36)
    info += packed.to_bytes(8, "big") + b"\0" * 16
    return b"fLaC" + bytes([0x80]) + (34).to_bytes(3, "big") + info


def rss_mib() -> float:
    """Resident memory of this process (the gateway runs in the test process), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")
