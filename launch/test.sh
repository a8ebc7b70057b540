#!/usr/bin/env bash
# Command 2 of the README: install (once) with the test extras and run the test suite on CPU JAX.
# Extra arguments go to pytest (e.g. `bash launch/test.sh tests/test_train_loop.py -x`).
. "$(dirname "$0")/env.sh" test
exec python -m pytest -q "$@"
