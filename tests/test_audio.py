"""callscribe.audio: decoding every format, streaming invariance, channels, resampling."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
from audiogen import encode, espeak_wav, have_tools, tone, write_wav
from callscribe.audio import (
    SUPPORTED_FORMATS,
    StreamDecoder,
    decode_bytes,
    open_decoder,
    sniff_format,
)
from callscribe.audio.formats import canonical_format

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs ffmpeg, sox and espeak-ng")

CODECS = ["wav", "mp3", "opus", "speex", "aac", "m4a", "amr", "flac", "mulaw", "alaw", "pcm"]
RAW = {"pcm", "mulaw", "alaw"}
EXT = {"opus": "ogg", "speex": "spx", "mulaw": "ul", "alaw": "al", "pcm": "raw"}
# the rate each format's decoder produces for a 16 kHz source
NATIVE = {"opus": 48000, "amr": 8000}


def stream(dec: StreamDecoder, data: bytes, chunk: int) -> np.ndarray:
    parts = [dec.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    parts.append(dec.finish())
    parts = [p for p in parts if p.shape[1]]
    return np.concatenate(parts, axis=1)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A ~4.5 s espeak sentence at 16 kHz and every encoding of it: {fmt: (bytes, seconds)}."""
    d = tmp_path_factory.mktemp("speech")
    src = espeak_wav("Please hold the line, an agent will be with you in a moment.",
                     d / "src.wav", rate=16000)
    seconds = (src.stat().st_size - 44) / 2 / 16000
    out = {}
    for fmt in CODECS:
        path = encode(src, fmt, d / f"speech.{EXT.get(fmt, fmt)}")
        out[fmt] = (path.read_bytes(), seconds)
    return out


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """A ~1 s clip in every format, for the (slow) one-byte feeding."""
    d = tmp_path_factory.mktemp("short")
    src = espeak_wav("one two three", d / "src.wav", rate=16000, speed=260)
    return {fmt: encode(src, fmt, d / f"short.{EXT.get(fmt, fmt)}").read_bytes()
            for fmt in CODECS}


def open_for(fmt: str, **kw) -> StreamDecoder:
    if fmt in RAW:
        kw.setdefault("sample_rate", 16000)
    return open_decoder(fmt, **kw)


# -- names -------------------------------------------------------------------------------


def test_supported_formats_and_aliases():
    assert SUPPORTED_FORMATS == frozenset(
        {"pcm", "wav", "mp3", "opus", "speex", "aac", "m4a", "amr", "flac", "mulaw", "alaw"}
    )
    for alias, name in [("s16le", "pcm"), ("ulaw", "mulaw"), ("PCMU", "mulaw"),
                        ("g711u", "mulaw"), ("pcma", "alaw"), ("g711a", "alaw"),
                        ("adts", "aac"), ("ogg", "ogg"), (" MP3 ", "mp3")]:
        assert canonical_format(alias) == name


@pytest.mark.parametrize("fmt", sorted(set(CODECS) - RAW))
def test_sniff_format(speech, fmt):
    assert sniff_format(speech[fmt][0][:64]) == fmt


def test_sniff_unknown():
    assert sniff_format(b"hello world, not audio") is None
    assert sniff_format(b"") is None


# -- decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", CODECS)
def test_every_format_decodes_to_expected_duration(speech, fmt):
    data, seconds = speech[fmt]
    dec = open_for(fmt)
    out = stream(dec, data, 4096)
    assert out.dtype == np.float32 and out.shape[0] == 1 and dec.channels == 1
    assert abs(out.shape[1] / 16000 - seconds) <= 0.060, (out.shape, seconds)
    assert dec.source_rate == NATIVE.get(fmt, 16000)
    assert dec.bytes_in == len(data)
    assert np.abs(out).max() <= 1.0 and np.abs(out).max() > 0.05
    assert np.allclose(decode_bytes(data, fmt, 16000 if fmt in RAW else None), out, atol=1e-6)


