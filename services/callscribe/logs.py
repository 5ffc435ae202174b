"""structlog set-up for the process entry point: JSON in production, console on a terminal.

Library code only calls ``structlog.get_logger(__name__)`` and binds ``call_id`` / ``task_id``
/ ``channel`` / ``partition`` as context (``log.bind(...)``, or :func:`bound` for a block);
this module decides how lines are rendered.  Records from the standard ``logging`` module
(websockets, asyncio, libraries) go through the same renderer, at WARNING and above.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import structlog

from callscribe.settings import Settings


def _renderer(fmt: str) -> Any:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if fmt == "json":
        return structlog.processors.JSONRenderer(ensure_ascii=False)
    return structlog.dev.ConsoleRenderer(colors=False)


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.StackInfoRenderer(),
                    structlog.processors.format_exc_info, _renderer(settings.log_format)],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # third-party libraries (websockets logs every handshake at INFO): warnings and errors only
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("callscribe").setLevel(level)


@contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Bind ids (task_id, connection) to every log line in this block / asyncio task."""
    with structlog.contextvars.bound_contextvars(**ids):
        yield
