#!/usr/bin/env bash
# Downloads into .whl/ (ignored by git) the wheels of the packages benchmarks/gpu.sh imports that
# the lent GPU machines' image lacks (its package list: /work/.library/device/KINDS.md in the
# workplace that lends them); Python 3.12 there. Run here, where pip reaches the registry; the
# device tool then carries .whl (a few MB) and gpu.sh installs it with --no-index.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$@" \
    ml-collections==1.1.0 grain==0.2.18 array-record==0.8.3 portpicker==1.6.0 diffusers==0.42.1 \
    importlib-metadata==8.7.0
ls -l .whl
