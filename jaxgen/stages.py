"""Stages of a method run (train -> sample -> evaluate -> report), each done once per workdir.

A finished stage leaves `WORKDIR/stages/<name>.json` (written atomically, with its wall time).
Re-running the command skips finished stages, so an interrupted run picks up where it stopped;
training stages also resume mid-way from their checkpoints. `--force` re-runs them.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

from jaxgen.errors import ConfigError
from jaxgen.io.files import atomic_write_json
from jaxgen.parallel.mesh import is_main_process


def stage_done(workdir: str, name: str) -> bool:
  return os.path.exists(os.path.join(workdir, "stages", f"{name}.json"))


def run_stages(workdir: str, stages: Sequence[tuple[str, Callable[[], None]]],
               requested: Sequence[str] | None = None, force: bool = False) -> None:
  """Run `stages` in order: all of them, or only `requested`, skipping finished ones."""
  names = [name for name, _ in stages]
  for name in requested or ():
    if name not in names:
      raise ConfigError("(flag --stages)", name, "one of " + ", ".join(names))
  for name, fn in stages:
    if requested and name not in requested:
      continue
    if stage_done(workdir, name) and not force:
      if is_main_process():
        print(f"[{name}] already done in {workdir}; skipping (use --force to redo)", flush=True)
      continue
    start = time.time()
    fn()
    if is_main_process():
      atomic_write_json(os.path.join(workdir, "stages", f"{name}.json"),
                        {"stage": name, "seconds": round(time.time() - start, 2),
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def require_stage(workdir: str, name: str, needed_by: str) -> None:
  """Fail in one line if stage `needed_by` runs before the stage `name` it reads from."""
  if not stage_done(workdir, name):
    raise ConfigError("(flag --stages)", needed_by,
                      f"stage {name!r} to have run first in {workdir} (run it, or all stages)")
