"""Kafka topics of the pipeline, client connection settings, ``ensure_topics`` (only
``callscribe topics create`` calls it) and ``check_topics`` (what everything else calls).

Topics (names and partition counts are settings, ``CALLSCRIBE_KAFKA_*``):

- audio (AudioChunk, producer -> worker), keyed by call_id: all channels of a call meet in
  one partition, in order;
- transcripts (final TranscriptEvent, then the CallSummary of the call), keyed by call_id;
- partials (partial TranscriptEvent for live views, optional), keyed by call_id;
- dead letters (DeadLetter: what a consumer could not read, and why), keyed like the input.

:func:`client_kwargs` turns the security settings (TLS, SASL PLAIN/SCRAM) into the keyword
arguments every aiokafka client (producer, consumer, admin) takes, so they are set up in one
place.  :class:`BrokerUnavailable` is the error every Kafka operation raises when the broker
does not answer within its deadline; :func:`abort_producer` closes a producer without waiting
for a broker that is gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from callscribe.errors import CallscribeError, ConfigurationError
from callscribe.settings import Settings

log = structlog.get_logger(__name__)

#: the longest single wait between two retries
MAX_BACKOFF_S = 5.0


class BrokerUnavailable(CallscribeError):
    """Kafka did not answer (or acknowledge) within the deadline; retrying later may work."""

    code = "BrokerUnavailable"
    retriable = True


@dataclass(frozen=True, slots=True)
class TopicSpec:
    #: role of the topic in the pipeline: audio, transcripts, partials, dead_letters,
    #: analytics, clear_transcripts
    role: str
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> dict[str, TopicSpec]:
    """The pipeline's topics by role; partials only when ``kafka_partials_enabled``."""
    rf = settings.kafka_replication_factor
    specs = [
        TopicSpec("audio", settings.kafka_topic_audio, settings.kafka_audio_partitions, rf,
                  {"retention.ms": str(settings.kafka_audio_retention_ms)}),
        TopicSpec("transcripts", settings.kafka_topic_transcripts,
                  settings.kafka_transcripts_partitions, rf),
        TopicSpec("dead_letters", settings.kafka_topic_dead_letters,
                  settings.kafka_dead_letters_partitions, rf),
    ]
    if settings.kafka_partials_enabled:
        specs.insert(2, TopicSpec("partials", settings.kafka_topic_partials,
                                  settings.kafka_partials_partitions, rf))
    # analytics: category events; unredacted finals only when a topic is named for them
    specs.append(TopicSpec("analytics", settings.kafka_topic_analytics,
                           settings.kafka_transcripts_partitions, rf))
    if settings.kafka_topic_clear_transcripts:
        specs.append(TopicSpec("clear_transcripts", settings.kafka_topic_clear_transcripts,
                               settings.kafka_transcripts_partitions, rf))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"CALLSCRIBE_KAFKA_TOPIC_*: two roles share a topic name "
                                 f"({names})")
    return {s.role: s for s in specs}


