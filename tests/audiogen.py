"""Test audio made on the fly: speech (espeak-ng), tones, noise, and every codec we decode.

Uses Debian's command-line tools (espeak-ng, sox, ffmpeg) only to *make* test files; the
library under test never runs a subprocess.  Import from any test module::

    from audiogen import espeak_wav, encode, tone, silence, white_noise, write_wav

``have_tools()`` tells whether the tools are present, so a test can skip with a reason.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
SPEEX_RATES = (8000, 16000, 32000)

# format -> (ffmpeg codec, ffmpeg muxer); "wav_*" variants make the sample layouts WAV allows
_FFMPEG = {
    "mp3": ("libmp3lame", "mp3"),
    "opus": ("libopus", "ogg"),
    "speex": ("libspeex", "ogg"),
    "aac": ("aac", "adts"),
    "m4a": ("aac", "ipod"),
    "amr": ("libopencore_amrnb", "amr"),
    "flac": ("flac", "flac"),
    "mulaw": ("pcm_mulaw", "mulaw"),
    "alaw": ("pcm_alaw", "alaw"),
    "pcm": ("pcm_s16le", "s16le"),
    "wav": ("pcm_s16le", "wav"),
    "wav_u8": ("pcm_u8", "wav"),
    "wav_s24": ("pcm_s24le", "wav"),
    "wav_s32": ("pcm_s32le", "wav"),
    "wav_f32": ("pcm_f32le", "wav"),
    "wav_f64": ("pcm_f64le", "wav"),
    "wav_mulaw": ("pcm_mulaw", "wav"),
    "wav_alaw": ("pcm_alaw", "wav"),
}


def have_tools(*names: str) -> bool:
    return all(shutil.which(n) for n in (names or ("ffmpeg", "sox", "espeak-ng")))


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


def _ffmpeg_has_encoder(name: str) -> bool:
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    )
    return any(line.split()[1:2] == [name] for line in proc.stdout.splitlines() if line.strip())


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine, float32 mono."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def white_noise(seconds: float, rate: int, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    return np.clip(rng.standard_normal(n) * amplitude, -1, 1).astype(np.float32)


def write_wav(path, samples: np.ndarray, rate: int, channels: int | None = None) -> Path:
    """Write 16-bit PCM wav.  ``samples``: 1-D mono, 2-D (channels, n), or 1-D interleaved
    with ``channels`` given.  Values are floats in [-1, 1]."""
    path = Path(path)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        channels = x.shape[0]
        inter = x.T.reshape(-1)
    else:
        channels = channels or 1
        inter = x
    pcm = np.clip(np.round(inter * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def espeak_wav(text: str, path, rate: int = 16000, voice: str = "en-us",
               speed: int | None = None) -> Path:
    """Speak ``text`` with espeak-ng into a mono 16-bit wav at ``rate``."""
    path = Path(path)
    raw = path.with_name(path.stem + ".espeak.wav")
    cmd = ["espeak-ng", "-v", voice, "-w", str(raw)]
    if speed is not None:
        cmd += ["-s", str(speed)]
    _run(cmd + [text])
    _run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer",
          str(path)])
    raw.unlink(missing_ok=True)
    return path


def encode(src_wav, fmt: str, dst, rate: int | None = None) -> Path:
    """Encode ``src_wav`` as ``fmt`` (see _FFMPEG; also "amr") with Debian's ffmpeg.

    ``rate`` resamples on the way (opus/speex/amr snap to a rate their encoder accepts:
    amr is always 8 kHz mono).  AMR-NB uses sox when ffmpeg lacks libopencore_amrnb's
    encoder (Debian builds it decode-only).
    """
    src, dst = Path(src_wav), Path(dst)
    if fmt not in _FFMPEG:
        raise ValueError(f"audiogen.encode: unknown format {fmt!r}")
    codec, muxer = _FFMPEG[fmt]
    if fmt == "amr":
        rate = 8000
        if not _ffmpeg_has_encoder(codec):
            _run(["sox", str(src), "-r", "8000", "-c", "1", "-t", "amr-nb", "-C", "7", str(dst)])
            return dst
    if fmt == "opus" and rate is not None and rate not in OPUS_RATES:
        rate = 48000
    if fmt == "speex" and rate is not None and rate not in SPEEX_RATES:
        rate = min(SPEEX_RATES, key=lambda r: abs(r - rate))
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src)]
    if rate is not None:
        cmd += ["-ar", str(rate)]
    if fmt == "amr":
        cmd += ["-ac", "1", "-b:a", "12.2k"]
    if fmt == "mp3":
        cmd += ["-b:a", "64k"]
    cmd += ["-c:a", codec, "-f", muxer, str(dst)]
    _run(cmd)
    return dst
