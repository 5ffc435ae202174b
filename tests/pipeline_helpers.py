"""Helpers for the Kafka pipeline tests (a helper module, not a test file).

``pipeline_settings`` names a fresh set of topics and a consumer group; ``WorkerProcess`` runs
``python -m callscribe.cli worker`` as a real subprocess (so SIGKILL is real) with those
settings in its environment and reads its JSON log; ``read_results`` consumes the results
topics from the beginning until a condition holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from waiting import wait_until  # noqa: F401 (the tests import it from here too)
from callscribe.pipeline.codec import CallSummary, DeadLetter, TranscriptEvent, decode
from callscribe.settings import Settings, load_settings

#: settings a worker subprocess gets from the test's Settings (as CALLSCRIBE_<NAME>)
_FORWARD = ("kafka_bootstrap", "kafka_topic_audio", "kafka_topic_transcripts",
            "kafka_topic_partials", "kafka_topic_dead_letters", "kafka_audio_partitions",
            "kafka_transcripts_partitions", "kafka_partials_partitions",
            "kafka_partials_enabled", "kafka_worker_group", "kafka_worker_session_timeout_s",
            "kafka_worker_commit_interval_s", "kafka_worker_idle_timeout_s",
            "kafka_worker_max_inflight_audio_ms", "kafka_deadline_s", "decode_workers",
            "kafka_topic_analytics", "kafka_topic_clear_transcripts", "redact_entities",
            "redact_mode")


def pipeline_settings(bootstrap: str, partitions: int = 4, **kw: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    base: dict[str, Any] = dict(
        kafka_bootstrap=bootstrap, kafka_topic_audio=f"p-{tag}.audio",
        kafka_topic_transcripts=f"p-{tag}.transcripts", kafka_topic_partials=f"p-{tag}.partials",
        kafka_topic_dead_letters=f"p-{tag}.dead", kafka_audio_partitions=partitions,
        kafka_topic_analytics=f"p-{tag}.analytics",
        kafka_transcripts_partitions=partitions, kafka_partials_partitions=partitions,
        kafka_worker_group=f"p-{tag}-worker", kafka_worker_session_timeout_s=6.0,
        kafka_worker_commit_interval_s=0.5, kafka_deadline_s=60.0)
    base.update(kw)
    return load_settings(**base)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CALLSCRIBE_LOG_FORMAT": "json", "CALLSCRIBE_METRICS_PORT": "0"}
    for name in _FORWARD:
        env[f"CALLSCRIBE_{name.upper()}"] = str(getattr(settings, name))
    env.update(extra)
    return env


class WorkerProcess:
    """``callscribe worker`` in a subprocess; its JSON log lines in ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self.env = worker_env(settings, **env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "callscribe.cli", "worker"],
                                     env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def partitions(self) -> list[int] | None:
        """The audio partitions of its latest assignment (None before the first)."""
        got = [e["partitions"] for e in self.events()
               if e.get("event") == "audio partitions assigned"]
        return got[-1] if got else None

    def wait_assigned(self, timeout: float = 60, want: Callable[[list[int]], bool] = bool
                      ) -> list[int]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.alive:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
            parts = self.partitions()
            if parts is not None and want(parts):
                return parts
            time.sleep(0.2)
        raise AssertionError(f"worker got no partitions in {timeout} s:\n{self.tail()}")

    def metrics_url(self, timeout: float = 60) -> str:
        """The URL of its /metrics (logged at start: the port is chosen by the OS)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = [e["metrics"] for e in self.events()
                   if e.get("event") == "worker starting" and e.get("metrics")]
            if got:
                return got[-1]
            if not self.alive:
                raise AssertionError(f"worker exited:\n{self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"worker logged no metrics URL in {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


async def read_results(bootstrap: str, topics: list[str],
                       done: Callable[[list[tuple[str, Any]]], bool], timeout: float = 60,
                       *, headers: bool = False) -> list[tuple[str, Any]]:
    """(topic, record) from the start of ``topics`` until ``done(records)`` or the timeout;
    (topic, record, [(header, value)...]) with ``headers``."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[str, Any]] = []
    try:
        end = time.monotonic() + timeout
        while not done(out):
            assert time.monotonic() < end, f"timed out after {timeout} s with {len(out)} records"
            for tp, records in (await consumer.getmany(timeout_ms=300)).items():
                out.extend((tp.topic, decode(r.value), list(r.headers or ())) if headers
                           else (tp.topic, decode(r.value)) for r in records)
    finally:
        await consumer.stop()
    return out


def finals(records: list[tuple[str, Any]], call_id: str) -> list[TranscriptEvent]:
    return [r for _, r, *_ in records if isinstance(r, TranscriptEvent) and r.final
            and r.call_id == call_id]


def summaries(records: list[tuple[str, Any]], call_id: str) -> list[CallSummary]:
    return [r for _, r, *_ in records if isinstance(r, CallSummary) and r.call_id == call_id]


def dead_letters(records: list[tuple[str, Any]]) -> list[DeadLetter]:
    return [r for _, r, *_ in records if isinstance(r, DeadLetter)]


def has_summaries(*call_ids: str) -> Callable[[list[tuple[str, Any]]], bool]:
    def done(records: list[tuple[str, Any]]) -> bool:
        seen = {r.call_id for _, r, *_ in records if isinstance(r, CallSummary)}
        return all(c in seen for c in call_ids)
    return done


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text from ``url``: {metric name: {sorted label pairs: value}}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                  if not k.startswith("otel_")))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out
