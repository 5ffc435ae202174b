"""faster-whisper (CTranslate2) engine with a cost-aware decode.

Whisper pads every input to 30 s; the encoder cost grows faster than the context, so this
engine encodes a shorter window (see ../shared/docs/whisper-cost-notes.md and bench/):

* final decodes: audio padded to max(6 s, 2 x length), capped at 30 s, greedy, ``max_length``
  capped by duration, word timestamps from ``align`` on the same encoder output; a repetition
  loop falls back once to the full 30 s window;
* partial decodes: audio + 1 s of padding in timestamp mode (the prompt ends with the first
  timestamp token and the text is cut at the next one), no alignment.
"""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import ctranslate2
import numpy as np
import tokenizers
import zhconv
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations

from callscribe.asr.engine import DecodeRequest, DecodeResult, RawWord
from callscribe.errors import EngineError, ModelError

SAMPLE_RATE = 16000
#: a detected language below this probability yields to the stream's prior language
UNSURE_LANGUAGE_P = 0.8
_PREPEND = "\"'“¿([{-"
_APPEND = "\"'.。,，!！?？:：”)]}、"


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _mentions(text: str, terms: tuple[str, ...]) -> int:
    """How many of ``terms`` occur in ``text`` (case, spaces and punctuation ignored)."""
    flat = _squash(zhconv.convert(text, "zh-cn"))
    return sum(1 for t in terms if _squash(t) and _squash(t) in flat)


