"""What happens to a final sentence after decoding, in the decode worker thread:
hotword correction, inverse text normalisation, disfluency removal, then emotion.

Every rewrite works on the word list, so timestamps stay consistent: a rewritten run of words
keeps the span of the words it replaced, and the sentence text is rebuilt from the words.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from callscribe.recognition.events import FinalSentence
from callscribe.recognition.hotwords import build_prompt, correct_words
from callscribe.recognition.textnorm import normalize_words, remove_disfluencies
from callscribe.recognition.words import close_sentence, words_text

if TYPE_CHECKING:
    from callscribe.recognition.emotion import EmotionEstimator
    from callscribe.recognition.runtime import StreamOptions
    from callscribe.settings import Settings


def hotword_prompt(hotwords, language_hints) -> str | None:
    """Decoder prompt listing the hotwords, highest weight first (None without hotwords)."""
    if not hotwords:
        return None
    return build_prompt(hotwords, language_hints[0] if language_hints else None)


def make_final_hook(opts: StreamOptions, settings: Settings,
                    emotion: EmotionEstimator | None):
    itn = settings.itn_enabled if opts.itn is None else opts.itn
    hotwords = tuple(opts.hotwords)

    def hook(sentence: FinalSentence, audio: np.ndarray) -> FinalSentence:
        lang = sentence.language
        words = list(sentence.words)
        if hotwords:
            words = correct_words(words, hotwords, lang)
        if itn:
            words = normalize_words(words, lang)
        if opts.disfluency_removal:
            words = remove_disfluencies(words, lang)
        words = close_sentence(words, lang)
        text = words_text(words, lang)
        emo = (emotion.estimate(text, lang, audio, 16000)
               if emotion is not None and opts.emotion and text else None)
        return replace(sentence, words=tuple(words), text=text, emotion=emo)

    return hook
