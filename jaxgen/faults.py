"""Fault injection for the kill-and-resume tests: `JAXGEN_KILL_AT=<name>:<n>` SIGKILLs the process
once progress `n` is reached in the loop named `name`.

The loops that check it: a training loop (`jaxgen.train.loop.train`; name = the loop's name, n = the
step) and a shard cache being built (`jaxgen.io.shard_cache.build_shards`; name = the cache
folder's base name, n = the index of the shard just made). A real, uncatchable kill at a chosen
point, exactly what a pre-empted job or an out-of-memory kill does; unset, it does nothing.

In a multi-process job every process meets the others before it dies, so that what the writing
process (process 0) wrote up to the chosen point is on disk: a process that reached the point first
would otherwise die while process 0 is still in that shard's collective, and the test's kill point
would move with the hosts' relative speed.
"""

from __future__ import annotations

import os
import signal

from jaxgen.parallel.mesh import rendezvous

ENV_VAR = "JAXGEN_KILL_AT"


def kill_if_requested(name: str, progress: int) -> None:
  """SIGKILL this process if JAXGEN_KILL_AT names `name` and `progress` has reached its count."""
  target = os.environ.get(ENV_VAR)
  if target and target.rsplit(":", 1)[0] == name and progress >= int(target.rsplit(":", 1)[1]):
    rendezvous(f"kill:{name}:{progress}")
    os.kill(os.getpid(), signal.SIGKILL)
