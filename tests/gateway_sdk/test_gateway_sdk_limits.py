"""Auth, admission limits and the HTTP endpoints of ``callscribe serve``: 401 for a bad key,
503 at the handshake past the session limits, loopback only without keys, /healthz /readyz
/metrics."""

from __future__ import annotations

import re

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from sdkutil import KEY, call
from serverutil import start_gateway
from waiting import wait_until
from callscribe.errors import ConfigurationError
from callscribe.gateway.server import Gateway
from callscribe.recognition.vocabulary import VocabularyStore
from callscribe.settings import load_settings

# --- auth, admission, HTTP endpoints ------------------------------------------------------------


def test_bad_or_missing_key_is_401(sdk, server, shared_audio, monkeypatch):
    monkeypatch.setattr(sdk, "api_key", "sk-wrong")
    _, result = call("fun-asr-realtime", "wav", 16000, shared_audio / "en_ldc93s1_16k.wav")
    assert result.status_code == 401
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY}"}):
        with pytest.raises(InvalidStatus) as err:
            connect(server.ws_url, additional_headers=headers, open_timeout=5)
        assert err.value.response.status_code == 401
    # scheme is case-insensitive
    with connect(server.ws_url, additional_headers={"Authorization": f"bearer {KEY}"}):
        pass


def test_session_limits_are_503_at_the_handshake(loop_thread, model_runtime, tmp_path):
    settings = load_settings(api_keys="k1,k2,k3", max_sessions=2, max_sessions_per_key=1,
                             vocabulary_db=tmp_path / "v.sqlite3")
    gw = loop_thread.run(start_gateway(settings, model_runtime))
    url = f"ws://127.0.0.1:{gw.port}/api-ws/v1/inference"

    def open_(key):
        return connect(url, additional_headers={"Authorization": f"Bearer {key}"})

    def refused(key) -> bytes:
        with pytest.raises(InvalidStatus) as err:
            open_(key)
        assert err.value.response.status_code == 503
        return err.value.response.body
    try:
        with open_("k2"):
            with open_("k1"):
                assert b"too many sessions for this API key" in refused("k1")
                assert b"server busy" in refused("k3")
            # the slot frees when the TCP connection is gone
            wait_until(lambda: gw.admission.active < 2, 30, "k1's session slot freed",
                       every=0.05)
            with open_("k3"):
                pass
    finally:
        loop_thread.run(gw.shutdown(0))


def test_no_keys_means_loopback_only(tmp_path):
    settings = load_settings(api_keys="", vocabulary_db=tmp_path / "v.sqlite3")
    with pytest.raises(ConfigurationError, match="refusing to listen on 0.0.0.0 without API keys"):
        Gateway(settings, vocabulary=VocabularyStore(":memory:"), host="0.0.0.0", port=0)
    Gateway(settings, vocabulary=VocabularyStore(":memory:"), host="127.0.0.1", port=0)
    Gateway(settings, vocabulary=VocabularyStore(":memory:"), host="::1", port=0)


def test_health_ready_metrics(sdk, server, shared_audio):
    import requests
    base = f"http://127.0.0.1:{server.port}"
    assert requests.get(base + "/healthz", timeout=5).text == "ok\n"
    assert requests.get(base + "/readyz", timeout=5).status_code == 200
    assert requests.get(base + "/nope", timeout=5).status_code == 404
    call("fun-asr-realtime", "pcm", 16000, shared_audio / "en_ps_goforward.raw")
    m = requests.get(base + "/metrics", timeout=5)
    assert m.status_code == 200 and m.headers["Content-Type"].startswith("text/plain")
    assert "callscribe_task_first_package_delay_milliseconds_bucket" in m.text
    assert "callscribe_task_last_package_delay_milliseconds_count" in m.text
    assert re.search(r'callscribe_tasks_total\{[^}]*outcome="finished"', m.text)
    # the recognition layer's histograms are filled by the same real session (in the worker
    # process with --kafka: its own /metrics, see test_worker.py)
    for name in () if server.kafka else ("callscribe_final_latency_milliseconds_count",
                 'callscribe_decode_duration_milliseconds_count{kind="final"',
                 "callscribe_realtime_factor_count"):
        found = re.search(re.escape(name) + r'[^\n]* (\d+(\.\d+)?)\n', m.text)
        assert found and float(found.group(1)) > 0, name
    assert server.kafka or "callscribe_recognition_queue_depth_milliseconds" in m.text
    # the gateway's Kafka hop (worker -> gateway) in 1 ms buckets at the low end, where hops
    # fall (the latency buckets would put every hop in 0-25 ms)
    if server.kafka:
        found = re.search(r'callscribe_kafka_hop_worker_to_gateway_milliseconds_bucket'
                          r'\{le="5"[^}]*\} (\d+(\.\d+)?)\n', m.text)
        assert found, "no 5 ms bucket on the worker -> gateway hop histogram"


