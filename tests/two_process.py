"""A method run as two processes (as on a TPU pod or a SLURM job: `jaxgen.launch local
--processes=2`, two processes joined by jax.distributed on loopback, 4 simulated CPU devices each),
SIGKILLed once mid-training and launched again, compared with one uninterrupted process on 8
devices: what differs there is the gradients summed over both hosts, process 0 writing the
checkpoint and both restoring it, and the input shares of each host.

Each method's test file runs its first training stages this way (`first_stages_match`), against
the one-process tiny run its end-to-end test makes anyway (`reference_flags`: the same flags, so
one run serves both); tests/test_multiprocess_methods.py runs whole tiny presets (slow group)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from typing import NamedTuple, Sequence

import numpy as np

from processes import free_port, launch_two

SYNC = "train.async_checkpoints=false"  # the last checkpoint is on disk when the kill comes


class FirstStages(NamedTuple):
  """A method's first stages on two processes. `flags`: the preset's overrides for both runs
  (synchronous saves: the two-process run only); `stages`: the stages run, ending with the method's
  first training; `kill_at`: 'loop:step' where the two-process run is SIGKILLed, between two
  checkpoints; `first_rtol`: the first logged step's losses (after a single step where
  steps_per_call is 1); `later_rtol`: later steps (training amplifies the cross-process rounding of
  gradient sums); `run`: the sub-run that trains (DIMVIDA trains its MVLD in WORKDIR/mvld)."""
  flags: tuple[str, ...]
  stages: str
  kill_at: str
  first_rtol: float
  later_rtol: float
  run: str = ""


# Each stage list ends with the method's first training of its own (MVLD / DIMVIDA: the multi-view
# latent diffusion and, for DIMVIDA, the generated views split over both hosts; LR-GMM-NN: the
# autoencoder and the EM sharded over both hosts' devices; Softlabel-GAN: classifier C (the
# one-process run's, copied in, in the first-stage test), its soft labels and a GAN; Diff-Mix: the
# fine-tuning of the one-process run's backbone).
FIRST_STAGES = {
    "mvld": FirstStages((f"--config.diffusion.{SYNC}",),
                        "data,train_autoencoder,train_diffusion", "diffusion:15", 1e-5, 2e-3),
    "lrgmm": FirstStages(("--config.autoencoder.train.checkpoint_every=4",
                          "--config.autoencoder.train.steps_per_call=2",
                          f"--config.autoencoder.{SYNC}"),
                         "data,train_autoencoder,fit", "autoencoder:6", 1e-5, 2e-3),
    "softlabel_gan": FirstStages(("--config.variants=('soft',)", "--config.log_images=False",
                                  "--config.gan.train.checkpoint_every=2",
                                  "--config.gan.train.steps_per_call=1", f"--config.gan.{SYNC}"),
                                 "data,train_classifier,soft_labels,train_gans", "gan_soft:3",
                                 1e-5, 2e-3),
    "dimvida": FirstStages((f"--config.mvld.diffusion.{SYNC}",), "data,train_mvld,generate_train",
                           "diffusion:15", 1e-5, 2e-3, run="mvld"),
    # the first logged step comes after two Adam steps of the LoRA / token fine-tuning
    "diffmix": FirstStages(("--config.finetune.train.checkpoint_every=2",
                            "--config.finetune.train.steps_per_call=1",
                            f"--config.finetune.{SYNC}"),
                           "backbone,finetune", "finetune_seed0:3", 5e-3, 5e-3),
}


def reference_flags(method: str) -> list[str]:
  """The one-process run's overrides: the two-process run's, less synchronous saving (which changes
  no number; the end-to-end tests keep the default asynchronous saves)."""
  return [flag for flag in FIRST_STAGES[method].flags if not flag.endswith(SYNC)]


def one_process_tiny_run(tmp_path_factory, method: str, extra: Sequence[str] = (),
                         name: str = "run") -> pathlib.Path:
  """`method`'s tiny preset with `reference_flags` and `extra`, one process on 8 devices, in a new
  WORKDIR named `name`: a method test file's module fixture, the run its end-to-end test checks
  and its two-process test's reference."""
  from jaxgen import main as jaxgen_main
  workdir = tmp_path_factory.mktemp(f"{method}_tiny") / name
  assert jaxgen_main.run(["jaxgen.main", f"--config=configs/{method}.py:tiny",
                          f"--workdir={workdir}", *extra, *reference_flags(method)]) == 0
  return workdir


