"""Decoder bounds: the per-input output budget and the header layout checks.

A small compressed input must not expand into minutes of audio (and gigabytes of memory):
with ``max_feed_ms`` the decoder stops at that much output and raises DecodeLimitExceeded.
A header must not make the decoder size anything from an absurd channel count or rate.
"""

from __future__ import annotations

import numpy as np
import pytest
from hostile_audio import (amr_no_data_flood, flac_header, ogg_opus_flood, opus_head, ogg_page,
                           wav_header)

from callscribe.audio import open_decoder
from callscribe.errors import AudioTooLarge, DecodeLimitExceeded, UnsupportedFormat

LIMIT_MS = 60_000


@pytest.mark.parametrize("fmt,rate,data", [
    ("amr", 8000, amr_no_data_flood(64 * 1024)),        # 1,310 s of NO_DATA frames
    ("opus", 16000, ogg_opus_flood(64 * 1024)),         # ~1,800 s of one-byte packets
    ("pcm", 8000, b"\0" * (2 * 8000 * 61)),             # 61 s of s16le
    ("wav", 8000, wav_header(1, 8000) + b"\x80" * 8000 * 61),  # 61 s of u8
])
def test_one_input_decoding_to_more_than_the_budget_is_refused(fmt, rate, data):
    dec = open_decoder(fmt, rate, max_feed_ms=LIMIT_MS)
    with pytest.raises(DecodeLimitExceeded) as exc:
        dec.feed(data)
    assert isinstance(exc.value, AudioTooLarge) and exc.value.code == "AudioTooLarge"
    assert "60000 ms of audio" in exc.value.message and "MAX_BUFFERED_AUDIO_MS" in exc.value.message


def test_the_amr_decoder_stops_at_the_budget_instead_of_decoding_everything():
    # 1 MiB of NO_DATA frames is ~20,970 s; the decoder gives up after 60 s' worth of frames,
    # so it never allocates the rest (the test would take half a minute and gigabytes if not)
    dec = open_decoder("amr", 8000, max_feed_ms=LIMIT_MS)
    with pytest.raises(DecodeLimitExceeded):
        dec.feed(amr_no_data_flood(1 << 20))
    assert dec._backend._call_ms <= LIMIT_MS + 20


def test_inputs_within_the_budget_decode_and_the_budget_is_per_input():
    dec = open_decoder("pcm", 16000, max_feed_ms=LIMIT_MS)
    total = 0
    for _ in range(3):  # 3 x 60 s: each input is within the budget
        total += dec.feed(b"\0" * (2 * 16000 * 60)).shape[1]
    assert total == 3 * 60 * 16000
    amr = open_decoder("amr", 8000, max_feed_ms=LIMIT_MS)
    out = amr.feed(amr_no_data_flood(6 + 2999))  # 59.98 s of NO_DATA frames
    assert out.shape[1] > 0


def test_without_a_budget_whole_files_still_decode():
    out = open_decoder("amr", 8000).feed(amr_no_data_flood(6 + 5000))
    assert out.shape[1] > 99 * 16000  # 100 s at 16 kHz (less the resampler delay)


@pytest.mark.parametrize("channels", [9, 255, 65535])
def test_wav_header_with_too_many_channels_is_unsupported(channels):
    dec = open_decoder("wav", 8000)
    with pytest.raises(UnsupportedFormat, match=f"{channels} channels; at most 8"):
        dec.feed(wav_header(channels, 8000) + b"\x80" * channels * 4)


@pytest.mark.parametrize("rate", [1, 3999, 384_001, 4_000_000_000])
def test_wav_header_with_an_absurd_rate_is_unsupported(rate):
    with pytest.raises(UnsupportedFormat, match=f"says {rate} Hz"):
        open_decoder("wav").feed(wav_header(1, rate, bits=16) + b"\0" * 64)


@pytest.mark.parametrize("bits", [0, 65, 200])
def test_wav_header_with_an_absurd_sample_size_is_unsupported(bits):
    with pytest.raises(UnsupportedFormat):
        open_decoder("wav").feed(wav_header(1, 8000, bits=bits) + b"\0" * 64)


def test_wav_with_zero_channels_is_unsupported():
    with pytest.raises(UnsupportedFormat, match="0 channels"):
        open_decoder("wav").feed(wav_header(0, 8000, bits=16) + b"\0" * 64)


def test_opus_head_with_too_many_channels_is_unsupported():
    data = ogg_page(1, 0, 0, 2, [opus_head(channels=200)])
    with pytest.raises(UnsupportedFormat, match="200 channels"):
        open_decoder("opus").feed(data)


@pytest.mark.parametrize("rate,channels,bits,match", [
    (655_350, 1, 16, "655350 Hz"),
    (2000, 1, 16, "2000 Hz"),
])
def test_flac_streaminfo_outside_the_supported_layout_is_unsupported(rate, channels, bits, match):
    with pytest.raises(UnsupportedFormat, match=match):
        open_decoder("flac").feed(flac_header(rate, channels, bits))


def test_a_valid_eight_channel_wav_still_decodes():
    frames = np.zeros((100, 8), np.int16).tobytes()
    out = open_decoder("wav").feed(wav_header(8, 16000, bits=16, data_size=len(frames)) + frames)
    assert out.shape == (8, 100)


def test_the_budget_counts_every_channel():
    dec = open_decoder("wav", max_feed_ms=LIMIT_MS)
    stereo_40s = wav_header(2, 8000, bits=16) + bytes(8000 * 4 * 40)  # 80 s over 2 channels
    with pytest.raises(DecodeLimitExceeded):
        dec.feed(stereo_40s)
    out = open_decoder("wav", max_feed_ms=LIMIT_MS).feed(
        wav_header(2, 8000, bits=16) + bytes(8000 * 4 * 30))  # 60 s over 2 channels: fine
    assert out.shape[0] == 2 and out.shape[1] > 0
