"""Short-lived, single-use WebSocket tokens (DashScope's temporary API keys, ``/api/v1/tokens``).

Browsers cannot put an ``Authorization`` header on a WebSocket handshake.  So a page asks its
own server, with the real API key in the header of an ordinary ``fetch``, for a token::

    POST /api/v1/tokens[?expire_in_seconds=N]      Authorization: Bearer <api key>
    200 {"token": "st-...", "expires_at": <unix s>, "expires_in": <s>}

and opens ``ws://host/api-ws/v1/inference?token=st-...``.  The handshake consumes the token:
it is accepted once, before it expires, and the session then counts against the key that
issued it (admission limits, vocabularies).  Expired, reused and unknown tokens get HTTP 401.

Tokens are 32 random bytes (``secrets.token_urlsafe``); only their SHA-256 digest is kept,
with the issuing key id and the expiry.  The store is bounded twice: per key
(``max_per_key``, ``CALLSCRIBE_TOKEN_MAX_PER_KEY``) and overall (``max_tokens``; the gateway
makes it at least ``max_per_key`` times the number of keys, so a key that mints as fast as
it can fills only its own share).  When a bound is reached, expired entries are dropped; if
all are still valid the request is refused (HTTP 429) rather than evicting someone's live
token.  All methods are thread-safe; ``clock`` (monotonic seconds) is injected so tests can
move time.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from websockets.http11 import Request, Response

from callscribe.errors import QuotaExceeded
from callscribe.gateway.auth import ApiKeys
from callscribe.gateway.http import error_response, header, json_response, query_int

TOKENS_PATH = "/api/v1/tokens"
AUTH_INFO_PATH = "/api/v1/auth-info"
#: outstanding (issued, unused, unexpired) tokens the store holds at most
MAX_TOKENS = 10_000
#: the longest lifetime DashScope allows for ``expire_in_seconds``
MAX_TTL_S = 1800
PREFIX = "st-"


class TokenStoreFull(QuotaExceeded):
    """Too many outstanding tokens (for this key, or overall); retry after the oldest
    expire."""


@dataclass(frozen=True)
class Issued:
    token: str
    ttl_s: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenStore:
    def __init__(self, ttl_s: float = 60.0, *, max_tokens: int = MAX_TOKENS,
                 max_per_key: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.ttl_s = float(ttl_s)
        self.max_tokens = max_tokens
        self.max_per_key = max_per_key or max_tokens
        self._clock = clock
        self._lock = threading.Lock()
        #: SHA-256(token) -> (issuing key id, expiry on ``clock``)
        self._tokens: dict[bytes, tuple[str, float]] = {}
        #: key id -> {SHA-256(token): expiry} of its outstanding tokens
        self._by_key: dict[str, dict[bytes, float]] = {}

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
            mine = self._by_key.get(key_id, {})
            if len(mine) >= self.max_per_key:
                self._purge_key(key_id, now)
                if len(self._by_key.get(key_id, {})) >= self.max_per_key:
                    raise TokenStoreFull(
                        f"this API key has {self.max_per_key} unused tokens outstanding, its "
                        "limit (CALLSCRIBE_TOKEN_MAX_PER_KEY); use them or retry after they "
                        "expire")
            if len(self._tokens) >= self.max_tokens:
                self._purge(now)
                if len(self._tokens) >= self.max_tokens:
                    raise TokenStoreFull(f"{self.max_tokens} tokens are outstanding; retry "
                                         "later")
            d = _digest(token)
            self._tokens[d] = (key_id, now + ttl)
            self._by_key.setdefault(key_id, {})[d] = now + ttl
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
            if entry is not None:
                self._forget(entry[0], d)
        if entry is None:
            return None
        key_id, expires_at = entry
        return key_id if now < expires_at else None

    def purge(self) -> int:
        """Drop expired tokens; return how many."""
        with self._lock:
            return self._purge(self._clock())

    def _purge(self, now: float) -> int:
        dead = [(d, key) for d, (key, exp) in self._tokens.items() if exp <= now]
        for d, key in dead:
            del self._tokens[d]
            self._forget(key, d)
        return len(dead)

    def _purge_key(self, key_id: str, now: float) -> None:
        for d, exp in list(self._by_key.get(key_id, {}).items()):
            if exp <= now:
                self._tokens.pop(d, None)
                self._forget(key_id, d)

    def _forget(self, key_id: str, d: bytes) -> None:
        mine = self._by_key.get(key_id)
        if mine is not None:
            mine.pop(d, None)
            if not mine:
                del self._by_key[key_id]


# --- HTTP ------------------------------------------------------------------------------------


def handle_tokens(request: Request, keys: ApiKeys, store: TokenStore) -> Response:
    """``POST /api/v1/tokens[?expire_in_seconds=N]`` with ``Authorization: Bearer <key>``."""
    if request.method != "POST":
        return error_response(405, "MethodNotAllowed", "use POST")
    key_id = keys.identify(header(request, "Authorization"))
    if key_id is None:
        return error_response(401, "InvalidApiKey", "missing or invalid API key "
                              "(send Authorization: Bearer <key>)")
    _, _, query = request.path.partition("?")
    # capped at the configured token_ttl_s by the store
    ttl = query_int(query, "expire_in_seconds", 1, MAX_TTL_S)
    issued = store.issue(key_id, ttl)  # TokenStoreFull: 429 Throttling (gateway/server.py)
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
