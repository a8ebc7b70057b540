#!/usr/bin/env bash
# Command 2 of the README: install (once) with the test extras and run the test suite on CPU JAX.
# Extra arguments go to pytest (e.g. `bash launch/test.sh tests/test_train_loop.py -x`).
. "$(dirname "$0")/env.sh" test
# One XLA compilation cache for the whole run, shared by both workers, the subprocesses and the
# notebook kernels: the suite is mostly compilation, and its tests compile the same programs many
# times (every tiny run of a method, every rerun and resume). A fresh, empty cache per run keeps the
# timing that of a clean clone and never feeds one run's programs to the next; set
# JAX_COMPILATION_CACHE_DIR yourself to keep one between runs.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/jaxgen-xla-cache.XXXXXX")"
  export JAX_COMPILATION_CACHE_DIR
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
# Cheaper LLVM code generation for the tests only: the suite's programs are compiled far more often
# than they run long, and skipping LLVM's optimisation passes cut a tiny Diff-Mix run from 107 s to
# 66 s on 2 cores. The code computes the same sums (no fast-math either way); float results can
# differ in the last digits (a tiny run's FID: 0.740235 vs 0.740222) and every test's tolerance
# allows that. Method runs and benchmarks keep XLA's defaults. Set XLA_FLAGS yourself to override.
export XLA_FLAGS="${XLA_FLAGS:---xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true}"
# Two workers, whole files each (module fixtures are built once): the suite is mostly XLA
# compilation, which is single-threaded, so two processes keep both CI cores busy (measured:
# 17.7 min serial, 11 min with -n 2 on the 2-core machine).
python -m pytest -q -n 2 --dist loadfile "$@"
