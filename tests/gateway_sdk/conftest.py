"""Fixtures of the SDK end-to-end tests: the official ``dashscope`` SDK, unchanged, against
``callscribe serve``.

One real server (one model load; with ``[kafka]`` one broker and one worker subprocess) runs on
a free port in a background event-loop thread for all the modules of this folder (package
scope); the SDK is pointed at it exactly as the README says.  Helpers: tests/sdkutil.py.
"""

from __future__ import annotations

import pytest

from kafka_broker import make_kafka_fixture
from sdkutil import KAFKA, KEY, LOCAL, OTHER_KEY, Srv
from serverutil import LoopThread, start_gateway
from callscribe.settings import load_settings
from callscribe.telemetry import configure_telemetry


@pytest.fixture(scope="package")
def loop_thread():
    """The event loop the package's server runs on (package scope, as the server)."""
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture(scope="package")
def model_runtime(shared_audio):
    from callscribe.recognition.runtime import Runtime
    rt = Runtime.create(load_settings())
    yield rt
    rt.close()


#: its own broker for the ``[kafka]`` variant of the tests of this folder
kafka_sdk_broker = make_kafka_fixture(scope="package", name="kafka_sdk_broker")


@pytest.fixture(scope="package", params=[LOCAL, KAFKA])
def server(request, loop_thread, tmp_path_factory):
    """The gateway with the model in process (``local``), or as ``serve --kafka`` runs it
    (``kafka``): a real broker, a ``callscribe worker`` subprocess doing the recognition and
    the gateway's KafkaPipeline in place of the runtime."""
    configure_telemetry()
    keys = dict(api_keys=f"{KEY},{OTHER_KEY}",
                vocabulary_db=tmp_path_factory.mktemp("gw") / "vocab.sqlite3")
    worker = None
    if request.param == "local":
        settings = load_settings(**keys)
        runtime = request.getfixturevalue("model_runtime")
    else:
        from pipeline_helpers import WorkerProcess, pipeline_settings

        from callscribe.pipeline.kafka_stream import KafkaPipeline
        broker = request.getfixturevalue("kafka_sdk_broker")
        from callscribe.pipeline.topics import ensure_topics
        settings = pipeline_settings(broker.bootstrap, partitions=2, **keys)
        loop_thread.run(ensure_topics(None, settings))  # `callscribe topics create`
        runtime = KafkaPipeline(settings)
        loop_thread.run(runtime.start())
        worker = WorkerProcess(settings, tmp_path_factory.mktemp("worker") / "worker.log")
        worker.start().wait_assigned()
    gw = loop_thread.run(start_gateway(settings, runtime, open_timeout=2.0))
    srv = Srv(gw)
    srv.kafka = worker is not None
    srv.settings = settings
    yield srv
    loop_thread.run(gw.shutdown(0))
    if worker is not None:
        loop_thread.run(runtime.aclose())
        assert worker.stop() == 0, worker.tail()


@pytest.fixture
def sdk(server, monkeypatch):
    """The legacy SDK pointed at the server (env vars as documented, plus the module globals
    in case dashscope was imported before the env was set)."""
    import dashscope
    monkeypatch.setenv("DASHSCOPE_WEBSOCKET_BASE_URL", server.ws_url)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.http_url)
    monkeypatch.setattr(dashscope, "base_websocket_api_url", server.ws_url)
    monkeypatch.setattr(dashscope, "base_http_api_url", server.http_url)
    monkeypatch.setattr(dashscope, "api_key", KEY)
    return dashscope

