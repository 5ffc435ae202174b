"""The benchmark workload: a call-like recording built from the shared real recordings.

English utterances joined with silence between them (as on a call), 16 kHz s16le, with the
reference text for WER.  Each client streams it at real-time pace in 100 ms chunks.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callscribe.audio import decode_bytes

CALL_FILES = ["en_jfk_16k.wav", "en_ps_librivox_0870.wav", "en_librispeech_1995-1837-0001.wav",
              "en_ps_librivox_0880.wav", "en_ps_librivox_0890.wav", "en_ldc93s1_16k.wav"]
RATE = 16000
CHUNK_MS = 100


@dataclass(frozen=True)
class Workload:
    pcm: bytes  # s16le mono 16 kHz
    reference: str
    duration_s: float
    #: (reference, float32 audio) of each recording, for the whole-file baseline
    utterances: tuple[tuple[str, np.ndarray], ...] = ()

    def for_client(self, i: int) -> Workload:
        """Client ``i``'s copy: 37 ms more leading silence per client (cycling over 8), so the
        clients' VAD frames (32 ms) and sentence cuts fall at different places in the speech,
        as on real calls.  Whisper's text on a short segment can change with a shift of a few
        tens of ms; the pooled WER then measures streaming, not one lucky or unlucky cut."""
        extra = (i % 8) * 37 * RATE // 1000
        if not extra:
            return self
        return Workload(pcm=bytes(2 * extra) + self.pcm, reference=self.reference,
                        duration_s=self.duration_s + extra / RATE, utterances=self.utterances)

    def chunks(self) -> list[bytes]:
        step = RATE * 2 * CHUNK_MS // 1000
        return [self.pcm[i:i + step] for i in range(0, len(self.pcm), step)]


def build_workload(audio_dir: Path, gap_s: float = 1.5) -> Workload:
    with open(audio_dir / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        manifest = {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}
    parts, refs, utts = [np.zeros(int(0.5 * RATE), np.float32)], [], []
    for name in CALL_FILES:
        audio = decode_bytes((audio_dir / name).read_bytes(), "wav")[0]
        parts.append(audio)
        parts.append(np.zeros(int(gap_s * RATE), np.float32))
        refs.append(manifest[name]["transcript"])
        utts.append((manifest[name]["transcript"], audio))
    audio = np.concatenate(parts)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return Workload(pcm=pcm, reference=" ".join(refs), duration_s=len(audio) / RATE,
                    utterances=tuple(utts))
