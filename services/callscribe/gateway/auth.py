"""API-key authentication: keys are kept only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

#: the key id used for every client when no keys are configured (loopback-only mode)
ANONYMOUS = "anonymous"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The configured keys.  ``identify`` returns a stable, non-secret id for a valid key."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, authorization: str | None) -> str | None:
        """Key id for an ``Authorization: Bearer <key>`` (or bare ``<key>``) header value, None
        when invalid.

        Every configured digest is compared (no early exit), each with
        :func:`hmac.compare_digest`, so timing does not reveal which key matched or how much.
        """
        if not self.enabled:
            return ANONYMOUS
        key = parse_bearer(authorization)
        if key is None:
            return None
        candidate = _digest(key)
        found: bytes | None = None
        for d in self._digests:
            if hmac.compare_digest(candidate, d):
                found = d
        return "key-" + found.hex()[:12] if found is not None else None


def parse_bearer(value: str | None) -> str | None:
    """The token of ``Bearer <token>`` (scheme case-insensitive), or a bare ``<token>`` with no
    scheme (some DashScope clients, e.g. the Go client dashscopego, send the key alone);
    None for anything else (another scheme, an empty value)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if not token:
        return scheme or None  # no space: the whole value is the key
    if scheme.lower() != "bearer":
        return None
    return token


def cross_site(origin: str | None, host: str | None) -> bool:
    """True when a browser page from another site opens the WebSocket (``Origin`` names a
    different host:port than the ``Host`` it connects to).  Non-browser clients send no
    Origin, or their own."""
    if not origin or origin == "null":
        return origin == "null"
    from urllib.parse import urlsplit

    try:
        o = urlsplit(origin)
        origin_host = o.netloc.lower()
    except ValueError:
        return True
    return origin_host != (host or "").lower()

