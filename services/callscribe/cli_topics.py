"""``callscribe topics``: the one place that creates the pipeline's topics.

    callscribe topics create      # create the missing topics from the CALLSCRIBE_KAFKA_* settings
    callscribe topics check       # exit 0 when they all exist, 2 naming the missing ones

The producer, the worker and ``serve --kafka`` only check that the topics exist (and stop
with a message naming the missing topic and this command), so partition counts, retention and
replication come from one set of settings, not from whichever process started first.
``create`` never alters an existing topic; a partition count that differs from the settings
is reported.  faust creates its own internal topics when a worker starts: the table's
changelog ``<group>-calls-changelog`` and the assignor's ``<group>-__assignor-__leader``.
Prints one JSON line, ``{topic: "created" | "exists"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from callscribe.settings import Settings


def add_topics_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "topics", help="create or check the Kafka pipeline's topics",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("create", "check"))
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT[,...]",
                   help="Kafka bootstrap servers (default CALLSCRIBE_KAFKA_BOOTSTRAP)")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help="seconds to wait for the broker (default CALLSCRIBE_KAFKA_DEADLINE_S)")
    p.set_defaults(func=run_topics)
    return p


def run_topics(args: argparse.Namespace, settings: Settings) -> int:
    from callscribe.pipeline.topics import check_topics, ensure_topics

    fn = ensure_topics if args.action == "create" else check_topics
    result = asyncio.run(fn(args.bootstrap, settings, deadline_s=args.deadline))
    print(json.dumps(result), flush=True)
    return 0
