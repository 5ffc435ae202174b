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