def client_kwargs(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """bootstrap_servers, security_protocol, ssl_context and SASL arguments for aiokafka."""
    proto = settings.kafka_security_protocol
    servers = [s.strip() for s in (bootstrap or settings.kafka_bootstrap).split(",") if s.strip()]
    if not servers:
        raise ConfigurationError("CALLSCRIBE_KAFKA_BOOTSTRAP is empty: give host:port[,host:port]")
    kw: dict[str, Any] = {"bootstrap_servers": servers, "security_protocol": proto}
    tls_files = {"CALLSCRIBE_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
                 "CALLSCRIBE_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
                 "CALLSCRIBE_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile}
    if proto in ("SSL", "SASL_SSL"):
        for name, path in tls_files.items():
            if path is not None and not path.is_file():
                raise ConfigurationError(f"{name}: {path} is not a file")
        if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
            raise ConfigurationError("CALLSCRIBE_KAFKA_SSL_CERTFILE and "
                                     "CALLSCRIBE_KAFKA_SSL_KEYFILE go together (mutual TLS): "
                                     "set both or neither")
        from aiokafka.helpers import create_ssl_context
        try:
            ctx = create_ssl_context(
                cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
                certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
                keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
                password=settings.kafka_ssl_key_password or None)
        except Exception as exc:  # ssl.SSLError, OSError
            raise ConfigurationError(f"CALLSCRIBE_KAFKA_SSL_*: cannot set up TLS: {exc}") from None
        ctx.check_hostname = settings.kafka_ssl_check_hostname
        kw["ssl_context"] = ctx
    else:
        given = [name for name, path in tls_files.items() if path is not None]
        if given:
            raise ConfigurationError(f"{', '.join(given)} set but "
                                     f"CALLSCRIBE_KAFKA_SECURITY_PROTOCOL is {proto}: use SSL "
                                     "or SASL_SSL for TLS")
    if proto.startswith("SASL_"):
        if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
            raise ConfigurationError(f"CALLSCRIBE_KAFKA_SECURITY_PROTOCOL={proto} needs "
                                     "CALLSCRIBE_KAFKA_SASL_USERNAME and "
                                     "CALLSCRIBE_KAFKA_SASL_PASSWORD")
        kw.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                  sasl_plain_username=settings.kafka_sasl_username,
                  sasl_plain_password=settings.kafka_sasl_password)
    return kw


def describe_bootstrap(kw: dict[str, Any]) -> str:
    return ",".join(kw["bootstrap_servers"])


async def raise_if_refused(kw: dict[str, Any], timeout: float) -> None:
    """After a failed bootstrap: connect once by hand to learn why, and turn a refusal that
    waiting will not cure (bad SASL credentials or mechanism, a TLS certificate that does not
    verify) into a ConfigurationError now instead of BrokerUnavailable at the deadline.
    aiokafka's bootstrap only says "Unable to bootstrap"."""
    import ssl

    from aiokafka.conn import create_conn

    host, _, port = kw["bootstrap_servers"][0].rpartition(":")
    conn_kw = {k: v for k, v in kw.items() if k != "bootstrap_servers"}
    try:
        conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port or 9092),
                                                  request_timeout_ms=int(timeout * 1000),
                                                  **conn_kw), max(0.1, timeout))
        conn.close()
    except (KafkaError, ssl.SSLError) as exc:
        if isinstance(exc, ssl.SSLError) or not getattr(exc, "retriable", False):
            raise ConfigurationError(
                f"Kafka at {describe_bootstrap(kw)} refused the connection: {exc!r}; check "
                "CALLSCRIBE_KAFKA_SECURITY_PROTOCOL and the CALLSCRIBE_KAFKA_SASL_* / "
                "CALLSCRIBE_KAFKA_SSL_* settings") from None
    except (OSError, ValueError):  # not reachable (yet): the caller keeps retrying
        pass


def is_retriable(exc: BaseException) -> bool:
    """A Kafka error worth retrying (connection lost, no leader yet, timeout, ...)."""
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)) or isinstance(
        exc, OSError)  # connection refused/reset, timeouts


class TopicsMissing(ConfigurationError):
    """A pipeline topic does not exist; ``callscribe topics create`` makes it."""

    code = "TopicsMissing"


async def ensure_topics(bootstrap: str | None, settings: Settings, *,
                        deadline_s: float | None = None) -> dict[str, str]:
    """Create the pipeline's missing topics; return ``{name: "created" | "exists"}``.

    Only ``callscribe topics create`` calls this (one place owns topic creation); the
    producer, the worker and ``serve --kafka`` call :func:`check_topics`.  An existing topic
    is never altered; one with a different partition count than the settings is logged
    (changing partitions on a live topic would move calls between partitions).  Retriable
    errors are retried with backoff; after ``deadline_s`` (default ``kafka_deadline_s``) it
    raises :class:`BrokerUnavailable`.
    """
    specs = list(topic_specs(settings).values())
    return await _with_admin(bootstrap, settings, deadline_s,
                             lambda admin, remaining: _ensure(admin, specs, remaining),
                             "creating topics")


