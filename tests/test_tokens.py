"""Short-lived WebSocket tokens: the store (expiry, single use, bound, threads) and the HTTP and
WebSocket surface (``POST /api/v1/tokens``, ``?token=`` on the handshake, ``auth-info``).

The server tests need no model: a WebSocket handshake only needs a ready runtime, which is
not used until a run-task arrives.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from callscribe.gateway.tokens import PREFIX, TokenStore, TokenStoreFull
from callscribe.settings import load_settings
from serverutil import StubRuntime, start_gateway
from waiting import wait_until

KEY = "sk-token-test-key"
OTHER_KEY = "sk-token-other-key"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- the store -------------------------------------------------------------------------------


def test_token_is_random_urlsafe_and_stored_hashed():
    store = TokenStore(60)
    a, b = store.issue("key-a").token, store.issue("key-a").token
    assert a != b and a.startswith(PREFIX) and b.startswith(PREFIX)
    body = a[len(PREFIX):]
    assert len(body) == 43 and all(c.isalnum() or c in "-_" for c in body)  # 32 bytes, b64url
    held = repr(store._tokens)
    assert a not in held and body not in held  # only digests are kept


def test_redeem_once_for_the_issuing_key():
    store = TokenStore(60, clock=FakeClock())
    tok = store.issue("key-a").token
    other = store.issue("key-b").token
    assert store.redeem(tok) == "key-a"
    assert store.redeem(tok) is None  # single use
    assert store.redeem(other) == "key-b"
    for bad in (None, "", "st-unknown", tok[len(PREFIX):], PREFIX + "x" * 300):
        assert store.redeem(bad) is None
    assert len(store) == 0


def test_expiry_and_requested_ttl_capped_at_the_setting():
    clock = FakeClock()
    store = TokenStore(60, clock=clock)
    tok = store.issue("key-a").token
    clock.t += 59.9
    late = store.issue("key-a").token
    assert store.redeem(tok) == "key-a"
    clock.t += 60.0
    assert store.redeem(late) is None  # expired: refused (and removed)
    assert len(store) == 0

    short = store.issue("key-a", ttl_s=5)
    assert short.ttl_s == 5
    assert store.issue("key-a", ttl_s=1800).ttl_s == 60  # never longer than configured
    clock.t += 5
    assert store.redeem(short.token) is None
    with pytest.raises(ValueError):
        store.issue("key-a", ttl_s=0)


def test_bounded_size_purges_expired_and_refuses_when_all_live():
    clock = FakeClock()
    store = TokenStore(10, max_tokens=3, clock=clock)
    old = [store.issue("k").token for _ in range(2)]
    clock.t += 5
    newer = store.issue("k").token
    with pytest.raises(TokenStoreFull):
        store.issue("k")  # all three still valid: no one's live token is evicted
    clock.t += 6  # the first two have expired
    fresh = store.issue("k").token
    assert len(store) == 2
    assert [store.redeem(t) for t in old] == [None, None]
    assert store.redeem(newer) == "k" and store.redeem(fresh) == "k"
    store.issue("k")
    clock.t += 100
    assert store.purge() == 1 and len(store) == 0


def test_concurrent_redeem_succeeds_exactly_once():
    store = TokenStore(60)
    tokens = [store.issue(f"k{i % 3}").token for i in range(200)]
    wins: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker():
        start.wait()
        for t in tokens:
            if store.redeem(t) is not None:
                with lock:
                    wins.append(t)
        for _ in range(50):
            store.issue("kx")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == sorted(tokens)
    assert len(store) == 8 * 50


# --- over HTTP and WebSocket -----------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(loop_thread, tmp_path_factory):
    settings = load_settings(api_keys=f"{KEY},{OTHER_KEY}", token_ttl_s=30,
                             vocabulary_db=tmp_path_factory.mktemp("tok") / "v.sqlite3")
    g = loop_thread.run(start_gateway(settings, StubRuntime(), open_timeout=2.0))
    yield g
    loop_thread.run(g.shutdown(0))


@pytest.fixture
def clock(gw, monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(gw.tokens, "_clock", c)
    gw.tokens._tokens.clear()
    return c


def request(port: int, method: str, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def issue(gw, key: str = KEY, query: str = "") -> dict:
    status, headers, body = request(gw.port, "POST", "/api/v1/tokens" + query,
                                    {"Authorization": f"Bearer {key}"})
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    return json.loads(body)


def ws_url(gw, token: str | None = None) -> str:
    url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/inference"
    return url + (f"?token={token}" if token is not None else "")


def refused(url: str, **kw) -> int:
    with pytest.raises(InvalidStatus) as err:
        connect(url, open_timeout=5, **kw)
    return err.value.response.status_code


def test_issue_token_response(gw, clock):
    before = time.time()
    got = issue(gw)
    assert got["token"].startswith(PREFIX)
    assert got["expires_in"] == 30  # CALLSCRIBE_TOKEN_TTL_S
    assert before + 29 <= got["expires_at"] <= time.time() + 31
    assert issue(gw, query="?expire_in_seconds=5")["expires_in"] == 5
    assert issue(gw, query="?expire_in_seconds=1800")["expires_in"] == 30


def test_bad_key_and_bad_requests(gw, clock):
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"}):
        status, _, body = request(gw.port, "POST", "/api/v1/tokens", headers)
        assert status == 401
        assert json.loads(body)["code"] == "InvalidApiKey"
    status, _, _ = request(gw.port, "GET", "/api/v1/tokens", {"Authorization": f"Bearer {KEY}"})
    assert status == 405
    for q in ("0", "1801", "abc", "-5"):
        status, _, body = request(gw.port, "POST", f"/api/v1/tokens?expire_in_seconds={q}",
                                  {"Authorization": f"Bearer {KEY}"})
        assert status == 400 and json.loads(body)["code"] == "InvalidParameter", q
    assert len(gw.tokens) == 0


def test_websocket_accepts_a_token_once(gw, clock):
    tok = issue(gw)["token"]
    with connect(ws_url(gw, tok), open_timeout=5):
        # the session belongs to the key that issued the token
        (conn,) = wait_until(lambda: list(gw.connections), 10, "the session registered",
                             every=0.01)
        assert conn.key_id == gw.keys.identify(f"Bearer {KEY}")
        assert conn.key_id != gw.keys.identify(f"Bearer {OTHER_KEY}")
    assert refused(ws_url(gw, tok)) == 401  # reused
    # a reused token is refused even with a valid key header: the token decides
    assert refused(ws_url(gw, tok), additional_headers={"Authorization": f"Bearer {KEY}"}) == 401


def test_websocket_refuses_expired_unknown_and_empty_tokens(gw, clock):
    tok = issue(gw)["token"]
    clock.t += 30.0
    assert refused(ws_url(gw, tok)) == 401  # expired
    assert refused(ws_url(gw, "st-" + "A" * 43)) == 401  # unknown
    assert refused(ws_url(gw, KEY)) == 401  # an API key is no token (and never in a URL)
    assert refused(ws_url(gw, "")) == 401  # an empty token is no auth at all
    # a short-lived one
    tok = issue(gw, query="?expire_in_seconds=2")["token"]
    clock.t += 1.9
    with connect(ws_url(gw, tok), open_timeout=5):
        pass


def test_realtime_endpoint_takes_tokens_too(gw, clock):
    tok = issue(gw, OTHER_KEY)["token"]
    url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/realtime?model=qwen3-asr-flash-realtime&token={tok}"
    with connect(url, open_timeout=5) as ws:
        assert json.loads(ws.recv(5))["type"] == "session.created"
    assert refused(url) == 401


def test_auth_info(gw, loop_thread, tmp_path):
    status, headers, body = request(gw.port, "GET", "/api/v1/auth-info")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"api_key_required": True, "token_path": "/api/v1/tokens",
                                "token_ttl_s": 30}
    open_settings = load_settings(api_keys="", vocabulary_db=tmp_path / "v.sqlite3")
    g = loop_thread.run(start_gateway(open_settings, StubRuntime()))
    try:
        status, _, body = request(g.port, "GET", "/api/v1/auth-info")
        assert json.loads(body)["api_key_required"] is False
        with connect(ws_url(g), open_timeout=5):  # no keys: no token needed
            pass
        assert refused(ws_url(g, "st-bogus")) == 401  # but a token, if given, must be valid
        tok = json.loads(request(g.port, "POST", "/api/v1/tokens")[2])["token"]
        with connect(ws_url(g, tok), open_timeout=5):
            pass
        # without keys, a page from another site may not reach the local service
        assert refused(ws_url(g), origin="http://evil.example") == 403
        assert refused(ws_url(g), origin="null") == 403
        with connect(ws_url(g), open_timeout=5, origin=f"http://127.0.0.1:{g.port}"):
            pass  # the captions page itself (same origin) is fine
    finally:
        loop_thread.run(g.shutdown(0))
