"""Every method as two processes (as on a TPU pod or a SLURM job: `jaxgen.launch local
--processes=2`, two processes joined by jax.distributed on loopback, 4 simulated CPU devices each),
SIGKILLed once mid-training and launched again: it resumes from the last checkpoint and gives the
training losses of one uninterrupted process on 8 devices.

Each method's first training stages run this way (what differs from one process there: the
gradients summed over both hosts, process 0 writing the checkpoint and both restoring it, the input
shares of each host): MVLD's and LR-GMM-NN's in the default suite, Softlabel-GAN's, DIMVIDA's
and Diff-Mix's in the slow group. The slow group also runs each whole tiny preset and compares the
results tables (sampling, generation and evaluation split over both hosts)."""

import json
import os

import numpy as np
import pytest

from jaxgen import main as jaxgen_main
from processes import free_port, launch_two

_SYNC = "train.async_checkpoints=false"  # the last checkpoint is on disk when the kill comes


def _failure(proc):
  """A failed launch's jaxgen frames (a long traceback's tail alone hides where it came from) and
  the end of its stderr."""
  frames = [line for line in proc.stderr.splitlines() if "/jaxgen/" in line]
  return "\n".join(frames[-12:] + ["..."]) + "\n" + proc.stderr[-2000:]


def _killed_then_resumed(args, workdir, kill_at, run=""):
  """Launch `args` as two processes, killed at `kill_at` ('loop:step'), then again; the second
  launch's completed process. `run`: the sub-run whose loop it is (DIMVIDA trains its MVLD in
  WORKDIR/mvld)."""
  port = free_port()
  killed = launch_two(args, workdir, port, {"JAXGEN_KILL_AT": kill_at})
  loop = kill_at.split(":")[0]
  assert killed.returncode != 0 and not (workdir / "results.json").exists(), _failure(killed)
  # killed where intended: after a checkpoint of that loop was written
  checkpoints = workdir / run / "checkpoints" / loop
  assert checkpoints.is_dir() and os.listdir(checkpoints), _failure(killed)
  multi = launch_two(args, workdir, port, {})
  assert multi.returncode == 0, _failure(multi)
  # process 0 alone prints (and writes): the resume is announced once
  assert multi.stdout.count(f"[{loop}] resumed from checkpoint at step") == 1, multi.stdout[-3000:]
  return multi


def _assert_same_losses(one, two, later_rtol, first_rtol=1e-5):
  """Every logged loss of the two runs; the first logged step at `first_rtol` (it comes after a
  single step where steps_per_call is 1), later steps at `later_rtol` (training amplifies the
  cross-process rounding of the gradient sums)."""
  a, b = _losses(one), _losses(two)
  assert a and set(a) == set(b)
  first = min(step for _, step in a)
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=first_rtol if key[1] == first else later_rtol,
                               err_msg=str(key))


def _losses(workdir, suffixes=("/l1", "/loss")):
  out = {}
  for line in open(workdir / "logs" / "metrics.jsonl"):
    record = json.loads(line)
    for key, value in record.items():
      if key.endswith(suffixes):
        out[(key, record["step"])] = value
  return out


