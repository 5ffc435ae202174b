"""What a benchmark run talks to, per mode, as keyword arguments for ``run_load``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from callscribe.settings import Settings

REPO = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def target(mode: str, settings: Settings, *, kafka: str | None = None) -> Iterator[dict]:
    from callscribe.benchmark.runner import ServerProcess

    env = {"CALLSCRIBE_MAX_SESSIONS": "256", "CALLSCRIBE_MAX_SESSIONS_PER_KEY": "256"}
    if mode == "engine":
        from callscribe.recognition.runtime import Runtime
        rt = Runtime.create(settings)
        try:
            yield {"runtime": rt}
        finally:
            rt.close()
    elif mode == "standalone":
        with ServerProcess(env) as server:
            yield {"server": server}
    else:  # kafka: broker (local unless given) + one worker + serve --kafka
        with contextlib.ExitStack() as stack:
            from callscribe.benchmark.runner import _free_port

            bootstrap = kafka or stack.enter_context(local_broker())
            metrics_port = _free_port()
            # the one place that creates the pipeline's topics (the others only check)
            subprocess.run([sys.executable, "-m", "callscribe.cli", "topics", "create",
                            "--bootstrap", bootstrap], env={**os.environ, **env}, check=True,
                           stdout=subprocess.DEVNULL, timeout=120)
            worker = subprocess.Popen([sys.executable, "-m", "callscribe.cli", "worker",
                                       "--bootstrap", bootstrap,
                                       "--metrics-port", str(metrics_port)],
                                      env={**os.environ, **env, "CALLSCRIBE_LOG_LEVEL": "warning"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(_stop, worker)
            _wait_http(f"http://127.0.0.1:{metrics_port}/metrics", worker, 120)
            server = stack.enter_context(ServerProcess(env, ["--kafka", bootstrap]))
            yield {"server": server, "extra_pids": [worker.pid],
                   "hop_metrics": {"produce_to_worker": f"http://127.0.0.1:{metrics_port}/metrics",
                                   "worker_to_gateway": f"http://127.0.0.1:{server.port}/metrics"}}


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until ``url`` answers (the worker's metrics server is up), or fail with why."""
    import time
    import urllib.request

    end = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"{url} did not answer within {timeout_s:g} s") from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def local_broker(directory: Path | None = None) -> Iterator[str]:
    """A single-node broker from ``scripts/kafka.sh`` (installed if needed) in ``directory``
    (default: one fixed folder under /tmp), on a free port; yields its bootstrap address and
    stops it on exit."""
    script = REPO / "scripts" / "kafka.sh"
    d = str(directory or "/tmp/callscribe-bench-kafka")
    subprocess.run([str(script), "install"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([str(script), "start", "--dir", d], check=True, capture_output=True,
                         text=True).stdout
    try:
        yield out.strip().split("=", 1)[1]
    finally:
        subprocess.run([str(script), "stop", "--dir", d], check=False, capture_output=True)


@contextlib.contextmanager
def worker_process(env: dict[str, str], log_path: Path, metrics_port: int = -1,
                   timeout_s: float = 180.0) -> Iterator[subprocess.Popen]:
    """``callscribe topics create`` then a ``callscribe worker`` with ``env``, its output in
    ``log_path``; yields once the worker has its audio partitions, terminates it on exit."""
    cli = [sys.executable, "-m", "callscribe.cli"]
    subprocess.run([*cli, "topics", "create"], env=env, check=True, capture_output=True)
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([*cli, "worker", "--metrics-port", str(metrics_port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + timeout_s
        while b"audio partitions assigned" not in log_path.read_bytes():
            if worker.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"worker did not start; see {log_path}")
            time.sleep(0.5)
        yield worker
    finally:
        worker.terminate()
        worker.wait(60)