async def check_topics(bootstrap: str | None, settings: Settings, *,
                       deadline_s: float | None = None,
                       roles: tuple[str, ...] | None = None) -> dict[str, str]:
    """Check that the pipeline's topics (of ``roles``, default all) exist; return
    ``{name: "exists"}`` or raise :class:`TopicsMissing` naming them and the command that
    creates them.  Never creates anything (the admin client's listing does not auto-create)."""
    specs = [s for s in topic_specs(settings).values() if roles is None or s.role in roles]

    async def check(admin: AIOKafkaAdminClient, remaining: float) -> dict[str, str]:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [s.name for s in specs if s.name not in existing]
        if missing:
            raise TopicsMissing(
                f"Kafka topic{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"{'do' if len(missing) > 1 else 'does'} not exist at "
                f"{describe_bootstrap(client_kwargs(settings, bootstrap))}: create the "
                "pipeline's topics with `callscribe topics create` (same CALLSCRIBE_KAFKA_* "
                "settings), or your own tooling (`scripts/kafka.sh topics --create ...`)")
        return {s.name: "exists" for s in specs}

    return await _with_admin(bootstrap, settings, deadline_s, check, "checking topics")


async def _with_admin(bootstrap: str | None, settings: Settings, deadline_s: float | None,
                      run: Any, what: str) -> Any:
    """``run(admin, remaining)`` with a fresh admin client, retried on retriable errors."""
    deadline_s = settings.kafka_deadline_s if deadline_s is None else deadline_s
    kw = client_kwargs(settings, bootstrap)
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    backoff = settings.kafka_retry_backoff_ms / 1000
    last: BaseException | None = None
    while True:
        remaining = end - loop.time()
        if remaining <= 0:
            break
        admin = AIOKafkaAdminClient(**kw, client_id=f"{settings.kafka_client_id}-admin",
                                    request_timeout_ms=max(1000, int(remaining * 1000)),
                                    retry_backoff_ms=settings.kafka_retry_backoff_ms)
        try:
            return await asyncio.wait_for(run(admin, remaining), remaining)
        except (KafkaError, OSError) as exc:  # OSError includes TimeoutError
            if not is_retriable(exc):
                raise ConfigurationError(f"Kafka refused {what}: {exc!r}") from None
            last = exc
            if isinstance(exc, KafkaConnectionError):
                await raise_if_refused(kw, min(5.0, max(0.1, end - loop.time())))
        finally:
            try:
                await asyncio.wait_for(admin.close(), 5)
            except Exception:  # closing a half-open client must not hide the real error
                pass
        await asyncio.sleep(min(backoff, max(0.0, end - loop.time())))
        backoff = min(backoff * 2, MAX_BACKOFF_S)
    raise BrokerUnavailable(
        f"Kafka at {describe_bootstrap(kw)} did not answer within {deadline_s:g} s while {what} "
        f"(last error: {last!r}); is the broker running and reachable?")


async def _ensure(admin: AIOKafkaAdminClient, specs: list[TopicSpec],
                  remaining: float) -> dict[str, str]:
    await admin.start()
    existing = set(await admin.list_topics())
    result = {s.name: "exists" for s in specs if s.name in existing}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        resp = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs)
             for s in missing], timeout_ms=max(1000, int(remaining * 1000)))
        for entry in resp.topic_errors:
            name, code = entry[0], entry[1]
            if code == 0:
                result[name] = "created"
                log.info("kafka topic created", topic=name)
                continue
            err = for_code(code)
            if err is TopicAlreadyExistsError:  # another process won the race
                result[name] = "exists"
                continue
            message = entry[2] if len(entry) > 2 and entry[2] else err.__name__
            raise err(f"create topic {name}: {message}")
    if existing:
        for t in await admin.describe_topics([s.name for s in specs if s.name in existing]):
            spec = next((s for s in specs if s.name == t["topic"]), None)
            if spec is not None and t.get("error_code", 0) == 0 \
                    and len(t["partitions"]) != spec.partitions:
                log.warning("kafka topic partition count differs from the settings; not "
                            "changing it", topic=spec.name, partitions=len(t["partitions"]),
                            configured=spec.partitions)
    return result


