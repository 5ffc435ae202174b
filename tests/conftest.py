"""Shared fixtures.

Real recordings live outside the repository (``CALLSCRIBE_TEST_AUDIO``, default
``../shared/audio`` next to the checkout).  Tests that need them use the ``shared_audio``
fixture, which skips with a reason when the folder is absent, so a user's clone still passes.
Tests that must always run make their own audio (espeak-ng, tones, noise, silence).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _shared_audio_dir() -> Path:
    env = os.environ.get("CALLSCRIBE_TEST_AUDIO")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "audio")


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    d = _shared_audio_dir()
    if not (d / "MANIFEST.tsv").is_file():
        pytest.skip(f"real recordings not found at {d} (set CALLSCRIBE_TEST_AUDIO)")
    return d


@pytest.fixture(scope="session")
def manifest(shared_audio: Path) -> dict[str, dict[str, str]]:
    with open(shared_audio / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="session")
def settings():
    from callscribe.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def runtime(settings):
    """One loaded model for the whole test run.  A missing model is an error, never a skip."""
    from callscribe.recognition.runtime import Runtime

    rt = Runtime.create(settings)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def loop_thread():
    """An asyncio loop in a thread, for tests that run a gateway beside synchronous clients."""
    from serverutil import LoopThread

    lt = LoopThread()
    yield lt
    lt.stop()


# --- markers, applied from what a test uses -------------------------------------------------
#
# ``-m unit`` selects what runs in seconds without a broker, the model, a browser, Helm, Maven or
# the scratch image build; the other markers name what a test needs.  They are not written on
# the tests: ``pytest_collection_modifyitems`` reads the source of the test function and of
# every fixture it uses (its whole fixture closure) for the calls below, so a test added later
# is marked the same way.  A parametrised fixture whose variants differ (``local`` / ``kafka``)
# marks its variants itself with ``pytest.param(..., marks=...)``; its source is then not read.

#: marker -> calls in a test's (or a fixture's) source that mean it needs that
NEEDS: dict[str, tuple[str, ...]] = {
    # a real broker: make_kafka_fixture's fixtures construct KafkaBroker; a worker subprocess
    "kafka": ("KafkaBroker(", "WorkerProcess("),
    # the Whisper model loaded in this process or in a `callscribe serve/transcribe/worker`
    "model": ("Runtime.create(", "WorkerProcess(", '"serve"', '"transcribe"', '"worker"'),
    "browser": ("sync_playwright", "async_playwright"),
    "helm": ("helm.sh",),
    "java": ('"mvn"',),
    # the Dockerfile's stages executed into a scratch root (pip install and model install)
    "image": ("_execute_stage(",),
}
HEAVY = tuple(NEEDS)


def _source(func: object, cache: dict[object, str]) -> str:
    import inspect

    if func not in cache:
        try:
            cache[func] = inspect.getsource(func)  # type: ignore[arg-type]
        except (OSError, TypeError):
            cache[func] = ""
    return cache[func]


def _variants_marked(fixturedef: object) -> bool:
    from _pytest.mark.structures import ParameterSet

    params = getattr(fixturedef, "params", None) or ()
    return any(isinstance(p, ParameterSet) and p.marks for p in params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache: dict[object, str] = {}
    for item in items:
        sources = [_source(getattr(item, "function", None), cache)]
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info is not None else ()):
            fd = defs[-1]  # the definition this item gets (the closest override)
            if not _variants_marked(fd):
                sources.append(_source(fd.func, cache))
        text = "\n".join(sources)
        have = {m.name for m in item.iter_markers()}
        for name, calls in NEEDS.items():
            if name not in have and any(c in text for c in calls):
                item.add_marker(name)
                have.add(name)
        if "shared_audio" in item.fixturenames and "shared_audio" not in have:
            item.add_marker("shared_audio")
        if not have.intersection(HEAVY):
            item.add_marker("unit")
