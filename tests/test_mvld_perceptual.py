"""MVLD's autoencoder feature loss (`autoencoder.perceptual_weight`): the distance equals the
in-domain LPIPS of jaxgen.metrics, it trains the autoencoder through its reconstruction only, the
stage that trains its network resumes after a kill like the other training stages; and the
cross-architecture check of the autoencoder ceiling (`jaxgen.mvld.judge_transfer`)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import main as jaxgen_main
from jaxgen.classifier.inference import Classifier
from jaxgen.metrics.lpips import domain_lpips
from jaxgen.mvld import judge_transfer
from jaxgen.mvld.judges import LPIPS_LAYERS
from jaxgen.mvld.train import feature_distance_fn
from jaxgen.nets.classifiers import build_classifier
from jaxgen.nets.common import to_model_range
import two_process

TINY = "--config=configs/mvld.py:tiny"


def _classifier(normalization):
  module = build_classifier("resnet18", 5, width=8)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  return Classifier(module, variables, 5, normalization=normalization)


@pytest.mark.parametrize("normalization", ["minus_one_one", "imagenet"])
def test_feature_distance_is_the_mean_domain_lpips_and_differentiates_the_reconstruction_only(
    normalization):
  """Against `domain_lpips` on the uint8 images through the classifier's own preprocessing (an
  independent path: no [-1, 1] model range), to float32 rounding (rtol 1e-5)."""
  clf = _classifier(normalization)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  y = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  distance = jax.jit(feature_distance_fn(clf, LPIPS_LAYERS))
  ours = distance(to_model_range(x), to_model_range(y))
  reference = domain_lpips(y, x, clf.apply_fn, clf.variables, LPIPS_LAYERS, {"train": False},
                           preprocess=clf.preprocess)
  np.testing.assert_allclose(float(ours), float(np.mean(reference)), rtol=1e-5)
  assert float(distance(to_model_range(x), to_model_range(x))) == pytest.approx(0.0, abs=1e-6)
  g_target, g_reconstruction = jax.jit(jax.grad(distance, argnums=(0, 1)))(to_model_range(x), to_model_range(y))
  assert float(jnp.max(jnp.abs(g_target))) == 0.0  # the target is data, not trained towards
  assert float(jnp.max(jnp.abs(g_reconstruction))) > 0.0


def _metrics(workdir):
  """{(key, step): value} of the autoencoder's logged L1, feature distance and gradient norm."""
  return {k: v for k, v in two_process.losses(workdir, ("/l1", "/feature_distance", "/grad_norm")).items()
          if k[0].startswith("autoencoder/")}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
  """The tiny preset's data and autoencoder, with the feature loss (weight 0.5) and without."""
  root = tmp_path_factory.mktemp("perceptual")
  stages = "--stages=data,train_autoencoder"
  on, off = root / "on", root / "off"
  assert jaxgen_main.run(["jaxgen.main", TINY, f"--workdir={on}", stages,
                          "--config.autoencoder.perceptual_weight=0.5"]) == 0
  assert jaxgen_main.run(["jaxgen.main", TINY, f"--workdir={off}", stages]) == 0
  return on, off


def test_tiny_autoencoder_trains_with_the_feature_loss_of_its_own_network(tiny_runs):
  """With perceptual_weight > 0 the autoencoder stage first trains its feature network
  (checkpoints/perceptual, not the judge's checkpoints/classifier) and logs the L1 and the
  feature distance; with 0 it trains no network and logs the L1 alone."""
  on, off = tiny_runs
  assert (on / "checkpoints" / "perceptual").is_dir() and not (on / "checkpoints" / "classifier").exists()
  assert not (off / "checkpoints" / "perceptual").exists()
  m_on, m_off = _metrics(on), _metrics(off)
  distances = [v for (k, _), v in m_on.items() if k == "autoencoder/feature_distance"]
  assert distances and all(np.isfinite(distances)) and all(d > 0 for d in distances)
  assert not any(k == "autoencoder/feature_distance" for k, _ in m_off)
  # Same data, initialisation and batches: only the loss differs, so the trained L1 differs.
  l1 = lambda m: [v for (k, s), v in sorted(m.items(), key=lambda kv: kv[0][1]) if k == "autoencoder/l1"]
  assert l1(m_on) and len(l1(m_on)) == len(l1(m_off)) and l1(m_on)[-1] != l1(m_off)[-1]


@pytest.mark.slow  # ~35 s: trains a MobileNetV3 (compilation); its refusal below is in the default suite
def test_judge_transfer_scores_each_runs_reconstructions(tiny_runs, tmp_path):
  """`python -m jaxgen.mvld.judge_transfer` on the two runs (as seed 0): accuracies of a
  MobileNetV3 judge on the real test views and on each run's reconstructions, in [0, 1], with
  mean / std over the seeds."""
  on, off = tiny_runs
  out = tmp_path / "jt"
  assert judge_transfer.main(["--runs", f"l1={off}", f"perceptual={on}", "--seeds", "0",
                              "--out", str(out), "--judge-steps", "4"]) == 0
  record = json.loads((out / "judge_transfer.json").read_text())
  assert set(record["per_seed"]["0"]) == {"real", "l1", "perceptual"}
  assert all(0.0 <= v <= 1.0 for v in record["per_seed"]["0"].values())
  assert record["summary"]["real"]["values"] == [record["per_seed"]["0"]["real"]]
  assert record["judge_steps"] == 4


def test_judge_transfer_refuses_runs_of_other_data_before_training(tiny_runs, tmp_path):
  _, off = tiny_runs
  other = tmp_path / "other"
  other.mkdir()
  config = json.loads((off / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**config, "seed": 1}))
  with pytest.raises(SystemExit, match="other data or seed"):
    judge_transfer.main(["--runs", f"l1={off}", f"x={other}", "--seeds", "0",
                         "--out", str(tmp_path / "jt")])
  assert not (tmp_path / "jt").exists()


@pytest.mark.slow  # ~60 s: three processes; the loop's and the classifier's resumes are in the default suite
def test_killed_in_the_autoencoder_with_the_feature_loss_resumes_to_the_uninterrupted_run(tmp_path):
  flags = [TINY, "--config.autoencoder.perceptual_weight=0.5",
           "--config.autoencoder.train.num_steps=30",
           "--config.autoencoder.train.async_checkpoints=false", "--stages=data,train_autoencoder"]

  def cli(workdir, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "jaxgen.main", *flags, f"--workdir={workdir}"],
                          env=env, capture_output=True, text=True, timeout=600)

  full, killed = tmp_path / "full", tmp_path / "killed"
  assert cli(full).returncode == 0
  first = cli(killed, {"JAXGEN_KILL_AT": "autoencoder:25"})
  assert first.returncode == -9, first.stderr[-2000:]
  second = cli(killed)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "resumed from checkpoint at step 20" in second.stderr + second.stdout
  a, b = _metrics(full), _metrics(killed)
  assert set(a) == set(b) and any(k == "autoencoder/feature_distance" for k, _ in a)
  for key in a:
    assert b[key] == pytest.approx(a[key], rel=1e-6), key
