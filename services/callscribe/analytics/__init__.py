"""Call analytics: PII redaction, call characteristics and categories.

Pure, I/O-free modules (the worker, the gateway and ``callscribe transcribe --analytics``
call them): :mod:`.pii` finds personal data in text, :mod:`.redact` redacts a sentence and its
words, :mod:`.characteristics` computes talk, non-talk, interruptions, talk speed, loudness and
polarity over a call, :mod:`.categories` matches a rules file against a call.
"""