@pytest.mark.parametrize("fmt", ["opus", "ogg"])
def test_ogg_alias_and_target_rate(speech, fmt):
    data, seconds = speech["opus"]
    out = decode_bytes(data, fmt, target_rate=8000)
    assert abs(out.shape[1] / 8000 - seconds) <= 0.060


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_tone_keeps_frequency(tmp_path, rate, fmt):
    src = write_wav(tmp_path / "tone.wav", tone(1000, 1.0, rate), rate)
    data = src.read_bytes() if fmt == "wav" else encode(src, fmt, tmp_path / "t.mp3").read_bytes()
    dec = open_decoder(fmt)
    out = stream(dec, data, 1000)
    assert dec.source_rate == rate
    assert abs(out.shape[1] - 16000) <= 16000 * 0.06
    mid = out[0, 2000:14000]
    assert abs(peak_hz(mid, 16000) - 1000) < 3
    assert 0.4 < np.abs(mid).max() < 0.6


def test_same_rate_is_passthrough():
    x = (tone(300, 0.1, 16000) * 32767).astype("<i2")
    out = decode_bytes(x.tobytes(), "pcm", 16000)
    assert np.array_equal(out[0], x / np.float32(32768))


# -- streaming -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", CODECS)
def test_chunking_invariance(short, fmt):
    data = short[fmt]
    whole = stream(open_for(fmt), data, len(data))
    for chunk in (1, 7, 333, 12800):
        got = stream(open_for(fmt), data, chunk)
        assert got.shape == whole.shape, chunk
        if fmt in RAW or fmt == "wav":
            assert np.array_equal(got, whole), chunk
        else:
            assert np.allclose(got, whole, atol=1e-5), chunk


@pytest.mark.parametrize("fmt", ["mp3", "opus", "speex", "aac", "amr", "flac", "wav", "mulaw"])
def test_output_is_incremental(speech, fmt):
    data, _ = speech[fmt]
    dec = open_for(fmt)
    half = len(data) // 2
    early = sum(dec.feed(data[i : i + 512]).shape[1] for i in range(0, half, 512))
    assert early > 16000 * 0.5  # well over a second of the ~4.5 s came out already


def test_m4a_buffers_until_finish(speech):
    data, seconds = speech["m4a"]
    dec = open_decoder("m4a")
    assert dec.feed(data[: len(data) // 2]).shape[1] == 0
    assert dec.feed(data[len(data) // 2 :]).shape[1] == 0
    assert abs(dec.finish().shape[1] / 16000 - seconds) < 0.06


def test_resampled_stream_matches_one_shot(tmp_path):
    src = write_wav(tmp_path / "t.wav", tone(440, 0.5, 44100), 44100)
    data = src.read_bytes()
    assert np.allclose(stream(open_decoder("wav"), data, 7), decode_bytes(data, "wav"), atol=1e-6)


# -- channels ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stereo(tmp_path_factory):
    d = tmp_path_factory.mktemp("stereo")
    left, right = tone(440, 1.0, 16000), tone(1000, 1.0, 16000)
    return write_wav(d / "stereo.wav", np.stack([left, right]), 16000)


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus", "mp3", "aac", "m4a", "pcm", "alaw"])
def test_stereo_channels_kept_apart(stereo, tmp_path, fmt):
    data = stereo.read_bytes() if fmt == "wav" else encode(stereo, fmt, tmp_path / "s").read_bytes()
    dec = open_for(fmt, channels=2) if fmt in RAW else open_decoder(fmt)
    out = stream(dec, data, 999)
    assert out.shape[0] == 2 and dec.channels == 2
    mid = out[:, 3000:13000]
    assert abs(peak_hz(mid[0], 16000) - 440) < 3
    assert abs(peak_hz(mid[1], 16000) - 1000) < 3
    # no crosstalk: the other channel's tone is at least 30 dB down
    for ch, other in ((0, 1000), (1, 440)):
        spec = np.abs(np.fft.rfft(mid[ch] * np.hanning(mid.shape[1])))
        k = round(other * mid.shape[1] / 16000)
        assert spec[k - 2 : k + 3].max() < spec.max() * 10 ** (-30 / 20)


@pytest.mark.parametrize("fmt,n", [("flac", 3), ("flac", 8), ("opus", 8)])
def test_multichannel(tmp_path, fmt, n):
    # 8 planar channels (opus) take a different path: PyAV cannot read such frames directly
    freqs = [300, 500, 700, 900, 1100, 1300, 1500, 1700][:n]
    src = write_wav(tmp_path / "mc.wav", np.stack([tone(f, 0.5, 16000) for f in freqs]), 16000)
    out = decode_bytes(encode(src, fmt, tmp_path / f"mc.{fmt}").read_bytes(), fmt)
    assert out.shape[0] == n
    assert [round(peak_hz(out[c, 1000:7000], 16000), -1) for c in range(n)] == freqs


# -- wav details ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["wav_u8", "wav_s24", "wav_s32", "wav_f32", "wav_f64",
                                     "wav_mulaw", "wav_alaw"])
def test_wav_sample_layouts(tmp_path, variant):
    src = write_wav(tmp_path / "t.wav", tone(1000, 0.5, 8000), 8000)
    data = encode(src, variant, tmp_path / f"{variant}.wav").read_bytes()
    ref = decode_bytes(src.read_bytes(), "wav")
    out = stream(open_decoder("wav"), data, 333)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < (0.02 if variant in ("wav_u8", "wav_mulaw", "wav_alaw")
                                      else 1e-4)


def _chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF])
def test_wav_streamed_size_and_unknown_chunks(data_size):
    pcm = (tone(500, 0.25, 16000) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = (b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"LIST", b"odd-size!")
            + _chunk(b"JUNK", b"\0" * 100) + b"data" + struct.pack("<I", data_size) + pcm)
    wav = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + body
    out = stream(open_decoder("wav"), wav, 5)
    assert np.array_equal(out, decode_bytes(pcm, "pcm", 16000))


