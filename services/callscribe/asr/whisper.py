"""faster-whisper (CTranslate2) engine with a cost-aware decode.

Whisper pads every input to 30 s; the encoder cost grows faster than the context, so this
engine encodes a shorter window (see ../shared/docs/whisper-cost-notes.md and bench/):

* final decodes: the sentence, preceded by a few seconds of the previous sentence's audio
  (``DecodeRequest.context_audio``) whose text is forced as the decoder prefix, so the new
  sentence is decoded with its left context as in a whole-file decode and only its own text
  and word times come out.  Padded to max(6 s, 2 x length), capped at 30 s; beam search
  (:class:`DecodePolicy`); ``max_length`` capped by duration; faster-whisper's fallback
  (resample at higher temperatures when the result is too repetitive or too unlikely, unless
  it is silence); word timestamps from ``align`` on the same encoder output;
* partial decodes: audio + 1 s of padding in timestamp mode (the prompt ends with the first
  timestamp token and the text is cut at the next one), greedy, no alignment;
* both: a repetition guard (:func:`collapse_repeats`) removes a phrase the decoder repeats
  ("and so my fellow Americans and so my fellow Americans ...").
"""

from __future__ import annotations

import threading
import time
import unicodedata
import zlib
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DecodePolicy:
    """How the engine decodes: one per engine, from the settings, never set per client."""

    #: beam width of final decodes (1 = greedy); partials are always greedy
    final_beam_size: int = 5
    #: final window: the audio padded to max(this, 2 x its length), at most 30 s
    min_final_window_s: float = 6.0
    #: temperatures tried in turn when a final fails the checks below (sampling, best of
    #: ``best_of``); empty: no fallback.  faster-whisper tries 0.2 .. 1.0; live finals stop
    #: earlier to bound the cost of a bad sentence
    fallback_temperatures: tuple[float, ...] = (0.2, 0.6)
    best_of: int = 3
    #: a result whose text compresses better than this (zlib) is a repetition loop
    compression_ratio_threshold: float = 2.4
    #: a result less likely than this (mean token log-probability) is retried ...
    log_prob_threshold: float = -1.0
    #: ... unless it is probably silence (no-speech probability above this)
    no_speech_threshold: float = 0.6


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _mentions(text: str, terms: tuple[str, ...]) -> int:
    """How many of ``terms`` occur in ``text`` (case, spaces and punctuation ignored)."""
    flat = _squash(zhconv.convert(text, "zh-cn"))
    return sum(1 for t in terms if _squash(t) and _squash(t) in flat)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data))) if data else 0.0


def _cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in "WF"


