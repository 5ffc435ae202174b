"""``callscribe serve``: the DashScope-compatible streaming service in one asyncio process."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any, Callable

import structlog

from callscribe.errors import CallscribeError
from callscribe.settings import Settings

log = structlog.get_logger("callscribe.serve")


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="run the DashScope-compatible real-time recognition service",
        description="Serve /api-ws/v1/inference (run-task protocol), /api-ws/v1/realtime "
                    "(Qwen-ASR realtime protocol), the vocabulary API, /healthz, /readyz, "
                    "/metrics, the live captions page at / and its WebSocket tokens "
                    "(/api/v1/tokens) on one port.")
    p.add_argument("--host", default=None,
                   help="address to listen on (default CALLSCRIBE_HOST, 127.0.0.1); anything "
                        "but loopback needs CALLSCRIBE_API_KEYS")
    p.add_argument("--port", type=int, default=None,
                   help="port (default CALLSCRIBE_PORT, 8080; 0 picks a free port)")
    p.add_argument("--drain-seconds", type=float, default=10.0, metavar="S",
                   help="on SIGTERM, how long running tasks and realtime sessions may "
                        "continue before the server ends them (default 10)")
    p.add_argument("--open-timeout", type=float, default=10.0, metavar="S",
                   help="a client must finish the HTTP/WebSocket handshake within this time")
    p.add_argument("--kafka", default=None, metavar="BOOTSTRAP",
                   help="serve over the Kafka pipeline: sessions' audio goes to the audio "
                        "topic at BOOTSTRAP (host:port[,...]) and `callscribe worker` "
                        "processes recognise it; no model is loaded here")
    p.set_defaults(func=run_serve)
    return p


def run_serve(args: argparse.Namespace, settings: Settings, *,
              runtime_factory: Callable[[Settings], Any] | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the exit status."""
    return asyncio.run(serve_main(args, settings, runtime_factory=runtime_factory))


def _default_runtime(settings: Settings) -> Any:
    from callscribe.recognition.runtime import Runtime
    return Runtime.create(settings)


async def _kafka_runtime(settings: Settings, bootstrap: str) -> Any:
    from callscribe.pipeline.kafka_stream import KafkaPipeline
    from callscribe.pipeline.topics import lower_transient_kafka_errors

    lower_transient_kafka_errors()
    pipeline = KafkaPipeline(settings, bootstrap)
    await pipeline.start()
    return pipeline


async def serve_main(args: argparse.Namespace, settings: Settings, *,
                     runtime_factory: Callable[[Settings], Any] | None = None,
                     stop: asyncio.Event | None = None) -> int:
    from callscribe.gateway.server import Gateway
    from callscribe.recognition.vocabulary import VocabularyStore
    from callscribe.telemetry import configure_telemetry

    configure_telemetry(otlp_endpoint=settings.otlp_endpoint)
    store = VocabularyStore(settings.vocabulary_db)
    gw = Gateway(settings, vocabulary=store, host=getattr(args, "host", None),
                 port=getattr(args, "port", None),
                 open_timeout=getattr(args, "open_timeout", 10.0))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gw.start()
    # the model loads after the port is bound: /healthz answers, /readyz says 503 meanwhile
    kafka = getattr(args, "kafka", None)
    if kafka:  # serve --kafka: the pipeline stands in for the runtime (no model here)
        load = asyncio.create_task(_kafka_runtime(settings, kafka))
    else:
        load = asyncio.create_task(asyncio.to_thread(runtime_factory or _default_runtime,
                                                     settings))
    stopped = asyncio.create_task(stop.wait())
    status = 0
    runtime = None
    await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if load.done():
        try:
            runtime = load.result()
        except CallscribeError as exc:
            log.error("recognition failed to start (model, or Kafka with --kafka)",
                      error_code=exc.code, error=exc.message)
            status = 2
            stop.set()
        else:
            gw.set_runtime(runtime)
            log.info("ready", url=f"ws://{gw.host}:{gw.port}/api-ws/v1/inference",
                     realtime_url=f"ws://{gw.host}:{gw.port}/api-ws/v1/realtime",
                     captions_page=f"http://{gw.host}:{gw.port}/")
    await stopped
    log.info("stop requested")
    await gw.shutdown(getattr(args, "drain_seconds", 10.0))
    if runtime is None and not load.done():
        try:
            runtime = await load
        except Exception:
            runtime = None
    if runtime is not None:
        if hasattr(runtime, "aclose"):  # the Kafka pipeline
            await runtime.aclose()
        else:
            runtime.close()
    store.close()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return status
