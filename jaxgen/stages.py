"""Stages of a method run (train -> sample -> evaluate -> report), each done once per workdir.

A finished stage leaves `WORKDIR/stages/<name>.json` (written atomically, with its wall time).
Re-running the command skips finished stages, so an interrupted run picks up where it stopped;
training stages also resume mid-way from their checkpoints. `--force` re-runs them.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.files import atomic_write_json, first_json_difference, json_value, read_json
from jaxgen.io.images import save_png
from jaxgen.parallel.mesh import is_main_process, make_mesh, sync_processes
from jaxgen.train.writers import MetricWriter
from jaxgen.io import paths


def stage_done(workdir: str, name: str) -> bool:
  return paths.exists(os.path.join(workdir, "stages", f"{name}.json"))


def run_stages(workdir: str, stages: Sequence[tuple[str, Callable[[], None]]],
               requested: Sequence[str] | None = None, force: bool = False) -> None:
  """Run `stages` in order: all of them, or only `requested`, skipping finished ones."""
  names = [name for name, _ in stages]
  for name in requested or ():
    if name not in names:
      raise ConfigError("(flag --stages)", name, "one of " + ", ".join(names))
  # Every process decides which stages are finished before any of them runs one: process 0 writes
  # a stage's marker when it ends it, and a process that looked only later would skip a stage the
  # others run (and miss its collectives and barriers: the job hangs).
  done = set() if force else {name for name in names if stage_done(workdir, name)}
  sync_processes("jaxgen stages checked")
  for name, fn in stages:
    if requested and name not in requested:
      continue
    if name in done:
      if is_main_process():
        print(f"[{name}] already done in {workdir}; skipping (use --force to redo)", flush=True)
      continue
    start = time.time()
    fn()
    if is_main_process():
      atomic_write_json(os.path.join(workdir, "stages", f"{name}.json"),
                        {"stage": name, "seconds": round(time.time() - start, 2),
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    # Process 0 wrote the stage's files and marker; the others read them in the next stage.
    sync_processes(f"jaxgen stage {name}")


def require_stage(workdir: str, name: str, needed_by: str) -> None:
  """Fail in one line if stage `needed_by` runs before the stage `name` it reads from."""
  if not stage_done(workdir, name):
    raise ConfigError("(flag --stages)", needed_by,
                      f"stage {name!r} to have run first in {workdir} (run it, or all stages)")


def check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuse to go on with a run in `workdir` under another config than the one it was made with.

  Finished stages are skipped and the others resume from their checkpoints and per-seed outputs,
  all made under the recorded config: a changed value would be silently ignored by them, and the
  config.json rewritten over it would then misstate what the results were made with. The `mesh`
  section may change: a checkpoint resumes under another mesh to the same numbers
  (docs/scaling.md), e.g. a run moved to more devices.
  """
  path = os.path.join(workdir, "config.json")
  if not paths.exists(path):
    return
  try:
    old = read_json(path)
  except ValueError:
    raise DataError(f"{path}: not readable as JSON; expected the config.json of a jaxgen run "
                    "(use a new --workdir)") from None
  new = json_value(config.to_dict())
  for tree in (old, new):
    if isinstance(tree, dict):
      tree.pop("mesh", None)
  found = first_json_difference(old, new, missing="<absent>")
  if found:
    key, before, after = found
    raise ConfigError(key, after, (
        f"{before!r}, the value {workdir} was run with (its finished stages and checkpoints "
        "were made with it): use a new --workdir, or remove that one to start over"))


class MethodRun:
  """Shared state of one method run: config, workdir, mesh, a root key per seed with one key per
  stage, the metric writer; writes the resolved `config.json` (for provenance and for APIs that
  reload a run). Methods subclass it and add their data and models."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, stage_names: Sequence[str]):
    check_same_config(workdir, config)
    self.config, self.workdir = config, workdir
    self.stage_names = tuple(stage_names)
    self.mesh = make_mesh(config.mesh)
    self.root_key = jax.random.key(config.seed)
    self.writer = MetricWriter(os.path.join(workdir, "logs"), enabled=is_main_process())
    if is_main_process():
      atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())

  def key(self, stage: str, *sub: int) -> jax.Array:
    """The key of `stage` (folded with `sub` indices, e.g. one per component or classifier)."""
    key = jax.random.fold_in(self.root_key, self.stage_names.index(stage))
    for s in sub:
      key = jax.random.fold_in(key, s)
    return key

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def save_figure(self, image: np.ndarray, *parts: str) -> None:
    """Write a PNG figure to WORKDIR/parts (main process only; skipped if config.log_images is
    False: results and reports do not depend on figures)."""
    if self.config.log_images and is_main_process():
      save_png(self.path(*parts), image)


def run_method(run: MethodRun, plan: Sequence[tuple[str, Callable[[], None]]], method: str,
               requested: Sequence[str] | None = None, force: bool = False) -> None:
  """`run_stages` on the run's workdir, closing its writer; names the results after a report."""
  try:
    run_stages(run.workdir, plan, requested, force)
  finally:
    run.writer.close()
  if is_main_process() and (not requested or "report" in requested):
    print(f"[{method}] results: {os.path.join(run.workdir, 'results.json')}, report: "
          f"{os.path.join(run.workdir, 'report.md')}", flush=True)
