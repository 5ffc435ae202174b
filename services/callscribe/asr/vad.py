"""Streaming Silero VAD (v6, the ONNX file that ships inside faster-whisper).

One ``SileroVad`` (one ONNX session, thread-safe) serves every stream; each stream keeps its
own small ``VadState`` (LSTM state, 64 samples of context, leftover samples).  Input is 16 kHz
float PCM in any chunk size; output is one speech probability per 512-sample (32 ms) frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from callscribe.errors import ModelError

FRAME = 512
CONTEXT = 64
SAMPLE_RATE = 16000
FRAME_MS = FRAME * 1000 // SAMPLE_RATE  # 32


def default_vad_path() -> Path:
    from faster_whisper.utils import get_assets_path
    return Path(get_assets_path()) / "silero_vad_v6.onnx"


@dataclass
class VadState:
    h: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class SileroVad:
    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        path = Path(path or default_vad_path())
        if not path.is_file():
            raise ModelError(f"Silero VAD model not found at {path}; reinstall faster-whisper")
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=opts)

    def probabilities(self, state: VadState, samples: np.ndarray) -> np.ndarray:
        """Speech probability of every complete 32 ms frame; keeps the remainder in ``state``."""
        audio = np.concatenate([state.leftover, np.asarray(samples, np.float32)])
        n = len(audio) // FRAME
        state.leftover = audio[n * FRAME:].copy()
        if n == 0:
            return np.zeros(0, np.float32)
        frames = audio[: n * FRAME].reshape(n, FRAME)
        ctx = np.empty((n, CONTEXT), np.float32)
        ctx[0] = state.context
        if n > 1:
            ctx[1:] = frames[:-1, -CONTEXT:]
        state.context = frames[-1, -CONTEXT:].copy()
        batch = np.concatenate([ctx, frames], axis=1)
        out, state.h, state.c = self._session.run(
            None, {"input": batch, "h": state.h, "c": state.c})
        return np.asarray(out, np.float32).reshape(-1)