class WhisperEngine:
    """One loaded Whisper model serving every session of the process (thread-safe)."""

    name = "faster-whisper"
    sample_rate = SAMPLE_RATE

    def __init__(self, model_dir: Path, *, compute_type: str = "int8", cpu_threads: int = 1,
                 num_workers: int = 2, min_final_window_s: float = 6.0) -> None:
        try:
            self._fw = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type,
                                    cpu_threads=cpu_threads, num_workers=num_workers,
                                    local_files_only=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"cannot load the Whisper model from {model_dir}: {exc}; run "
                             "`callscribe models verify` (bundled model) or check "
                             "CALLSCRIBE_MODEL_DIR") from exc
        self.model_name = Path(model_dir).name
        self._model: ctranslate2.models.Whisper = self._fw.model
        self._hf: tokenizers.Tokenizer = self._fw.hf_tokenizer
        self._fe = self._fw.feature_extractor
        self.multilingual = bool(self._model.is_multilingual)
        self.min_final_window_s = min_final_window_s
        self._tokenizers: dict[str | None, Tokenizer] = {}
        self._lock = threading.Lock()

    # --- helpers ------------------------------------------------------------------------
    def tokenizer(self, language: str | None) -> Tokenizer:
        key = language if self.multilingual else "en"
        tok = self._tokenizers.get(key)
        if tok is None:
            with self._lock:
                tok = self._tokenizers.get(key) or Tokenizer(
                    self._hf, self.multilingual, task="transcribe", language=key or "en")
                self._tokenizers[key] = tok
        return tok

    def supported_language(self, code: str) -> bool:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
        return code in _LANGUAGE_CODES if self.multilingual else code == "en"

    def _encode(self, audio: np.ndarray, window_s: float) -> tuple[ctranslate2.StorageView, int]:
        n = len(audio)
        window = int(min(30.0, max(window_s, n / SAMPLE_RATE)) * SAMPLE_RATE)
        padded = np.zeros(window, dtype=np.float32)
        padded[: min(n, window)] = audio[:window]
        feats = self._fe(padded, padding=0)
        frames = min(3000, feats.shape[-1] - feats.shape[-1] % 2)
        feats = np.ascontiguousarray(feats[:, :frames][None], dtype=np.float32)
        out = self._model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
        return out, min(n // self._fe.hop_length, frames)

    def _language(self, enc, req: DecodeRequest) -> tuple[str | None, float]:
        if not self.multilingual:
            return "en", 1.0
        if req.language:
            return req.language, 1.0
        hints = [h for h in req.language_hints if self.supported_language(h)]
        if len(hints) == 1:
            return hints[0], 1.0
        probs = [(token[2:-2], float(p)) for token, p in self._model.detect_language(enc)[0]]
        allowed = [(code, p) for code, p in probs if not hints or code in hints]
        if not allowed:
            return (hints[0] if hints else "en"), 0.0
        code, p = allowed[0]
        prior = req.language_prior
        if prior and code != prior and p < UNSURE_LANGUAGE_P \
                and (not hints or prior in hints):
            return prior, next((q for c, q in probs if c == prior), 0.0)
        return code, p

    def _prompt(self, tok: Tokenizer, req: DecodeRequest, language: str | None,
                timestamps: bool, bias: bool = False) -> list[int]:
        prompt: list[int] = []
        # no instruction-like default prompt: Whisper base copies such prompts into the output
        context = " ".join(x for x in (req.bias_prompt if bias else None, req.prompt,
                                       req.previous_text) if x)
        if context:
            prompt.append(tok.sot_prev)
            prompt.extend(tok.encode(" " + context.strip())[-200:])
        prompt.extend(tok.sot_sequence)
        prompt.append(tok.timestamp_begin if timestamps else tok.no_timestamps)
        return prompt

    def _generate(self, enc, tok: Tokenizer, prompt: list[int], duration_s: float,
                  timestamps: bool):
        cap = int(12 * duration_s) + 8
        res = self._model.generate(
            enc, [prompt], beam_size=1, max_length=min(448, len(prompt) + cap),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=list(tok.non_speech_tokens) + [tok.transcribe, tok.translate,
                                                           tok.sot, tok.sot_prev, tok.sot_lm],
        )[0]
        tokens = list(res.sequences_ids[0])
        if timestamps:
            # keep every timestamped segment's text; if the decoder loops, keep only the
            # first segment (text up to the first timestamp after the prompt's)
            start = next((i for i, t in enumerate(tokens) if t < tok.timestamp_begin), len(tokens))
            cut = next((i for i in range(start, len(tokens)) if tokens[i] >= tok.timestamp_begin),
                       len(tokens))
            text_all = [t for t in tokens if t < tok.timestamp_begin]
            tokens = text_all if not self._looping(tok.decode(text_all)) else tokens[start:cut]
        tokens = [t for t in tokens if t < tok.eot]
        n = len(tokens)
        avg = float(res.scores[0]) * n / (n + 1) if n else 0.0
        return tokens, float(res.no_speech_prob), avg

    @staticmethod
    def _looping(text: str) -> bool:
        data = text.encode("utf-8")
        if len(data) < 24:
            return False
        return len(data) / max(1, len(zlib.compress(data))) > 2.4

    # --- the engine call ----------------------------------------------------------------
    def decode(self, req: DecodeRequest) -> DecodeResult:
        audio = np.asarray(req.audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        if len(audio) < SAMPLE_RATE // 10:
            return DecodeResult(text="", language=req.language)
        t0 = time.process_time()
        try:
            if req.partial:
                window = duration + 1.0
                timestamps = True
            else:
                window = max(self.min_final_window_s, 2.0 * duration)
                timestamps = False
            enc, num_frames = self._encode(audio, window)
            language, lang_p = self._language(enc, req)
            tok = self.tokenizer(language)
            tokens, no_speech, avg = self._generate(
                enc, tok, self._prompt(tok, req, language, timestamps), duration, timestamps)
            text = tok.decode(tokens).strip()
            fallback = False
            if self._looping(text) and not req.partial and window < 30.0:
                fallback = True
                enc, num_frames = self._encode(audio, 30.0)
                tokens, no_speech, avg = self._generate(
                    enc, tok, self._prompt(tok, req, language, False), duration, False)
                text = tok.decode(tokens).strip()
            biased = False
            if req.bias_prompt and req.bias_terms and not req.partial:
                b_tokens, b_ns, b_avg = self._generate(
                    enc, tok, self._prompt(tok, req, language, False, bias=True), duration, False)
                b_text = tok.decode(b_tokens).strip()
                if (_mentions(b_text, req.bias_terms) > _mentions(text, req.bias_terms)
                        and not self._looping(b_text)):
                    tokens, no_speech, avg, text, biased = b_tokens, b_ns, b_avg, b_text, True
            words: tuple[RawWord, ...] = ()
            if not req.partial and tokens:
                words = self._words(tok, tokens, enc, num_frames)
        except (RuntimeError, ValueError) as exc:  # ctranslate2 raises RuntimeError on OOM etc.
            raise EngineError(f"decode failed: {exc}") from exc
        if language == "zh":
            text = zhconv.convert(text, "zh-cn")
            words = tuple(RawWord(w.start, w.end, zhconv.convert(w.text, "zh-cn"), w.probability)
                          for w in words)
        return DecodeResult(
            text=text, words=words, language=language, language_probability=lang_p,
            no_speech_probability=no_speech, avg_logprob=avg,
            stats={"window_s": round(window, 2), "tokens": len(tokens), "fallback": fallback,
                   "biased": biased,
                   "cpu_s": time.process_time() - t0})

    def _words(self, tok: Tokenizer, tokens: list[int], enc, num_frames: int) -> tuple[RawWord, ...]:
        alignment = self._fw.find_alignment(tok, [tokens], enc, max(2, num_frames))[0]
        merge_punctuations(alignment, _PREPEND, _APPEND)
        return tuple(RawWord(float(a["start"]), float(a["end"]), a["word"], float(a["probability"]))
                     for a in alignment if a["word"])
