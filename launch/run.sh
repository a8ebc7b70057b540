#!/usr/bin/env bash
# Command 1 of the README: install (once) and run a method's main job.
#   bash launch/run.sh                                  # MVLD on the embedded multi-view renders
#   bash launch/run.sh --config=configs/mvld.py:tiny    # any jaxgen.main flags
# The explicit "" (no extras) keeps `.` from handing this script's flags to env.sh as extras.
. "$(dirname "$0")/env.sh" ""
if [ "$#" -eq 0 ]; then
  set -- --config=configs/mvld.py --workdir=workdirs/mvld
fi
exec python -m jaxgen.main "$@"
