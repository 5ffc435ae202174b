"""Strict parsing of what clients send: one JSON loader and one integer parser for every edge.

Python's own parsers are generous in ways a server must not be:

* ``json.loads`` accepts lone UTF-16 surrogates (``"\\ud800"``), which cannot be encoded back
  to UTF-8: echoing such a string in a frame, a log line or an SQLite row raises far from
  where it came in.  It recurses once per nesting level, so a deeply nested document raises
  ``RecursionError``.
* ``str.isdigit`` is true for superscript and other non-decimal digits (``"¹⁶⁰⁰⁰"``, ``"²"``)
  that ``int()`` then refuses, and ``int()`` itself accepts non-ASCII decimal digits,
  whitespace, signs and underscores.

:func:`loads` and :func:`parse_int` close those gaps; both raise :class:`WireError` (a
``ValueError``) whose message says what was wrong and never contains the offending text.
NaN, Infinity and numbers too large for a float (``1e400``, read as infinity) stay numbers
here; every numeric parameter check must reject non-finite values (:func:`finite_number`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: longest ASCII digit string :func:`parse_int` reads (no parameter needs more)
MAX_INT_DIGITS = 18

_SURROGATE = re.compile("[\ud800-\udfff]")
#: a \\uD800-\\uDBFF escape not followed by a low one, or a \\uDC00-\\uDFFF escape not preceded
#: by a high one (a prefilter: an escaped backslash before ``u`` can make it match falsely)
_LONE_ESCAPE = re.compile(r"\\u(?:[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                          r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u)[dD][c-fC-F])")
_DIGITS = re.compile(r"[0-9]+")


class WireError(ValueError):
    """Client input that is not acceptable JSON or not an ASCII integer."""


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses lone surrogates in any string or key, and reports a document
    nested too deep for the parser (Python's C parser stops at ~1,000 levels with
    ``RecursionError``) as a :class:`WireError`.

    The surrogate check costs two substring searches for ordinary traffic; only text with a
    ``\\uD...`` escape is searched for one that is not half of a pair, and only when there is
    one are the parsed strings walked."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"not UTF-8 (invalid byte at {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise WireError("not acceptable JSON: nested too deeply") from None
    except ValueError:
        raise WireError("not valid JSON") from None
    if ("\\ud" in text or "\\uD" in text) and _LONE_ESCAPE.search(text) \
            and _has_surrogate(obj):
        raise WireError("not acceptable JSON: a string contains a lone UTF-16 surrogate "
                        "escape (\\ud800-\\udfff without its pair); send valid Unicode")
    return obj


def _has_surrogate(obj: Any) -> bool:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            if _SURROGATE.search(o):
                return True
        elif isinstance(o, dict):
            for k, v in o.items():
                if _SURROGATE.search(k):
                    return True
                stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)
    return False


def parse_int(value: Any, *, max_digits: int = MAX_INT_DIGITS) -> int:
    """An integer from a JSON number (int, or a float with an integral finite value) or a
    string of ASCII digits ``0-9`` only (at most ``max_digits``).  Raises :class:`WireError`."""
    if isinstance(value, bool):
        raise WireError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise WireError("not an integer")
    if isinstance(value, str):
        if len(value) <= max_digits and _DIGITS.fullmatch(value):
            return int(value)
        raise WireError("not an integer written with the ASCII digits 0-9")
    raise WireError("not an integer")


def finite_number(value: Any) -> bool:
    """True for an int or a finite float (not a bool, not NaN, not +-Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, float) or math.isfinite(value)
