"""Issue 13, the HTTP/API half: hostile requests get their specific documented error, while a
well-behaved session on another key streams the JFK recording beside them.

Two real gateways with the real model: one with API keys (quotas, parsing), one in no-key
(loopback) mode (Host and Origin checks).  Each has one module-scoped good neighbour
(:mod:`neighbour`), started before its batch of cases; every case asserts that the neighbour
was still streaming when the case ended, and the neighbour's finals are checked against the
idle-server baseline when the module ends (``test_zz_*``).
"""

from __future__ import annotations

import json
import uuid

import pytest

from abuseutil import assert_error, bearer, exchange, parse_responses, request
from neighbour import GOOD_KEY, HOSTILE_KEY, KEYS, GoodNeighbour, baseline_finals, pcm_of
from serverutil import start_gateway
from callscribe.settings import load_settings
from callscribe.telemetry import configure_telemetry

pytestmark = pytest.mark.shared_audio

#: a third key, so the two vocabulary quota cases do not share one key's usage
HOSTILE_2 = "sk-callscribe-hostile-client-2"
TOKENS_PER_KEY = 20
VOCABS_PER_KEY = 3
VOCAB_BYTES_PER_KEY = 80_000
VOCAB_PATH = "/api/v1/services/audio/asr/customization"


def ws_url(gw) -> str:
    return f"ws://127.0.0.1:{gw.port}/api-ws/v1/inference"


@pytest.fixture(scope="module")
def jfk(shared_audio):
    return pcm_of(shared_audio / "en_jfk_16k.wav")


@pytest.fixture(scope="module")
def keyed(loop_thread, runtime, tmp_path_factory):
    configure_telemetry()
    s = load_settings(api_keys=f"{KEYS},{HOSTILE_2}",
                      vocabulary_db=tmp_path_factory.mktemp("abuse") / "v.sqlite3",
                      token_max_per_key=TOKENS_PER_KEY, vocabulary_max_per_key=VOCABS_PER_KEY,
                      vocabulary_max_bytes_per_key=VOCAB_BYTES_PER_KEY)
    gw = loop_thread.run(start_gateway(s, runtime))
    yield gw
    loop_thread.run(gw.shutdown(0))


@pytest.fixture(scope="module")
def open_gw(loop_thread, runtime, tmp_path_factory):
    """No API keys: loopback-only mode."""
    s = load_settings(api_keys="", vocabulary_db=tmp_path_factory.mktemp("open") / "v.sqlite3")
    gw = loop_thread.run(start_gateway(s, runtime))
    yield gw
    loop_thread.run(gw.shutdown(0))


@pytest.fixture(scope="module")
def baseline(keyed, jfk):
    return baseline_finals(ws_url(keyed), jfk)


@pytest.fixture(scope="module")
def neighbour(keyed, jfk, baseline):
    return GoodNeighbour(ws_url(keyed), jfk).start()


@pytest.fixture(scope="module")
def open_neighbour(open_gw, jfk, baseline):
    return GoodNeighbour(ws_url(open_gw), jfk).start()


def still_beside(n: GoodNeighbour) -> None:
    """The case ran while the neighbour was streaming (its task had not ended)."""
    assert n.outcome.ended is None and n.outcome.error is None, n.outcome


def vocab_body(action: str, **inp) -> bytes:
    return json.dumps({"model": "speech-biasing", "input": {"action": action, **inp}}).encode()


def big_vocabulary(tag: str) -> list[dict]:
    """About 38 KB stored: 480 distinct five-word entries."""
    return [{"text": f"{tag} word{i} alpha bravo charlie", "weight": 3, "lang": "en"}
            for i in range(480)]


def post_vocab(port: int, key: str | None, body: bytes, **kw):
    headers = [("Content-Type", "application/json")] + ([bearer(key)] if key else [])
    return request(port, "POST", VOCAB_PATH, headers, body, **kw)


# --- keyed server: parsing -------------------------------------------------------------------


