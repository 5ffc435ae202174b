"""Short-lived, single-use WebSocket tokens (DashScope's temporary API keys, ``/api/v1/tokens``).

Browsers cannot put an ``Authorization`` header on a WebSocket handshake.  So a page asks its
own server, with the real API key in the header of an ordinary ``fetch``, for a token::

    POST /api/v1/tokens[?expire_in_seconds=N]      Authorization: Bearer <api key>
    200 {"token": "st-...", "expires_at": <unix s>, "expires_in": <s>}

and opens ``ws://host/api-ws/v1/inference?token=st-...``.  The handshake consumes the token:
it is accepted once, before it expires, and the session then counts against the key that
issued it (admission limits, vocabularies).  Expired, reused and unknown tokens get HTTP 401.

Tokens are 32 random bytes (``secrets.token_urlsafe``); only their SHA-256 digest is kept,
with the issuing key id and the expiry.  The store is bounded (:data:`MAX_TOKENS`): when full,
expired entries are dropped; if all are still valid the request is refused (HTTP 429) rather
than evicting someone's live token.  All methods are thread-safe; ``clock`` (monotonic
seconds) is injected so tests can move time.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from websockets.http11 import Request, Response

from callscribe.gateway.auth import ApiKeys
from callscribe.gateway.http import error_response, json_response

TOKENS_PATH = "/api/v1/tokens"
AUTH_INFO_PATH = "/api/v1/auth-info"
#: outstanding (issued, unused, unexpired) tokens the store holds at most
MAX_TOKENS = 10_000
#: the longest lifetime DashScope allows for ``expire_in_seconds``
MAX_TTL_S = 1800
PREFIX = "st-"


class TokenStoreFull(Exception):
    """Too many outstanding tokens; retry after the oldest expire."""


@dataclass(frozen=True)
class Issued:
    token: str
    ttl_s: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenStore:
    def __init__(self, ttl_s: float = 60.0, *, max_tokens: int = MAX_TOKENS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.ttl_s = float(ttl_s)
        self.max_tokens = max_tokens
        self._clock = clock
        self._lock = threading.Lock()
        #: SHA-256(token) -> (issuing key id, expiry on ``clock``)
        self._tokens: dict[bytes, tuple[str, float]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)

    def issue(self, key_id: str, ttl_s: float | None = None) -> Issued:
        """A new token for ``key_id``, valid for ``ttl_s`` (at most the store's TTL)."""
        ttl = self.ttl_s if ttl_s is None else min(float(ttl_s), self.ttl_s)
        if ttl <= 0:
            raise ValueError("ttl_s must be positive")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            if len(self._tokens) >= self.max_tokens:
                self._purge(now)
                if len(self._tokens) >= self.max_tokens:
                    raise TokenStoreFull(f"{self.max_tokens} tokens are outstanding")
            self._tokens[_digest(token)] = (key_id, now + ttl)
        return Issued(token, ttl)

    def redeem(self, token: str | None) -> str | None:
        """The issuing key id when ``token`` is valid and unused, else None.  A token is
        removed on its first presentation, valid or expired."""
        if not token or not token.startswith(PREFIX) or len(token) > 200:
            return None
        d = _digest(token)
        with self._lock:
            entry = self._tokens.pop(d, None)
            now = self._clock()
        if entry is None:
            return None
        key_id, expires_at = entry
        return key_id if now < expires_at else None

    def purge(self) -> int:
        """Drop expired tokens; return how many."""
        with self._lock:
            return self._purge(self._clock())

    def _purge(self, now: float) -> int:
        dead = [d for d, (_, exp) in self._tokens.items() if exp <= now]
        for d in dead:
            del self._tokens[d]
        return len(dead)


# --- HTTP ------------------------------------------------------------------------------------


def handle_tokens(request: Request, keys: ApiKeys, store: TokenStore) -> Response:
    """``POST /api/v1/tokens[?expire_in_seconds=N]`` with ``Authorization: Bearer <key>``."""
    if request.method != "POST":
        return error_response(405, "MethodNotAllowed", "use POST")
    key_id = keys.identify(request.headers.get("Authorization"))
    if key_id is None:
        return error_response(401, "InvalidApiKey", "missing or invalid API key "
                              "(send Authorization: Bearer <key>)")
    _, _, query = request.path.partition("?")
    raw = parse_qs(query).get("expire_in_seconds", [None])[0]
    ttl: float | None = None
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_TTL_S:
            return error_response(400, "InvalidParameter", "expire_in_seconds must be an "
                                  f"integer from 1 to {MAX_TTL_S}")
        ttl = int(raw)  # capped at the configured token_ttl_s by the store
    try:
        issued = store.issue(key_id, ttl)
    except TokenStoreFull:
        return error_response(429, "Throttling", "too many outstanding tokens; retry later")
    resp = json_response(200, {"token": issued.token,
                               "expires_at": int(time.time() + issued.ttl_s),
                               "expires_in": int(issued.ttl_s)})
    resp.headers["Cache-Control"] = "no-store"
    return resp


def handle_auth_info(request: Request, keys: ApiKeys, store: TokenStore) -> Response:
    """``GET /api/v1/auth-info``: whether the page must ask for an API key."""
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "MethodNotAllowed", "use GET")
    resp = json_response(200, {"api_key_required": keys.enabled,
                               "token_path": TOKENS_PATH,
                               "token_ttl_s": int(store.ttl_s)})
    resp.headers["Cache-Control"] = "no-store"
    return resp
