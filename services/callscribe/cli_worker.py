"""``callscribe worker``: recognise the calls on the audio topic (the Kafka pipeline worker).

    callscribe worker                                   # CALLSCRIBE_KAFKA_* settings
    callscribe worker --bootstrap kafka:9092 --metrics-port 9464

Run as many as the audio topic has partitions; they share the consumer group
``CALLSCRIBE_KAFKA_WORKER_GROUP`` and split the calls.  Finals and call summaries go to the
transcripts topic, partials to the partials topic, unreadable records to the dead-letter
topic.  The topics must exist (``callscribe topics create``; the worker only checks and
stops with a message naming the missing one).  SIGTERM (or SIGINT) commits what is safe and
stops; SIGKILL loses nothing either: another worker replays from the last commit.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import structlog

from callscribe.settings import Settings

log = structlog.get_logger("callscribe.worker")


def add_worker_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "worker", help="run a Kafka pipeline worker (audio topic -> transcripts topic)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT[,...]",
                   help="Kafka bootstrap servers (default CALLSCRIBE_KAFKA_BOOTSTRAP)")
    p.add_argument("--group", default=None,
                   help="consumer group / faust app id (default CALLSCRIBE_KAFKA_WORKER_GROUP)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="Prometheus /metrics port (default CALLSCRIBE_METRICS_PORT, 9464; 0: "
                        "any free port; -1: none)")
    p.add_argument("--metrics-host", default=None,
                   help="address of /metrics (default CALLSCRIBE_HOST, 127.0.0.1)")
    p.add_argument("--no-create-topics", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_worker)
    return p


def start_metrics_server(settings: Settings, host: str, port: int) -> int | None:
    """Set up telemetry (metrics; OTLP traces when configured) and serve the metrics as
    Prometheus text on a thread unless ``port`` < 0; the bound port."""
    from prometheus_client import start_http_server

    from callscribe.telemetry import configure_telemetry

    registry = configure_telemetry("callscribe-worker", otlp_endpoint=settings.otlp_endpoint)
    if port < 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])


async def _partitions(settings: Settings, bootstrap: str | None) -> int:
    """Check the topics exist (TopicsMissing otherwise); the audio topic's partition count."""
    from callscribe.pipeline.kafka_stream import topic_partitions
    from callscribe.pipeline.topics import check_topics, wait_for_group_coordinator

    await check_topics(bootstrap, settings)
    await wait_for_group_coordinator(bootstrap, settings, settings.kafka_worker_group)
    topic = settings.kafka_topic_audio
    return (await topic_partitions(settings, bootstrap, [topic]))[topic]


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from callscribe.pipeline.worker import PipelineWorker
    from callscribe.recognition.runtime import Runtime

    updates = {}
    if args.group:
        updates["kafka_worker_group"] = args.group
    if updates:
        settings = settings.model_copy(update=updates)
    from callscribe.pipeline.topics import lower_transient_kafka_errors

    lower_transient_kafka_errors()
    host = args.metrics_host or settings.host
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    bound = start_metrics_server(settings, host, port)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    partitions = loop.run_until_complete(
        _partitions(settings, args.bootstrap))
    runtime = Runtime.create(settings)
    worker = PipelineWorker(settings, runtime, partitions=partitions, bootstrap=args.bootstrap)
    loop.run_until_complete(worker.producer.start())
    log.info("worker starting", group=settings.kafka_worker_group,
             topic=settings.kafka_topic_audio, partitions=partitions,
             metrics=f"http://{host}:{bound}/metrics" if bound else None)
    fw = faust.Worker(worker.app, loop=loop, loglevel=settings.log_level.upper(), quiet=True,
                      redirect_stdouts=False, override_logging=False)
    fw.spinner = None
    try:
        fw.execute_from_commandline()  # runs until SIGTERM/SIGINT; exits the process
    finally:
        runtime.close()
    return 0
