"""Several processes, as on a TPU pod or a SLURM job: every host-side batch source gives the same
global batch in the same order on 1 or N processes, and a run started by `jaxgen.launch local
--processes=2` (two processes joined by jax.distributed on loopback, 4 simulated CPU devices each)
trains, evaluates on every host's share and writes the single-process results."""

import json
import os

import ml_collections
import numpy as np
import pytest

from jaxgen import main as jaxgen_main
from jaxgen.classifier.sampling import SyntheticReplacement
from jaxgen.data.memory import ArrayBatches, ClassBalancedBatches
from jaxgen.parallel.mesh import make_mesh
from processes import TwoProcesses, free_port, launch_two, run_two


_LATE_GATHER = """
import sys, time
import jax, numpy as np
import ml_collections
from jaxgen.parallel import mesh as m
m.initialize_distributed()
mesh = m.make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
x = jax.jit(lambda a: 2 * a)(m.place_full_batch(np.arange(16.0), mesh))
if jax.process_index() == 1:
  time.sleep(float(sys.argv[1]))  # process 0 reaches the gather this much earlier
print("gathered", m.to_host(x).tolist(), flush=True)
m.sync_processes("after the gather")
"""


@pytest.fixture(scope="module", autouse=True)
def late_gather():
  """The late-gather test's two processes, started before this file's other tests: the 40 s that
  process 1 sleeps overlap them instead of adding to the suite's time."""
  procs = TwoProcesses(_LATE_GATHER, "40")
  yield procs
  procs.kill()


# The numbers every method's FID, KID and PRDC are made of, from `mesh` (defined by the caller):
# run in two processes (_FID) and in this one (8 devices).
_FID_NUMBERS = """
import jax.numpy as jnp, numpy as np
from jaxgen.metrics import extract_features, feature_statistics, fid, fid_from_stats
rng = np.random.default_rng(0)
real = rng.integers(0, 256, (50, 8, 8, 3)).astype(np.uint8)  # 50: the last batch of 16 is padded
fake = np.clip(real.astype(int) + rng.integers(-40, 40, real.shape), 0, 255).astype(np.uint8)
proj = jnp.asarray(np.random.default_rng(1).normal(size=(8 * 8 * 3, 6)) / 14, jnp.float32)
feats = lambda x: jnp.tanh((x.reshape(x.shape[0], -1).astype(jnp.float32) / 127.5 - 1) @ proj)
out = {"streamed": float(fid_from_stats(feature_statistics(feats, real, 16, mesh),
                                        feature_statistics(feats, fake, 16, mesh))),
       "features": extract_features(feats, real, 16, mesh).tolist()}
out["from_features"] = float(fid(jnp.asarray(out["features"]),
                                 extract_features(feats, fake, 16, mesh)))
"""

_FID = """
import json
import ml_collections
from jaxgen.parallel import mesh as m
m.initialize_distributed()
mesh = m.make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
""" + _FID_NUMBERS + """
print(json.dumps(out), flush=True)
m.sync_processes("done")
"""


def test_fid_of_two_processes_equals_one_process_on_8_devices():
  """Feature extraction and FID statistics split over both hosts' devices (each host its share of
  every batch, the moments summed over all eight devices, padding rows dropped) give what one
  process on 8 devices gives."""
  two = [json.loads(out.strip().splitlines()[-1]) for out in run_two(_FID)]
  assert two[0] == two[1]  # every host gets the whole result
  env = {"mesh": make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))}
  assert env["mesh"].size == 8
  exec(_FID_NUMBERS, env)  # pylint: disable=exec-used
  one = env["out"]
  assert len(one["features"]) == 50 and one["streamed"] > 0
  # float32 rounding only: the two processes also compile with XLA's default code generation
  # (processes.TwoProcesses sets XLA_FLAGS), the suite with launch/test.sh's cheaper one
  np.testing.assert_allclose(two[0]["features"], one["features"], rtol=1e-5, atol=1e-6)
  for key in ("streamed", "from_features"):
    np.testing.assert_allclose(two[0][key], one[key], rtol=1e-4)