def test_two_authorization_headers_on_tokens(keyed, neighbour):
    r = request(keyed.port, "POST", "/api/v1/tokens",
                [bearer(HOSTILE_KEY), bearer(GOOD_KEY)])
    assert_error(r, 400, "InvalidParameter", "Authorization header appears more than once")
    still_beside(neighbour)


def test_two_authorization_headers_on_websocket_handshake(keyed, neighbour):
    raw = exchange(keyed.port, (
        "GET /api-ws/v1/inference HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{keyed.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {HOSTILE_KEY}\r\nAuthorization: Bearer {GOOD_KEY}\r\n\r\n"
    ).encode())
    [r] = parse_responses(raw)
    assert_error(r, 400, "InvalidParameter", "Authorization")
    still_beside(neighbour)


def test_expire_in_seconds_superscript_digit(keyed, neighbour):
    r = request(keyed.port, "POST", "/api/v1/tokens?expire_in_seconds=%C2%B2",
                [bearer(HOSTILE_KEY)])
    assert_error(r, 400, "InvalidParameter", "expire_in_seconds", "integer from 1 to 1800")
    still_beside(neighbour)


def test_vocabulary_text_with_lone_surrogate(keyed, neighbour):
    body = (b'{"model": "speech-biasing", "input": {"action": "create_vocabulary", '
            b'"target_model": "fun-asr-realtime", "prefix": "bad", '
            b'"vocabulary": [{"text": "x\\ud800", "weight": 4, "lang": "en"}]}}')
    r = post_vocab(keyed.port, HOSTILE_KEY, body)
    assert_error(r, 400, "InvalidParameter", "lone UTF-16 surrogate")
    still_beside(neighbour)


def test_vocabulary_body_nested_100k_deep(keyed, neighbour):
    body = b"[" * 100_000 + b"]" * 100_000
    r = post_vocab(keyed.port, HOSTILE_KEY, body)
    assert_error(r, 400, "InvalidParameter", "nested too deeply")
    still_beside(neighbour)


def test_vocabulary_page_index_10_17(keyed, neighbour):
    r = post_vocab(keyed.port, HOSTILE_KEY, vocab_body("list_vocabulary", page_index=10**17))
    assert_error(r, 400, "InvalidParameter", "page_index must be an integer from 0 to")
    still_beside(neighbour)


def test_pipelined_healthz_requests(keyed, neighbour):
    one = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{keyed.port}\r\n\r\n"
    responses = parse_responses(exchange(keyed.port, (one + one).encode()))
    # the first is answered; the second is answered too, or refused cleanly: the first says
    # Connection: close and the server closes the connection (exchange read to EOF)
    assert responses and responses[0].status == 200 and responses[0].body == b"ok\n"
    assert len(responses) == 2 or responses[0].header("Connection") == "close"
    assert all(r.status == 200 for r in responses)
    still_beside(neighbour)


def test_head_metrics_has_no_body(keyed, neighbour):
    get = request(keyed.port, "GET", "/metrics")
    head = request(keyed.port, "HEAD", "/metrics")
    assert get.status == head.status == 200 and get.body
    assert head.body == b""
    assert int(head.header("Content-Length")) > 0
    still_beside(neighbour)


# --- keyed server: quotas --------------------------------------------------------------------


def test_token_quota_is_per_key(keyed, neighbour):
    for _ in range(TOKENS_PER_KEY):
        assert request(keyed.port, "POST", "/api/v1/tokens", [bearer(HOSTILE_KEY)]).status == 200
    r = request(keyed.port, "POST", "/api/v1/tokens", [bearer(HOSTILE_KEY)])
    assert_error(r, 429, "Throttling", "CALLSCRIBE_TOKEN_MAX_PER_KEY")
    # the other key still gets its tokens
    ok = request(keyed.port, "POST", "/api/v1/tokens", [bearer(GOOD_KEY)])
    assert ok.status == 200 and ok.json()["token"].startswith("st-")
    still_beside(neighbour)