def first_stages_match(method: str, one: pathlib.Path, two: pathlib.Path,
                       extra: Sequence[str] = ()) -> None:
  """Run `method`'s first stages (tiny preset, its FIRST_STAGES flags and `extra`) as two
  processes in `two`, killed and resumed; assert they finish, announce the resume once and give
  the losses that the one-process run in `one` (`reference_flags` and `extra`) logged."""
  spec = FIRST_STAGES[method]
  args = [f"--config=configs/{method}.py:tiny", *spec.flags, *extra, f"--stages={spec.stages}"]
  killed_then_resumed(args, two, spec.kill_at, spec.run)
  for stage in spec.stages.split(","):
    assert (two / "stages" / f"{stage}.json").exists()
  assert_same_losses(one / spec.run, two / spec.run, spec.later_rtol, spec.first_rtol,
                     loops_of_two_only=True)


def failure(proc: subprocess.CompletedProcess) -> str:
  """A failed launch's jaxgen frames (a long traceback's tail alone hides where it came from) and
  the end of its stderr."""
  frames = [line for line in proc.stderr.splitlines() if "/jaxgen/" in line]
  return "\n".join(frames[-12:] + ["..."]) + "\n" + proc.stderr[-2000:]


def killed_then_resumed(args: Sequence[str], workdir: pathlib.Path, kill_at: str,
                        run: str = "") -> subprocess.CompletedProcess:
  """Launch `args` as two processes, killed at `kill_at` ('loop:step'), then again; the second
  launch's completed process. `run`: the sub-run whose loop it is."""
  port = free_port()
  killed = launch_two(args, workdir, port, {"JAXGEN_KILL_AT": kill_at})
  loop = kill_at.split(":")[0]
  assert killed.returncode != 0 and not (workdir / "results.json").exists(), failure(killed)
  # killed where intended: after a checkpoint of that loop was written
  checkpoints = workdir / run / "checkpoints" / loop
  assert checkpoints.is_dir() and os.listdir(checkpoints), failure(killed)
  multi = launch_two(args, workdir, port, {})
  assert multi.returncode == 0, failure(multi)
  # process 0 alone prints (and writes): the resume is announced once
  assert multi.stdout.count(f"[{loop}] resumed from checkpoint at step") == 1, multi.stdout[-3000:]
  return multi


def assert_same_losses(one: pathlib.Path, two: pathlib.Path, later_rtol: float,
                       first_rtol: float = 1e-5, loops_of_two_only: bool = False) -> None:
  """Every logged loss of the two runs; the first logged step at `first_rtol`, later steps at
  `later_rtol`. `loops_of_two_only`: `one` ran more stages; compare the training loops `two` ran."""
  a, b = losses(one), losses(two)
  if loops_of_two_only:
    loops = {key.split("/")[0] for key, _ in b}
    a = {k: v for k, v in a.items() if k[0].split("/")[0] in loops}
  assert a and set(a) == set(b)
  first = min(step for _, step in a)
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=first_rtol if key[1] == first else later_rtol,
                               err_msg=str(key))


def losses(workdir: pathlib.Path,
           suffixes: tuple[str, ...] = ("/l1", "/loss", "/d_loss", "/g_loss")) -> dict:
  """{(metric, step): value} of the losses in WORKDIR/logs/metrics.jsonl (a GAN's loop logs its
  discriminator's and generator's: d_loss, g_loss)."""
  out = {}
  for line in open(workdir / "logs" / "metrics.jsonl"):
    record = json.loads(line)
    for key, value in record.items():
      if key.endswith(suffixes):
        out[(key, record["step"])] = value
  return out