def _global(make, processes, steps=3):
  """Each step's batch as the concatenation of every process's share."""
  iters = [make(p, processes) for p in range(processes)]
  return [{k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
          for batches in ([next(it) for it in iters] for _ in range(steps))]


@pytest.mark.parametrize("kind", ["uniform", "class_balanced", "synthetic"])
def test_host_batches_do_not_depend_on_the_process_count(kind):
  rng = np.random.default_rng(0)
  data = {"x": rng.normal(size=(40, 3)).astype(np.float32), "label": rng.integers(0, 4, 40)}
  synthetic = {"x": -np.ones((5, 3), np.float32), "label": np.full(5, 9)}

  def make(p, n):
    if kind == "class_balanced":
      return ClassBalancedBatches(data, data["label"], global_batch_size=8, seed=1,
                                  process_index=p, process_count=n)
    base = ArrayBatches(data, global_batch_size=8, seed=1, process_index=p, process_count=n)
    if kind == "synthetic":
      return SyntheticReplacement(base, synthetic, 0.4, seed=2, process_index=p, process_count=n)
    return base

  one = _global(make, 1)
  for n in (2, 4):
    for a, b in zip(one, _global(make, n)):
      np.testing.assert_array_equal(a["x"], b["x"])  # same examples, same positions
  if kind == "synthetic":
    assert any((b["label"] == 9).any() for b in one)


def test_two_process_launch_killed_and_resumed_matches_one_process(tmp_path):
  """`python -m jaxgen.launch local --processes=2` on the classifier's tiny preset, SIGKILLed at
  step 3 (after the step-2 checkpoint) and launched again: it resumes from the checkpoint, and the
  per-step training losses equal an uninterrupted one-process run on 8 devices (to float rounding
  of the cross-process sums), evaluation gathers every host's share (same accuracy), and only
  process 0 writes."""
  args = ["--config=configs/classifier.py:tiny", "--config.classifier.train.num_steps=4",
          "--config.classifier.train.log_every=1", "--config.classifier.train.checkpoint_every=2",
          "--config.classifier.train.async_checkpoints=false", "--config.classifier.train.steps_per_call=1"]
  one, two = tmp_path / "one", tmp_path / "two"
  assert jaxgen_main.run(["jaxgen.main", *args, f"--workdir={one}"]) == 0  # this process: 8 devices
  port = free_port()

  def launch(extra_env):
    return launch_two(args, two, port, extra_env, timeout=600)

  killed = launch({"JAXGEN_KILL_AT": "classifier:3"})
  assert killed.returncode != 0 and not (two / "results.json").exists()
  assert sorted(os.listdir(two / "checkpoints" / "classifier")) == ["2"]
  multi = launch({})
  assert multi.returncode == 0, multi.stderr[-2000:]

  def losses(workdir):  # the last value logged for each step (the killed run logged some twice)
    records = [json.loads(line) for line in open(workdir / "logs" / "metrics.jsonl")]
    return {r["step"]: r["classifier/loss"] for r in records if "classifier/loss" in r}

  assert sorted(losses(one)) == [1, 2, 3, 4] and sorted(losses(two)) == [1, 2, 3, 4]
  np.testing.assert_allclose([losses(two)[s] for s in range(1, 5)], [losses(one)[s] for s in range(1, 5)],
                             rtol=1e-5)
  a, b = (json.loads((w / "results.json").read_text()) for w in (one, two))
  assert a["accuracy"] == b["accuracy"] and a["num_examples"] == b["num_examples"]
  np.testing.assert_allclose(b["nll"], a["nll"], rtol=1e-3)
  # One progress line per step block and one evaluation line: process 1 prints and writes nothing.
  assert multi.stdout.count("[evaluate]") == 1


_LATE_START = """
import sys, time
import jax
from jaxgen.parallel import mesh as m
from jaxgen.stages import run_stages
m.initialize_distributed()
if jax.process_index() == 1:
  time.sleep(5)  # process 0 has finished stage 'load' and written its marker by now
ran = []
def load():  # nothing cross-process in it (as a backbone stage that only reads weights)
  ran.append("load")
def train():
  ran.append("train")
  m.sync_processes("a collective step of train")
run_stages(sys.argv[1], [("load", load), ("train", train)])
print("ran", ran, flush=True)
"""


def test_a_process_that_starts_late_runs_the_stages_the_others_run(tmp_path):
  """Process 0 writes each stage's marker when it ends the stage; a process that started later
  must not take that marker for a stage finished before this launch and skip the stage (it then
  misses the others' barriers and the job hangs: Diff-Mix's two-process test did, 2026-12-06).
  Every process reads the markers before any stage runs."""
  for out in run_two(_LATE_START, str(tmp_path), timeout=120):
    assert "ran ['load', 'train']" in out


def test_a_process_that_reaches_a_gather_40_s_after_the_other_does_not_fail_it(late_gather):
  """XLA:CPU's Gloo collectives give up setting up a gather when one process arrives over 30 s
  after the other (e.g. process 0 still drawing a report); `to_host` waits at a coordination-service
  barrier first (its own one-hour timeout), so the gather starts with both processes there.
  Without it this fails: 'Gloo context initialization failed: DEADLINE_EXCEEDED'."""
  for out in late_gather.stdouts():
    assert f"gathered {[2.0 * i for i in range(16)]}" in out