def test_vocabulary_quota_bytes(keyed, neighbour):
    def create(key, tag):
        return post_vocab(keyed.port, key, vocab_body(
            "create_vocabulary", target_model="fun-asr-realtime", prefix="big",
            vocabulary=big_vocabulary(tag)))

    assert create(HOSTILE_KEY, "a").status == 200
    assert create(HOSTILE_KEY, "b").status == 200
    assert_error(create(HOSTILE_KEY, "c"), 403, "VocabularyQuotaExceeded",
                 "CALLSCRIBE_VOCABULARY_MAX_BYTES_PER_KEY")
    assert create(GOOD_KEY, "a").status == 200  # another key's quota is its own
    still_beside(neighbour)


def test_vocabulary_quota_count(keyed, neighbour):
    def create():
        return post_vocab(keyed.port, HOSTILE_2, vocab_body(
            "create_vocabulary", target_model="fun-asr-realtime", prefix="small",
            vocabulary=[{"text": uuid.uuid4().hex[:8], "weight": 4}]))

    for _ in range(VOCABS_PER_KEY):
        assert create().status == 200
    assert_error(create(), 403, "VocabularyQuotaExceeded", "CALLSCRIBE_VOCABULARY_MAX_PER_KEY")
    still_beside(neighbour)


def test_zz_keyed_neighbour_undisturbed(neighbour, baseline):
    neighbour.join().check(baseline)


# --- no-key (loopback) mode ------------------------------------------------------------------


def test_dns_rebinding_handshake_refused(open_gw, open_neighbour):
    evil = f"evil.example:{open_gw.port}"
    raw = exchange(open_gw.port, (
        f"GET /api-ws/v1/inference HTTP/1.1\r\nHost: {evil}\r\nOrigin: http://{evil}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    [r] = parse_responses(raw)
    assert_error(r, 403, "Forbidden", "is not a loopback name")
    still_beside(open_neighbour)


def test_loopback_host_names_accepted(open_gw, open_neighbour):
    for host in (f"localhost:{open_gw.port}", f"127.0.0.2:{open_gw.port}",
                 f"[::1]:{open_gw.port}"):
        r = request(open_gw.port, "GET", "/api/v1/auth-info", host=host)
        assert r.status == 200 and r.json()["api_key_required"] is False, (host, r)
    still_beside(open_neighbour)


def test_cross_site_text_plain_vocabulary_post_refused(open_gw, open_neighbour):
    body = vocab_body("create_vocabulary", target_model="fun-asr-realtime", prefix="evil",
                      vocabulary=[{"text": "pwned", "weight": 5}])
    r = request(open_gw.port, "POST", VOCAB_PATH,
                [("Content-Type", "text/plain"), ("Origin", "http://evil.example")], body)
    assert_error(r, 403, "Forbidden", "another site")
    listed = post_vocab(open_gw.port, None, vocab_body("list_vocabulary", prefix="evil"))
    assert listed.status == 200 and listed.json()["output"]["vocabulary_list"] == []
    still_beside(open_neighbour)


def test_non_loopback_host_refused_on_http(open_gw, open_neighbour):
    r = request(open_gw.port, "GET", "/api/v1/auth-info", host=f"evil.example:{open_gw.port}")
    assert_error(r, 403, "Forbidden", "loopback")
    still_beside(open_neighbour)


def test_zz_open_neighbour_undisturbed(open_neighbour, baseline):
    open_neighbour.join().check(baseline)


def test_hotword_spec_with_superscript_weight_is_text():
    """Same class as ``expire_in_seconds=²``, in the command line's ``text[:weight]`` specs
    (``str.isdigit`` accepts "²", ``int`` refuses it): not a weight, so part of the text."""
    from callscribe.recognition.vocabulary import load_hotwords

    [w] = load_hotwords(None, ["Dashwood:²"])
    assert (w.text, w.weight) == ("Dashwood:²", 4)
    [w] = load_hotwords(None, ["Dashwood:5"])
    assert (w.text, w.weight) == ("Dashwood", 5)
