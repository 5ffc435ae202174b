"""A real single-node Kafka broker for tests (helper module, not a test file).

It drives ``scripts/kafka.sh`` (KRaft broker built from Maven Central jars, no Docker), on a
free port and in a directory of its own, so several test sessions can run side by side.

Use it in a conftest::

    from kafka_broker import make_kafka_fixture

    kafka_broker = make_kafka_fixture()                  # session scope, fixture "kafka_broker"
    kafka_module = make_kafka_fixture(scope="module")    # another fixture, its own broker

    async def test_x(kafka_broker):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        ...
        kafka_broker.restart()       # same port and data; blocking (use asyncio.to_thread in async code)

or directly::

    with KafkaBroker(tmp_path / "kafka") as broker:
        ...

When Java or Maven is missing the fixture skips with a reason; ``CALLSCRIBE_REQUIRE_KAFKA=1``
(set it in CI) turns that skip into a failure.  The jars are fetched once into
``~/.cache/callscribe/kafka-<version>`` (``CALLSCRIBE_KAFKA_HOME``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO_ROOT / "scripts" / "kafka.sh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_unavailable_reason() -> str | None:
    """Why a broker cannot be run here, or None when it can."""
    if not KAFKA_SH.is_file():
        return f"{KAFKA_SH} not found"
    if shutil.which("java") is None:
        return "java (17+) is not on PATH: needed to run the Kafka broker"
    if shutil.which("mvn") is None and not _installed():
        return "mvn is not on PATH and the Kafka jars are not cached: run scripts/kafka.sh install"
    return None


def _installed() -> bool:
    try:
        out = subprocess.run(
            ["bash", str(KAFKA_SH), "version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    home = Path(
        os.environ.get("CALLSCRIBE_KAFKA_HOME")
        or Path.home() / ".cache" / "callscribe" / f"kafka-{out}"
    )
    return (home / "libs" / ".complete").is_file()


class KafkaBrokerError(RuntimeError):
    pass


class KafkaBroker:
    """One broker process managed through scripts/kafka.sh.

    ``port`` defaults to a free port picked at construction; it stays the same across
    ``restart()`` and ``stop()``/``start()`` so clients can reconnect to the same address.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        script: str | os.PathLike[str] = KAFKA_SH,
        env: dict[str, str] | None = None,
        start_timeout: float = 60,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.script = Path(script)
        self.start_timeout = start_timeout
        self._env = {**os.environ, **(env or {})}
        self._env.setdefault("CALLSCRIBE_KAFKA_START_TIMEOUT", str(int(start_timeout)))
        self._env.setdefault("CALLSCRIBE_PYTHON", sys.executable)
        self._running = False

    # -- address ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------
    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = ["bash", str(self.script), *args]
        try:
            proc = subprocess.run(
                cmd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise KafkaBrokerError(
                f"{' '.join(cmd)} timed out after {timeout}s\n{self.log_tail()}"
            ) from e
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"{' '.join(cmd)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def install(self) -> None:
        """Fetch the jars (a no-op when they are cached). Maven may take a few minutes cold."""
        self._run("install", timeout=900)

    def start(self) -> str:
        """Start (formatting the storage the first time) and wait until ready; returns bootstrap."""
        self.install()
        proc = self._run(
            "start",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            timeout=self.start_timeout + 60,
        )
        for line in proc.stdout.splitlines():
            if line.startswith("KAFKA_BOOTSTRAP="):
                bootstrap = line.split("=", 1)[1].strip()
                if bootstrap != self.bootstrap:
                    raise KafkaBrokerError(
                        f"broker answered on {bootstrap}, not {self.bootstrap}"
                    )
                self._running = True
                return bootstrap
        raise KafkaBrokerError(
            f"no KAFKA_BOOTSTRAP line from kafka.sh start:\n{proc.stdout}"
        )

    def stop(self) -> None:
        """SIGTERM, up to 30 s for a clean shutdown, then SIGKILL. Idempotent."""
        if not self.data_dir.exists():
            return
        self._run("stop", "--dir", str(self.data_dir), timeout=90)
        self._running = False

    def restart(self) -> str:
        """Stop and start again on the same port and directory; topics and offsets are kept."""
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        proc = subprocess.run(
            ["bash", str(self.script), "status", "--dir", str(self.data_dir)],
            env=self._env,
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.returncode == 0

    def log_tail(self, lines: int = 60) -> str:
        log = self.data_dir / "logs" / "server.log"
        if not log.is_file():
            return f"(no {log})"
        with open(log, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker(bootstrap={self.bootstrap!r}, data_dir={str(self.data_dir)!r})"


def make_kafka_fixture(
    scope: str = "session", *, name: str | None = None, start_timeout: float = 60
) -> Callable[..., Iterator[KafkaBroker]]:
    """A pytest fixture that yields a started :class:`KafkaBroker` and stops it afterwards.

    Assign the result to a name in a conftest or test module; that name is the fixture's
    name unless ``name`` is given.  Each fixture made here runs its own broker.
    """

    @pytest.fixture(scope=scope, name=name)  # type: ignore[misc]
    def _kafka_broker(
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[KafkaBroker]:
        reason = kafka_unavailable_reason()
        if reason is not None:
            if os.environ.get("CALLSCRIBE_REQUIRE_KAFKA") == "1":
                pytest.fail(
                    f"Kafka broker required (CALLSCRIBE_REQUIRE_KAFKA=1) but {reason}"
                )
            pytest.skip(reason)
        broker = KafkaBroker(
            tmp_path_factory.mktemp("kafka"), start_timeout=start_timeout
        )
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()

    return _kafka_broker