def test_wav_trailing_chunk_is_not_audio():
    pcm = (tone(500, 0.1, 16000) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    wav = b"RIFF\0\0\0\0WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", pcm + b"\x01")
    wav += _chunk(b"LIST", b"x" * 333)
    assert stream(open_decoder("wav"), wav, 64).shape[1] == len(pcm) // 2


def test_ffmpeg_piped_wav(tmp_path):
    src = write_wav(tmp_path / "t.wav", tone(1000, 0.5, 16000), 16000)
    piped = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(src),
                            "-f", "wav", "-"], capture_output=True, check=True).stdout
    assert piped[40:44] == b"\xff\xff\xff\xff" or b"data\xff\xff\xff\xff" in piped[:200]
    assert np.array_equal(decode_bytes(piped, "wav"), decode_bytes(src.read_bytes(), "wav"))


# -- other codecs ------------------------------------------------------------------------


def test_chained_ogg_opus(speech):
    data, seconds = speech["opus"]
    out = stream(open_decoder("opus"), data + data, 4000)
    assert abs(out.shape[1] / 16000 - 2 * seconds) < 0.12


def test_amr_wb_no_data_frames():
    data = b"#!AMR-WB\n" + bytes([15 << 3]) * 50  # one second of NO_DATA frames
    dec = open_decoder("amr")
    out = stream(dec, data, 3)
    assert dec.source_rate == 16000 and out.shape == (1, 16000)


@pytest.mark.parametrize("enc_rate", [8000, 48000])
def test_opus_from_other_encoder_rates(speech, tmp_path, enc_rate):
    data, seconds = speech["wav"]
    (tmp_path / "s.wav").write_bytes(data)
    opus = encode(tmp_path / "s.wav", "opus", tmp_path / "s.ogg", rate=enc_rate).read_bytes()
    out = decode_bytes(opus, "opus", sample_rate=16000)  # a declared rate is not held against opus
    assert abs(out.shape[1] / 16000 - seconds) < 0.06


# -- real recordings (skipped when ../shared/audio is absent) -------------------------------


@pytest.mark.shared_audio
def test_shared_multilingual_mp3(shared_audio, manifest):
    path = shared_audio / "en_de_multilingual.mp3"
    dec = open_decoder("mp3")
    out = stream(dec, path.read_bytes(), 12800)
    assert dec.source_rate == 24000 and out.shape[0] == 1
    assert abs(out.shape[1] / 16000 - float(manifest[path.name]["duration_s"])) < 0.1


@pytest.mark.shared_audio
def test_shared_stereo_wav(shared_audio, manifest):
    path = shared_audio / "en_stereo_diarization.wav"
    dec = open_decoder("wav", sample_rate=16000)
    out = stream(dec, path.read_bytes(), 3200)
    assert out.shape[0] == 2 and dec.channels == 2
    assert abs(out.shape[1] / 16000 - float(manifest[path.name]["duration_s"])) < 0.06
    # two different speakers: the channels are not copies of each other
    assert np.corrcoef(out[0], out[1])[0, 1] < 0.9
