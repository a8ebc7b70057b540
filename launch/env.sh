# Sourced by launch/*.sh: creates .venv (once) and installs jaxgen with the given extras.
# Usage: . launch/env.sh [extras]   e.g. ". launch/env.sh test"
# JAXGEN_EXTRAS adds extras from outside (e.g. JAXGEN_EXTRAS=tpu,gcs bash launch/run.sh ... on a
# TPU worker: jax for the TPU and gs:// workdirs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${JAXGEN_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
if [ -n "${JAXGEN_EXTRAS:-}" ]; then EXTRAS="${EXTRAS:+$EXTRAS,}$JAXGEN_EXTRAS"; fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# Re-install only when setup.py changed since the last install (a stamp per extras set).
STAMP="$VENV/.jaxgen-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ]; then
  SPEC="$ROOT"
  [ -n "$EXTRAS" ] && SPEC="$ROOT[$EXTRAS]"
  "$VENV/bin/python" -m pip install -q -e "$SPEC"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
