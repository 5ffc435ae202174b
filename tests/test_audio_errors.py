"""callscribe.audio: every failure is a callscribe.errors exception that names the problem."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
from audiogen import encode, espeak_wav, have_tools, tone, write_wav
from callscribe.audio import decode_bytes, open_decoder
from callscribe.audio.ogg import ogg_crc
from callscribe.errors import (
    AudioError,
    AudioTooLarge,
    CallscribeError,
    CorruptAudio,
    SampleRateMismatch,
    SessionError,
    UnsupportedFormat,
)

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs ffmpeg, sox and espeak-ng")

CONTAINERS = ["wav", "mp3", "opus", "speex", "aac", "m4a", "amr", "flac"]
EXT = {"opus": "ogg", "speex": "spx"}
GARBAGE = np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("err")
    src = espeak_wav("Thank you for calling, goodbye.", d / "src.wav", rate=16000)
    out = {fmt: encode(src, fmt, d / f"f.{EXT.get(fmt, fmt)}").read_bytes() for fmt in CONTAINERS}
    return out


def feed_all(fmt, data, chunk=4096, **kw):
    dec = open_decoder(fmt, **kw)
    n = 0
    for i in range(0, len(data), chunk):
        n += dec.feed(data[i : i + chunk]).shape[1]
    return n + dec.finish().shape[1]


def test_unknown_format():
    with pytest.raises(UnsupportedFormat, match=r"unknown audio format 'xyz'; supported: .*mp3"):
        open_decoder("xyz")


@pytest.mark.parametrize("fmt", CONTAINERS + ["ogg"])
@pytest.mark.parametrize("chunk", [len(GARBAGE), 1000])
def test_garbage_is_corrupt(fmt, chunk):
    with pytest.raises(CorruptAudio, match=fmt if fmt != "opus" and fmt != "speex" else "ogg"):
        feed_all(fmt, GARBAGE, chunk)


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
def test_garbage_message_names_first_bytes(fmt):
    with pytest.raises(CorruptAudio, match=rf"{fmt}: no valid frame in the first \d+ bytes"):
        feed_all(fmt, GARBAGE)


@pytest.mark.parametrize("fmt", ["mp3", "aac", "flac", "opus", "amr"])
def test_long_garbage_mid_stream_raises(files, fmt):
    data = files[fmt]
    half = len(data) // 2
    bad = data[:half] + GARBAGE[:150_000] + data[half:]
    for chunk in (len(bad), 4096):
        with pytest.raises(CorruptAudio):
            feed_all(fmt, bad, chunk)


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
def test_short_garbage_mid_stream_is_skipped(files, fmt):
    data = files[fmt]
    half = len(data) // 2
    clean = feed_all(fmt, data)
    damaged = feed_all(fmt, data[:half] + GARBAGE[:2000] + data[half:])
    assert abs(damaged - clean) <= 2 * 1152 * 16000 // 8000  # at most a frame or two lost


@pytest.mark.parametrize("fmt,cut", [("wav", 20), ("wav", 3), ("opus", 30), ("speex", 60),
                                     ("flac", 20), ("amr", 3), ("m4a", 6), ("mp3", 3),
                                     ("aac", 5)])
def test_truncated_header(files, fmt, cut):
    dec = open_decoder(fmt)
    dec.feed(files[fmt][:cut])
    name = fmt if fmt not in ("opus", "speex") else "ogg|opus|speex"
    with pytest.raises(CorruptAudio, match=name):
        dec.finish()


@pytest.mark.parametrize("fmt", CONTAINERS + ["pcm"])
def test_empty_stream_is_not_an_error(fmt):
    dec = open_decoder(fmt, 8000 if fmt == "pcm" else None)
    assert dec.finish().shape[1] == 0


def test_truncated_audio_keeps_what_decoded(files):
    for fmt in ("wav", "mp3", "opus", "flac", "amr", "aac"):
        data = files[fmt]
        assert feed_all(fmt, data[: len(data) * 2 // 3]) > 0, fmt


@pytest.mark.parametrize("fmt,declared,actual", [
    ("wav", 8000, 16000), ("mp3", 8000, 16000), ("flac", 44100, 16000),
    ("speex", 8000, 16000), ("amr", 16000, 8000), ("aac", 48000, 16000),
    ("m4a", 8000, 16000),
])
def test_declared_rate_mismatch(files, fmt, declared, actual):
    msg = f"declared sample_rate {declared} but .* {actual}"
    with pytest.raises(SampleRateMismatch, match=msg):
        feed_all(fmt, files[fmt], sample_rate=declared)


def test_declared_rate_that_matches_is_fine(files):
    assert feed_all("wav", files["wav"], sample_rate=16000) > 0


def test_declared_channels_mismatch(files):
    with pytest.raises(AudioError, match="declared channels 2"):
        feed_all("wav", files["wav"], channels=2)


@pytest.mark.parametrize("fmt", ["pcm", "s16le", "mulaw", "alaw"])
def test_raw_needs_a_rate(fmt):
    with pytest.raises(SampleRateMismatch, match="sample_rate is required"):
        open_decoder(fmt)


@pytest.mark.parametrize("kw", [{"sample_rate": 0}, {"sample_rate": -8000}, {"channels": 0}])
def test_bad_parameters(kw):
    with pytest.raises(AudioError):
        open_decoder("pcm", **{"sample_rate": 8000, **kw})


def test_feed_after_finish(files):
    dec = open_decoder("wav")
    dec.feed(files["wav"])
    dec.finish()
    assert dec.finish().shape[1] == 0  # finish is idempotent
    with pytest.raises(SessionError, match="after finish"):
        dec.feed(b"\0\0")


def test_decoder_stays_failed():
    dec = open_decoder("wav")
    with pytest.raises(CorruptAudio):
        dec.feed(b"NOT A WAV FILE AT ALL")
    with pytest.raises(CorruptAudio, match="failed earlier"):
        dec.feed(b"RIFF")


def test_m4a_over_buffer_limit(files):
    dec = open_decoder("m4a", max_buffer_bytes=4096)
    with pytest.raises(AudioTooLarge, match="max_buffer_bytes=4096"):
        for i in range(0, len(files["m4a"]), 1000):
            dec.feed(files["m4a"][i : i + 1000])


def _ogg_page(flags: int, seq: int, lacing: bytes, body: bytes) -> bytes:
    head = b"OggS\0" + struct.pack("<BqIIIB", flags, 0, 1234, seq, 0, len(lacing)) + lacing
    page = head + body
    crc = ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def test_ogg_endless_packet_is_bounded():
    head = b"OpusHead\x01\x01\x38\x01\x80\x3e\0\0\0\0\0"
    data = _ogg_page(2, 0, bytes([len(head)]), head)
    for seq in range(1, 10):  # one packet continued over page after page
        data += _ogg_page(1 if seq > 1 else 0, seq, b"\xff" * 255, b"\x55" * 255 * 255)
    with pytest.raises(AudioTooLarge, match="Ogg packet"):
        feed_all("opus", data, max_buffer_bytes=200_000)


def test_unsupported_wav_encoding(tmp_path):
    src = write_wav(tmp_path / "t.wav", tone(440, 0.2, 8000), 8000)
    out = tmp_path / "adpcm.wav"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(src), "-c:a",
                    "adpcm_ima_wav", str(out)], check=True)
    with pytest.raises(UnsupportedFormat, match="IMA ADPCM"):
        decode_bytes(out.read_bytes(), "wav")


def test_ogg_vorbis_is_unsupported(tmp_path):
    src = write_wav(tmp_path / "t.wav", tone(440, 0.2, 16000), 16000)
    out = tmp_path / "v.ogg"
    proc = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(src),
                           "-c:a", "libvorbis", str(out)], capture_output=True, check=False)
    if proc.returncode:
        pytest.skip("ffmpeg has no libvorbis encoder")
    with pytest.raises(UnsupportedFormat, match="vorbis"):
        decode_bytes(out.read_bytes(), "ogg")


@pytest.mark.parametrize("fmt", CONTAINERS)
def test_bit_flips_never_leak_raw_errors(files, fmt):
    """Damaged input either decodes or raises a CallscribeError, never av/struct/IndexError."""
    rng = np.random.default_rng(hash(fmt) % 2**32)
    data = files[fmt]
    for _ in range(12):
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), 8):
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            feed_all(fmt, bytes(buf), int(rng.integers(1, 5000)))
        except CallscribeError:
            pass


def _wav(pcm: bytes, data_size: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    return (b"RIFF\0\0\0\0WAVEfmt " + struct.pack("<I", 16) + fmt + b"data"
            + struct.pack("<I", data_size) + pcm)


def test_wav_data_size_too_small_is_not_silently_dropped():
    pcm = (tone(300, 3.0, 16000) * 20000).astype("<i2").tobytes()
    with pytest.raises(CorruptAudio, match="not RIFF chunks"):
        feed_all("wav", _wav(pcm, 3200), 3200)


def test_wav_short_junk_after_data_is_tolerated():
    pcm = (tone(300, 0.5, 16000) * 20000).astype("<i2").tobytes()
    assert feed_all("wav", _wav(pcm, len(pcm)) + b"\x00\x01\x02" * 100, 100) == len(pcm) // 2


def test_wav_bad_chunk_before_data():
    with pytest.raises(CorruptAudio, match="bad chunk id"):
        decode_bytes(b"RIFF\0\0\0\0WAVE\x00\x01\x02\x03\x10\0\0\0" + b"\0" * 64, "wav")


def test_ogg_skeleton_then_opus(files, tmp_path):
    """A non-audio logical stream first (like Ogg Skeleton) is skipped, not fatal."""
    skel = b"fishead\0" + b"\0" * 56
    page = _ogg_page(2, 0, bytes([len(skel)]), skel)
    page = page[:14] + struct.pack("<I", 99) + page[18:]  # another serial number
    page = page[:22] + struct.pack("<I", ogg_crc(page[:22] + b"\0" * 4 + page[26:])) + page[26:]
    ref = feed_all("opus", files["opus"])
    assert feed_all("opus", page + files["opus"]) == ref