def collapse_repeats(keys: list[str]) -> list[int]:
    """Indices of ``keys`` (normalised tokens: lower case, no spaces or punctuation) to keep
    after removing phrases the decoder repeated back to back.

    A unit repeated consecutively is cut to its first occurrence when the repetition cannot
    be speech: a unit of 3+ tokens and 8+ characters (or 4+ CJK characters) seen twice, a
    unit of 2+ CJK characters or 2+ tokens seen three times, anything seen five times.  A
    trailing partial copy of a collapsed unit is dropped too (the decoder was cut mid-loop).
    """
    keep: list[int] = []
    i, n = 0, len(keys)
    while i < n:
        if not keys[i]:
            keep.append(i)
            i += 1
            continue
        collapsed = False
        for k in range(1, (n - i) // 2 + 1):
            unit = keys[i:i + k]
            reps = 1
            while keys[i + reps * k: i + (reps + 1) * k] == unit:
                reps += 1
            if reps < 2:
                continue
            text = "".join(unit)
            words = sum(1 for u in unit if u)
            cjk = sum(1 for ch in text if _cjk(ch))
            need = 5
            if (words >= 3 and len(text) >= 8) or cjk >= 4:
                need = 2
            elif cjk >= 2 or words >= 2:
                need = 3
            if reps < need:
                continue
            keep.extend(range(i, i + k))
            j = i + reps * k
            # a trailing, cut-off copy of the unit
            m = 0
            while j + m < n and m < k and keys[j + m] == unit[m]:
                m += 1
            i = j + (m if j + m == n else 0)
            collapsed = True
            break
        if not collapsed:
            keep.append(i)
            i += 1
    return keep


@dataclass
class _Hypothesis:
    tokens: list[int]
    avg_logprob: float
    no_speech: float
    text: str

    def failed(self, policy: DecodePolicy) -> bool:
        if compression_ratio(self.text) > policy.compression_ratio_threshold:
            return True
        silent = self.no_speech > policy.no_speech_threshold
        return self.avg_logprob < policy.log_prob_threshold and not silent


class WhisperEngine:
    """One loaded Whisper model serving every session of the process (thread-safe)."""

    name = "faster-whisper"
    sample_rate = SAMPLE_RATE

    def __init__(self, model_dir: Path, *, compute_type: str = "int8", cpu_threads: int = 1,
                 num_workers: int = 2, policy: DecodePolicy | None = None) -> None:
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
        self.policy = policy or DecodePolicy()
        self._tokenizers: dict[str | None, Tokenizer] = {}
        self._keys: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def whisper(self) -> WhisperModel:
        """The faster-whisper model (whole-file transcription shares the loaded weights)."""
        return self._fw

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

    def _fixed_language(self, req: DecodeRequest) -> str | None:
        if not self.multilingual:
            return "en"
        if req.language:
            return req.language
        hints = [h for h in req.language_hints if self.supported_language(h)]
        return hints[0] if len(hints) == 1 else None

    def _language(self, enc, req: DecodeRequest) -> tuple[str | None, float]:
        fixed = self._fixed_language(req)
        if fixed:
            return fixed, 1.0
        hints = [h for h in req.language_hints if self.supported_language(h)]
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

    def _prompt(self, tok: Tokenizer, req: DecodeRequest, timestamps: bool,
                prefix: list[int], bias: bool = False) -> list[int]:
        prompt: list[int] = []
        # no instruction-like default prompt: Whisper base copies such prompts into the output;
        # with a forced prefix the previous text is already in the decoder's input
        context = " ".join(x for x in (req.bias_prompt if bias else None, req.prompt,
                                       None if prefix else req.previous_text) if x)
        if context:
            prompt.append(tok.sot_prev)
            prompt.extend(tok.encode(" " + context.strip())[-200:])
        prompt.extend(tok.sot_sequence)
        prompt.append(tok.timestamp_begin if timestamps else tok.no_timestamps)
        prompt.extend(prefix)
        return prompt

    def _generate(self, enc, tok: Tokenizer, prompt: list[int], duration_s: float,
                  timestamps: bool, beam_size: int = 1, temperature: float = 0.0,
                  prefix: int = 0) -> _Hypothesis:
        """The best of the decoder's hypotheses; ``prefix``: how many tokens at the end of the
        prompt are a forced prefix (CTranslate2 returns them at the start of each sequence)."""
        cap = int(12 * duration_s) + 8
        sampling = temperature > 0
        results = self._model.generate(
            enc, [prompt], beam_size=1 if sampling else beam_size,
            num_hypotheses=self.policy.best_of if sampling else 1,
            sampling_topk=0 if sampling else 1, sampling_temperature=temperature or 1.0,
            max_length=min(448, len(prompt) + cap),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=list(tok.non_speech_tokens) + [tok.transcribe, tok.translate,
                                                           tok.sot, tok.sot_prev, tok.sot_lm],
        )[0]
        best: _Hypothesis | None = None
        for seq, score in zip(results.sequences_ids, results.scores):
            tokens = list(seq)
            if timestamps:
                # keep every timestamped segment's text; if the decoder loops, keep only the
                # first segment (text up to the first timestamp after the prompt's)
                start = next((i for i, t in enumerate(tokens) if t < tok.timestamp_begin),
                             len(tokens))
                cut = next((i for i in range(start, len(tokens))
                            if tokens[i] >= tok.timestamp_begin), len(tokens))
                text_all = [t for t in tokens if t < tok.timestamp_begin]
                tokens = text_all if not self._looping(tok.decode(text_all)) else tokens[start:cut]
            tokens = [t for t in tokens if t < tok.eot]
            if prefix and tokens[:prefix] == prompt[-prefix:]:
                tokens = tokens[prefix:]
            tokens = self._unrepeat(tok, tokens)
            n = len(tokens)
            # CTranslate2's score is the length-normalised log-probability of the sequence
            # including the end token
            avg = float(score) * n / (n + 1) if n else 0.0
            hyp = _Hypothesis(tokens, avg, float(results.no_speech_prob), tok.decode(tokens))
            if best is None or hyp.avg_logprob > best.avg_logprob:
                best = hyp
        assert best is not None
        return best

    def _unrepeat(self, tok: Tokenizer, tokens: list[int]) -> list[int]:
        keys = []
        for t in tokens:
            key = self._keys.get(t)
            if key is None:
                key = _squash(tok.decode([t]))
                self._keys[t] = key  # the vocabulary is fixed: a bounded cache
            keys.append(key)
        keep = collapse_repeats(keys)
        return tokens if len(keep) == len(tokens) else [tokens[i] for i in keep]

    @staticmethod
    def _looping(text: str) -> bool:
        return len(text.encode("utf-8")) >= 24 and compression_ratio(text) > 2.4

    def _final(self, enc, tok: Tokenizer, req: DecodeRequest, prefix: list[int],
               duration_s: float, bias: bool = False) -> tuple[_Hypothesis, float]:
        """Beam search, then faster-whisper's temperature fallback while the result fails."""
        p = self.policy
        prompt = self._prompt(tok, req, False, prefix, bias=bias)
        hyp = self._generate(enc, tok, prompt, duration_s, False, beam_size=p.final_beam_size,
                             prefix=len(prefix))
        used = 0.0
        if hyp.failed(p):
            candidates = [hyp]
            for temperature in p.fallback_temperatures:
                cand = self._generate(enc, tok, prompt, duration_s, False,
                                      temperature=temperature, prefix=len(prefix))
                candidates.append(cand)
                if not cand.failed(p):
                    hyp, used = cand, temperature
                    break
            else:  # none passed: the least repetitive, then the most likely
                hyp = min(candidates, key=lambda h: (self._looping(h.text), -h.avg_logprob))
        return hyp, used

    # --- the engine call ----------------------------------------------------------------
    def decode(self, req: DecodeRequest) -> DecodeResult:
        audio = np.asarray(req.audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        if len(audio) < SAMPLE_RATE // 10:
            return DecodeResult(text="", language=req.language)
        t0 = time.process_time()
        try:
            if req.partial:
                return self._partial(audio, duration, req, t0)
            return self._decode_final(audio, duration, req, t0)
        except (RuntimeError, ValueError) as exc:  # ctranslate2 raises RuntimeError on OOM etc.
            raise EngineError(f"decode failed: {exc}") from exc

    def _partial(self, audio: np.ndarray, duration: float, req: DecodeRequest,
                 t0: float) -> DecodeResult:
        enc, _ = self._encode(audio, duration + 1.0)
        language, lang_p = self._language(enc, req)
        tok = self.tokenizer(language)
        hyp = self._generate(enc, tok, self._prompt(tok, req, True, []), duration, True)
        return self._result(hyp.text.strip(), (), language, lang_p, hyp, {
            "window_s": round(duration + 1.0, 2), "tokens": len(hyp.tokens),
            "cpu_s": time.process_time() - t0})

    def _decode_final(self, audio: np.ndarray, duration: float, req: DecodeRequest,
                      t0: float) -> DecodeResult:
        p = self.policy
        context, context_text = self._usable_context(req, duration)
        enc0 = None
        language, lang_p = self._fixed_language(req), 1.0
        if context is not None and language is None:
            # detect on the sentence's own audio: the previous sentence must not decide it
            enc0, _ = self._encode(audio, duration + 1.0)
            language, lang_p = self._language(enc0, req)
            if language != req.context_language:
                context = None
        offset = 0.0
        if context is not None:
            offset = len(context) / SAMPLE_RATE
            audio_in = np.concatenate([context, audio])
        else:
            audio_in = audio
        total = len(audio_in) / SAMPLE_RATE
        window = min(30.0, max(p.min_final_window_s, 2.0 * total))
        enc, num_frames = self._encode(audio_in, window)
        if language is None:
            language, lang_p = self._language(enc, req)
        tok = self.tokenizer(language)
        prefix = tok.encode(" " + context_text.strip()) if context is not None else []
        hyp, temperature = self._final(enc, tok, req, prefix, duration)
        fallback = False
        if self._looping(hyp.text) and window < 30.0:
            fallback = True
            enc, num_frames = self._encode(audio_in, 30.0)
            hyp, temperature = self._final(enc, tok, req, prefix, duration)
        biased = False
        if req.bias_prompt and req.bias_terms:
            b_hyp, _ = self._final(enc, tok, req, prefix, duration, bias=True)
            if (_mentions(b_hyp.text, req.bias_terms) > _mentions(hyp.text, req.bias_terms)
                    and not self._looping(b_hyp.text)):
                hyp, biased = b_hyp, True
        words: tuple[RawWord, ...] = ()
        if hyp.tokens:
            words = self._words(tok, prefix, hyp.tokens, enc, num_frames, offset)
        return self._result(hyp.text.strip(), words, language, lang_p, hyp, {
            "window_s": round(window, 2), "tokens": len(hyp.tokens), "fallback": fallback,
            "temperature": temperature, "context_s": round(offset, 2), "biased": biased,
            "cpu_s": time.process_time() - t0})

    @staticmethod
    def _usable_context(req: DecodeRequest, duration: float) -> tuple[np.ndarray | None, str]:
        ctx, text = req.context_audio, (req.context_text or "").strip()
        if ctx is None or not text or len(ctx) < SAMPLE_RATE // 4:
            return None, ""
        room = int((28.0 - duration) * SAMPLE_RATE)  # context + sentence stay in one window
        if room < SAMPLE_RATE:
            return None, ""
        return np.asarray(ctx, dtype=np.float32)[-room:], text

    @staticmethod
    def _result(text: str, words: tuple[RawWord, ...], language: str | None, lang_p: float,
                hyp: _Hypothesis, stats: dict) -> DecodeResult:
        if language == "zh":
            text = zhconv.convert(text, "zh-cn")
            words = tuple(RawWord(w.start, w.end, zhconv.convert(w.text, "zh-cn"), w.probability)
                          for w in words)
        return DecodeResult(text=text, words=words, language=language,
                            language_probability=lang_p, no_speech_probability=hyp.no_speech,
                            avg_logprob=hyp.avg_logprob, stats=stats)

    def _words(self, tok: Tokenizer, prefix: list[int], tokens: list[int], enc, num_frames: int,
               offset: float) -> tuple[RawWord, ...]:
        alignment = self._fw.find_alignment(tok, [prefix + tokens], enc, max(2, num_frames))[0]
        # drop the words of the forced prefix (the previous sentence)
        seen, first = 0, 0
        while first < len(alignment) and seen < len(prefix):
            seen += len(alignment[first]["tokens"])
            first += 1
        alignment = alignment[first:]
        merge_punctuations(alignment, _PREPEND, _APPEND)
        return tuple(RawWord(max(0.0, float(a["start"]) - offset),
                             max(0.0, float(a["end"]) - offset), a["word"],
                             float(a["probability"]))
                     for a in alignment if a["word"])
