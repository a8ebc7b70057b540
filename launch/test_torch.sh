#!/usr/bin/env bash
# The opt-in PyTorch parity group (torch 2.14.1 + torchvision 0.29.1, about 5.5 GB) in its own venv.
JAXGEN_VENV="${JAXGEN_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv-torch}" \
  . "$(dirname "$0")/env.sh" "test,torch"
exec python -m pytest -q -m torch "$@"
