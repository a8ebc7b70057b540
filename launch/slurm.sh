#!/usr/bin/env bash
# Start a jaxgen run on a SLURM GPU cluster (writes and submits an sbatch script).
#   bash launch/slurm.sh --nodes=2 --gpus-per-node=8 --repo-dir=/shared/jaxgen --dry-run -- --config=configs/mvld.py
# Flags before -- are jaxgen.launch's (python -m jaxgen.launch slurm --help), after it jaxgen.main's.
. "$(dirname "$0")/env.sh" ""
exec python -m jaxgen.launch slurm "$@"
