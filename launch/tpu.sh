#!/usr/bin/env bash
# Start a jaxgen run on every worker of a Cloud TPU VM or pod slice.
#   bash launch/tpu.sh --name=my-v4-32 --zone=us-central2-b --workers=4 --dry-run -- --config=configs/mvld.py
# Flags before -- are jaxgen.launch's (python -m jaxgen.launch tpu --help), after it jaxgen.main's.
. "$(dirname "$0")/env.sh" ""
exec python -m jaxgen.launch tpu "$@"