def _floats(tree, prefix=""):
  """(path, value) of every float in a JSON tree."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _floats(value, f"{prefix}/{key}")
  elif isinstance(tree, list):
    for i, value in enumerate(tree):
      yield from _floats(value, f"{prefix}[{i}]")
  elif isinstance(tree, float):
    yield prefix, tree


# method -> (flags, stages, where the two-process run is SIGKILLed (loop:step, between two
#            checkpoints), loss rtol of the first logged step and after it). Each stage list ends with the
#            method's first training of its own (MVLD / DIMVIDA: the multi-view latent diffusion
#            and, for DIMVIDA, the generated views split over both hosts; LR-GMM-NN: the
#            autoencoder and the EM sharded over both hosts' devices; Softlabel-GAN: classifier C,
#            its soft labels and a GAN; Diff-Mix: the backbone's fine-tuning).
_FIRST_STAGES = {
    "mvld": ((f"--config.diffusion.{_SYNC}",), "data,train_autoencoder,train_diffusion",
             "diffusion:15", 1e-5, 2e-3),
    "lrgmm": (("--config.autoencoder.train.checkpoint_every=4",
               "--config.autoencoder.train.steps_per_call=2", f"--config.autoencoder.{_SYNC}"),
              "data,train_autoencoder,fit", "autoencoder:6", 1e-5, 2e-3),
    "softlabel_gan": (("--config.variants=('soft',)", "--config.log_images=False",
                       "--config.gan.train.checkpoint_every=2", "--config.gan.train.steps_per_call=1",
                       f"--config.gan.{_SYNC}"), "data,train_classifier,soft_labels,train_gans",
                      "gan_soft:3", 1e-5, 2e-3),
    "dimvida": ((f"--config.mvld.diffusion.{_SYNC}",), "data,train_mvld,generate_train",
                "diffusion:15", 1e-5, 2e-3),
    # the first logged step comes after two Adam steps of the LoRA / token fine-tuning
    "diffmix": (("--config.finetune.train.checkpoint_every=2", "--config.finetune.train.steps_per_call=1",
                 f"--config.finetune.{_SYNC}"), "backbone,finetune", "finetune_seed0:3", 5e-3, 5e-3),
}


def _same_em_fits(one, two):
  """LR-GMM-NN: the EM fits run over both hosts' devices (on autoencoders whose weights differ
  by float rounding): the same iterations, likelihoods and weights."""
  fits = sorted((one / "eval").glob("fit_N*.json"))
  assert fits
  for path in fits:
    a, b = (json.loads(p.read_text()) for p in (path, two / "eval" / path.name))
    assert (a["em_iterations"], a["dims"]) == (b["em_iterations"], b["dims"])
    np.testing.assert_allclose(b["mean_log_likelihood"], a["mean_log_likelihood"], rtol=1e-3)
    np.testing.assert_allclose(b["weights"], a["weights"], atol=1e-3)


def _generated_views(workdir):
  from jaxgen.dimvida.generation import read_split
  from jaxgen.io.shard_cache import INDEX
  cache = workdir / "generated" / "classifier_train"
  count = 0
  for shard in cache.glob("*.npz"):
    with np.load(shard) as f:
      count += len(f[INDEX])
  return read_split(str(cache), count)["views"].astype(np.int16)


def _same_generated_views(one, two):
  """DIMVIDA: the views generated with the generation split over both hosts (uint8, from score
  networks whose weights differ by float rounding: a few pixels may move by a grey level)."""
  a, b = _generated_views(one), _generated_views(two)
  assert a.shape == b.shape and a.size
  assert np.mean(np.abs(a - b) > 1) < 0.01 and np.abs(a - b).mean() < 0.1


_SAME_OUTPUTS = {"lrgmm": _same_em_fits, "dimvida": _same_generated_views}


# In the default suite: MVLD and LR-GMM-NN (50-70 s each there). Softlabel-GAN's (83-88 s),
# DIMVIDA's (~75-110 s: MVLD's training again, then generation) and Diff-Mix's (~105-140 s: its
# one-process run trains the t2i backbone) run in the slow group: with Softlabel-GAN's the whole
# suite took 757-782 s here (2026-12-06), with all five 818 s: too close to CI's 15 minutes.
# Diff-Mix's failed in 2 of its first 4 runs on 2 cores (2026-12-06) and later hung
# once; two causes were found and fixed (tests/test_multiprocess.py has a test for each): a
# process that started late skipped a stage whose marker process 0 had just written, and a gather
# reached over 30 s apart made XLA:CPU's Gloo set-up give up (DEADLINE_EXCEEDED). Since then, run
# side by side: Diff-Mix's passed 3 of 3, Softlabel-GAN's 3 of 3, DIMVIDA's 1 of 1 (after a fix of
# this file: its checkpoints are under WORKDIR/mvld).
_SLOW_FIRST_STAGES = ("softlabel_gan", "dimvida", "diffmix")


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in _SLOW_FIRST_STAGES
                                    else m for m in sorted(_FIRST_STAGES)])
def test_two_process_first_stages_of_a_method_killed_and_resumed_match_one_process(method, tmp_path):
  """A method's tiny preset up to its first own training, as above. Diff-Mix's two processes
  reuse the one-process run's backbone (`t2i_workdir`: training it again would double the test)
  and fine-tune it."""
  flags, stages, kill_at, first_rtol, later_rtol = _FIRST_STAGES[method]
  args = [f"--config=configs/{method}.py:tiny", *flags, f"--stages={stages}"]
  one, two = tmp_path / "one", tmp_path / "two"
  assert jaxgen_main.run(["jaxgen.main", *args, f"--workdir={one}"]) == 0
  if method == "diffmix":
    args.append(f"--config.t2i_workdir={one / 't2i'}")
  runs = "mvld" if method == "dimvida" else ""  # DIMVIDA trains its MVLD in WORKDIR/mvld
  _killed_then_resumed(args, two, kill_at, runs)
  for stage in stages.split(","):
    assert (two / "stages" / f"{stage}.json").exists()
  _assert_same_losses(one / runs, two / runs, later_rtol, first_rtol)
  if method in _SAME_OUTPUTS:
    _SAME_OUTPUTS[method](one, two)


# method -> (extra flags, where the two-process run is SIGKILLed once (stage:step, between two
#            checkpoints), the results tables to compare, loss rtol after the first logged step,
#            {table: atol} for tables compared float by float (accuracies, in their units))
_TWO_PROCESS_RUNS = {
    "mvld": ((f"--config.diffusion.{_SYNC}",), "diffusion:15", ("table1",), 2e-3, {}),
    "lrgmm": (("--config.autoencoder.train.checkpoint_every=4", "--config.autoencoder.train.steps_per_call=2",
               f"--config.autoencoder.{_SYNC}"), "autoencoder:6", ("table1",), 2e-3, {}),
    "softlabel_gan": (("--config.variants=('soft',)", "--config.log_images=False",
                       "--config.gan.train.checkpoint_every=2", "--config.gan.train.steps_per_call=1",
                       f"--config.gan.{_SYNC}"), "gan_soft:3", ("table2",), 2e-3, {}),
    # The first logged step comes after 4-6 SGD steps of BatchNorm networks, which amplify the
    # cross-process rounding (measured up to 2.4e-2 relative after 6 steps of a ResNet-18 on
    # generated views that differ by one grey level on 0.3% of pixels); accuracies in % over 12
    # test objects (one object = 8.3 points): measured equal.
    "dimvida": ((f"--config.mvld.diffusion.{_SYNC}",), "diffusion:15", (), 5e-2,
                {"table2": 8.4, "table3": 8.4}),
    # accuracies as fractions of 9 test images; FIDs measured within 5e-5 relative
    "diffmix": (("--config.finetune.train.checkpoint_every=2", "--config.finetune.train.steps_per_call=1",
                 f"--config.finetune.{_SYNC}"), "finetune_seed0:3", (), 5e-3,
                {"comparison": 0.12, "synthetic": 0.12}),
}


@pytest.mark.slow  # ~5-15 min each on 2 cores: one-process and two-process tiny runs of the method
@pytest.mark.parametrize("method", sorted(_TWO_PROCESS_RUNS))
def test_two_process_tiny_run_of_a_method_killed_and_resumed_matches_one_process(method, tmp_path):
  """Every method's tiny preset (MVLD: autoencoder, score network, judges, generation,
  transmission, sampler study; LR-GMM-NN: the EM sharded over both hosts' devices; Softlabel-GAN:
  classifier C, soft labels, one GAN, judge; DIMVIDA: MVLD, generated views split over both hosts,
  digits pre-training, every classifier; Diff-Mix: backbone, fine-tuning, synthesis over both
  hosts, classifiers) as two processes x 4 simulated devices, SIGKILLed once mid-training and
  launched again (it resumes from the last checkpoint): the same training losses as one
  process on 8 devices (rtol 1e-5 for the first logged steps where they come after a single step;
  training amplifies the cross-process rounding, measured ~6e-4 after 10 Adam steps of the
  LR-GMM-NN judge) and the same tables within float tolerance."""
  flags, kill_at, tables, later_rtol, float_tables = _TWO_PROCESS_RUNS[method]
  args = [f"--config=configs/{method}.py:tiny", *flags]
  one, two = tmp_path / "one", tmp_path / "two"
  assert jaxgen_main.run(["jaxgen.main", *args, f"--workdir={one}"]) == 0
  multi = _killed_then_resumed(args, two, kill_at, "mvld" if method == "dimvida" else "")
  _assert_same_losses(one, two, later_rtol, first_rtol=later_rtol if float_tables else 1e-5)
  results = [json.loads((w / "results.json").read_text()) for w in (one, two)]
  for table in tables:
    ra, rb = (r[table] for r in results)
    for n in ra:
      for name, value in ra[n].items():
        if isinstance(value, dict):
          for metric in ("fid", "psnr", "precision"):
            if isinstance(value.get(metric), float):
              np.testing.assert_allclose(rb[n][name][metric], value[metric], rtol=0.05, atol=0.07,
                                         err_msg=f"{n} {name} {metric}")
        elif isinstance(value, float):
          # atol: precision / coverage / density count neighbours among 32 samples (steps of 1/32)
          np.testing.assert_allclose(rb[n][name], value, rtol=0.05, atol=0.07, err_msg=f"{n} {name}")
  for table, atol in float_tables.items():
    fa, fb = (dict(_floats(r[table])) for r in results)
    assert fa.keys() == fb.keys() and fa
    for path, value in fa.items():
      np.testing.assert_allclose(fb[path], value, rtol=1e-3, atol=atol, err_msg=f"{table}{path}")
  assert multi.stdout.count(f"[{method}] results:") == 1  # only process 0 reports