# --- closing a producer whose broker is gone --------------------------------------------


async def abort_producer(producer: AIOKafkaProducer, exc: BaseException) -> None:
    """Drop what is not acknowledged so that closing does not wait for a broker that is gone.

    With idempotence aiokafka retries a batch forever and ``stop()`` waits for all of them.
    This reaches into aiokafka 0.14's sender and accumulator (every step optional): stop the
    sender, fail the queued batches, and mark their futures' exceptions as seen.
    """
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=5)
    acc = getattr(producer, "_message_accumulator", None)
    if acc is None or not hasattr(acc, "fail_all"):
        return
    batches = [b for q in getattr(acc, "_batches", {}).values() for b in q]
    batches += list(getattr(acc, "_pending_batches", ()))
    # a batch re-queued after a failed request has already left _pending_batches, and its
    # done-callback removes it again (KeyError in a callback): let that removal be a no-op
    if isinstance(getattr(acc, "_pending_batches", None), set):
        acc._pending_batches = _DiscardSet(acc._pending_batches)
    try:
        acc.fail_all(exc)
    except Exception:  # pragma: no cover - a changed aiokafka; stop() is bounded anyway
        return
    for b in batches:
        mark_seen(getattr(b, "_drain_waiter", None))
        for fut, _ in getattr(b, "_msg_futures", ()):
            mark_seen(fut)


class _DiscardSet(set):
    def remove(self, item: Any) -> None:
        self.discard(item)


def mark_seen(fut: asyncio.Future | None) -> None:
    """Retrieve a finished future's exception so asyncio does not report it as lost."""
    if fut is not None and fut.done() and not fut.cancelled():
        fut.exception()


async def close_quietly(producer: AIOKafkaProducer, timeout: float = 10.0) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception as exc:  # a close that fails must not hide the error that led here
        log.warning("kafka producer did not close cleanly", error=repr(exc))


async def wait_for_group_coordinator(bootstrap: str | None, settings: Settings, group: str, *,
                                     deadline_s: float | None = None) -> int:
    """Wait until the broker names the group's coordinator (on a fresh cluster it appears
    only once ``__consumer_offsets`` exists); the coordinator's broker id.  The worker waits
    for this before joining the group, instead of logging the consumer's retries as errors."""

    async def find(admin: AIOKafkaAdminClient, remaining: float) -> int:
        await admin.start()
        return await admin.find_coordinator(group)

    return await _with_admin(bootstrap, settings, deadline_s, find,
                             f"looking for the coordinator of group {group}")


#: what aiokafka logs at WARNING/ERROR while a fresh cluster or topic is still settling (a
#: coordinator or a partition leader being elected); the clients retry on their own
TRANSIENT_KAFKA_MESSAGES = ("GroupCoordinatorNotAvailable", "NotLeaderForPartition",
                            "NotCoordinatorForGroup", "LeaderNotAvailable",
                            "CoordinatorLoadInProgress", "Marking the coordinator dead")


class TransientKafkaErrors:
    """A logging filter: aiokafka's and faust's reports of the transient states above are
    lowered to INFO (the clients retry them; a healthy start passes through them).  Anything
    that lasts shows up elsewhere: no partitions assigned, the commit or idle warnings."""

    def filter(self, record: Any) -> bool:
        import logging

        if record.levelno >= logging.WARNING and record.name.startswith(("aiokafka", "faust")):
            try:
                text = record.getMessage()
            except Exception:  # a broken format string: leave the record alone
                return True
            if any(t in text for t in TRANSIENT_KAFKA_MESSAGES):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def lower_transient_kafka_errors() -> None:
    """Install :class:`TransientKafkaErrors` on the root logger's handlers."""
    import logging

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, TransientKafkaErrors) for f in handler.filters):
            handler.addFilter(TransientKafkaErrors())
