"""The engine interface: what a recognition session needs from a speech model.

Deliberately small (after sherpa-onnx's online recognizer): the session owns streaming,
segmentation and timing; an engine turns one utterance of 16 kHz float PCM into text, words
and a language.  A streaming engine (sherpa-onnx, say) can implement the same call on the
audio so far.  Engines must be safe to call from several threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    #: mono float32 PCM at ``Engine.sample_rate``
    audio: np.ndarray
    #: cheap decode for a partial result (no word alignment, may be less accurate)
    partial: bool = False
    #: languages the caller allows (first one forced when it is the only one); empty: detect
    language_hints: tuple[str, ...] = ()
    #: language already detected for this sentence (skips detection)
    language: str | None = None
    #: the language the stream has been confidently in so far: kept when detection on this
    #: audio is unsure (a 1 s "Ask not." can come out as Arabic otherwise)
    language_prior: str | None = None
    #: free text to bias the decoder (hotwords, context)
    prompt: str | None = None
    #: text decoded for the previous sentence (conditioning); may be ignored
    previous_text: str | None = None
    #: hotword prompt, applied only where it pays: the engine decodes with and without it and
    #: keeps the biased text only when it contains more of ``bias_terms``
    bias_prompt: str | None = None
    bias_terms: tuple[str, ...] = ()
    #: left context for a final: the end of the previous sentence's audio (placed before
    #: ``audio`` in the same window) and the text the model decoded for exactly that audio
    #: (forced as the decoder's prefix, so only the new sentence's text comes out); used only
    #: when this sentence is in ``context_language``
    context_audio: np.ndarray | None = None
    context_text: str | None = None
    context_language: str | None = None


@dataclass(frozen=True, slots=True)
class RawWord:
    start: float  # seconds from the start of ``audio``
    end: float
    text: str  # as the model wrote it, leading space and trailing punctuation included
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class DecodeResult:
    text: str
    words: tuple[RawWord, ...] = ()
    language: str | None = None
    language_probability: float = 0.0
    no_speech_probability: float = 0.0
    avg_logprob: float = 0.0
    #: engine-specific figures for benchmarks (encoder frames, tokens, fallbacks)
    stats: dict = field(default_factory=dict)


class Engine(Protocol):
    name: str
    model_name: str
    sample_rate: int

    def decode(self, request: DecodeRequest) -> DecodeResult: ...
