"""MVLD from the command line: the tiny preset end to end, its first stages as two processes, and
kill-and-resume of both trainings."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxgen import main as jaxgen_main
import two_process
from notebooks import outputs_of, run_notebook

TINY = "--config=configs/mvld.py:tiny"
# Longer than the preset so a kill lands mid-stage; checkpoints every 10 steps.
# Synchronous saves make "the step-20 checkpoint is on disk when step 25 is killed" certain.
RESUME_FLAGS = ["--config.autoencoder.train.num_steps=30", "--config.diffusion.train.num_steps=30",
                "--config.autoencoder.train.async_checkpoints=false",
                "--config.diffusion.train.async_checkpoints=false",
                "--stages=data,train_autoencoder,train_diffusion"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny preset, one process on 8 devices: the end-to-end test's run and the two-process
  test's reference."""
  return two_process.one_process_tiny_run(tmp_path_factory, "mvld")


def test_tiny_preset_writes_table1_transmission_and_report(tiny_run):
  results = json.loads((tiny_run / "results.json").read_text())
  for k in ("1", "2", "3"):
    for metric in ("psnr", "ssim", "lpips", "fid", "coherence"):
      assert isinstance(results["table1"][k][metric], float)
  assert {"psnr", "ssim"} <= set(results["table1"]["autoencoder"])
  for metric in ("kid", "intra_kid", "inception_score", "lpips_diversity"):
    assert isinstance(results["table1"]["1"][metric], float)
  assert results["table1"]["real_views"]["inception_score"] >= 1.0
  assert results["num_classes"] == 12 and results["seed"] == 0
  assert "in-domain" in results["feature_network"] and results["data"].startswith("embedded")
  assert {r["bits"] for r in results["transmission"]} == {32, 4}
  study = results["sampler_study"]  # tiny: DDIM at 4 network evaluations
  assert set(study) == {"ddim"} and study["ddim"]["4"]["nfe"] == 4
  assert set(study["ddim"]["4"]["by_count"]) == {"1", "2", "3"}
  assert results["sampler_study_reaches"]["ddim"] == 4  # the reference reaches itself
  base = results["transmission_baselines"]  # JPEG q50, grey or generated unsent views
  assert {(r["codec"], r["fill"]) for r in base} == {("jpeg", "generate"), ("jpeg", "grey"), ("jpeg", "none")}
  assert all(r["bytes"] < r["file_bytes"] and r["psnr"] > 5 for r in base)
  assert results["transmission_equal_psnr"][0]["baselines"]["JPEG + grey"]["how"] in (
      "interpolated", "at most", "not reached")
  report = (tiny_run / "report.md").read_text()
  assert "Table I" in report and "Transmission" in report and "seed: 0" in report
  assert "Quality per network evaluation" in report
  for png in ("samples/table1_examples.png", "samples/joint.png", "eval/transmission.png",
              "eval/sampler_study.png"):
    assert (tiny_run / png).stat().st_size > 100
  # The results page is generated from the JSON (claims over seeds) and checks its numbers.
  from jaxgen.mvld import claims, results_page
  summary = claims.summarise({0: results, 1: results})
  assert summary["table1"]["1"]["psnr"]["std"] == 0.0 and summary["seeds"] == [0, 1]
  assert set(summary["trend"]) == {"psnr", "ssim", "lpips", "fid", "coherence"}
  gap = results["table1"]["real_views"]["coherence"] - results["table1"]["autoencoder"]["coherence"]
  assert summary["ceiling_coherence_gap"]["mean"] == pytest.approx(gap)
  page = results_page.build(summary, results)
  assert "Table I" in page and "Transmission" in page and "equal PSNR" in page
  assert "Quality per network evaluation" in page
  assert ("- sampler: ddim (eta 1), 9 steps + a final denoising step, SDE vpsde, score network "
          "predicting v") in page  # the default's sampler and parametrisation, as run
  # a preset's page names its config and keeps its figures apart from the default page's
  assert "the autoencoder caps coherence" in page
  assert "configs/mvld.py:tiny" in page and "img/mvld_tiny_table1_examples.png" in page
  assert results_page.check_numbers(
      page, [summary, results, results_page.PAPER_TABLE1]) == []
  assert results_page.check_numbers(page + "\n| 123.456789 |", [summary, results]) == ["123.456789"]
  # The Colab notebook on this run in a Jupyter kernel: its run call (a second run) skips every
  # finished stage and changes nothing; report, figures and the API's generation of missing views
  # (asserted inside the notebook) all execute.
  before = (tiny_run / "results.json").read_text()
  nb = run_notebook("mvld", tiny_run)
  assert len(outputs_of(nb, "image/png")) >= 5 and outputs_of(nb, "text/markdown")
  assert (tiny_run / "results.json").read_text() == before


def test_two_process_first_stages_killed_and_resumed_match_one_process(tiny_run, tmp_path):
  """The autoencoder and score network trained by two processes x 4 devices, SIGKILLed in the
  diffusion training and launched again: the tiny run's losses (tests/two_process.py)."""
  two_process.first_stages_match("mvld", tiny_run, tmp_path / "two")


def _losses(workdir):
  """Last logged value per (stage, step): a resumed run re-logs the steps after its checkpoint."""
  return two_process.losses(pathlib.Path(workdir), ("/l1", "/loss"))


def _cli(workdir, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "jaxgen.main", TINY, f"--workdir={workdir}", *RESUME_FLAGS],
                        env=env, capture_output=True, text=True, timeout=600)


def test_results_page_compares_the_autoencoder_loss_with_eq1_alone_over_seeds(tiny_run):
  """`--baseline-root`: the same seeds with eq. 1 alone against the feature loss, per metric and
  views, with compare_over_seeds' verdict in words; refused when the runs differ elsewhere."""
  import copy
  from jaxgen.mvld import claims, results_page
  results = json.loads((tiny_run / "results.json").read_text())

  def variant(weight, coherence_shift):
    r = copy.deepcopy(results)
    r["config"]["autoencoder"]["perceptual_weight"] = weight
    for row in r["table1"].values():
      if "coherence" in row and row is not r["table1"]["real_views"]:
        row["coherence"] = min(1.0, row["coherence"] * 0.5 + coherence_shift)
    return r

  ours = {s: variant(0.5, 0.4 + 0.01 * s) for s in range(3)}
  base = {s: variant(0.0, 0.01 * s) for s in range(3)}
  page = results_page.build(claims.summarise(ours), ours[0],
                            (claims.summarise(base), base[0]))
  section = page.split("## Autoencoder loss: eq. 1 alone against the default")[1]
  coherence_rows = [line for line in section.splitlines() if line.startswith("| coherence")]
  assert len(coherence_rows) == 4 and all("better, beyond one std" in r for r in coherence_rows)
  assert "autoencoder ceiling" in section and "| psnr (up) |" in section
  sources = [claims.summarise(ours), ours[0], results_page.PAPER_TABLE1, claims.summarise(base), base[0]]
  assert results_page.check_numbers(page, sources) == []
  other = copy.deepcopy(base[0])
  other["config"]["sampler"]["num_steps"] += 1
  with pytest.raises(ValueError, match="more than autoencoder.perceptual"):
    results_page.build(claims.summarise(ours), ours[0], (claims.summarise(base), other))
  with pytest.raises(ValueError, match="feature loss too"):
    results_page.build(claims.summarise(ours), ours[0], (claims.summarise(ours), ours[0]))


@pytest.mark.slow  # ~90 s; the train loop's own kill-and-resume test runs in the default suite
def test_kill_and_resume_both_training_stages_reproduce_the_uninterrupted_run(tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  assert _cli(full).returncode == 0
  # SIGKILL mid-autoencoder (after the step-10 and -20 checkpoints), then mid-diffusion.
  first = _cli(killed, {"JAXGEN_KILL_AT": "autoencoder:25"})
  assert first.returncode == -9, first.stderr[-2000:]
  second = _cli(killed, {"JAXGEN_KILL_AT": "diffusion:15"})
  assert second.returncode == -9, second.stderr[-2000:]
  assert "resumed from checkpoint at step 20" in second.stderr + second.stdout
  third = _cli(killed)
  assert third.returncode == 0, third.stderr[-2000:]
  assert "resumed from checkpoint at step 10" in third.stderr + third.stdout
  a, b = _losses(full), _losses(killed)
  assert set(a) == set(b) and len(a) >= 6
  for key in a:
    assert b[key] == pytest.approx(a[key], rel=1e-6), key


@pytest.mark.slow  # ~25 s; the VE SDE's maths and samplers are in test_sde*.py, its config in test_mvld_parts
def test_tiny_ve_sde_run_trains_and_generates(tmp_path):
  """diffusion.sde=vesde with its own section (sigma_min, sigma_max): the tiny preset trains the
  score network and generates views from the VE-SDE's prior (finite loss, images written); the
  loaded model's SDE carries the configured parameters."""
  args = ["jaxgen.main", TINY, f"--workdir={tmp_path}", "--config.diffusion.sde=vesde",
          "--config.diffusion.vesde.sigma_max=20.0",
          # the default v prediction and DDIM sampler, and the tiny study's DDIM, are VP-only
          "--config.diffusion.prediction=eps", "--config.sampler.name=euler_maruyama",
          "--config.sampler_study.enabled=false",
          "--stages=data,train_autoencoder,train_diffusion,sample"]
  assert jaxgen_main.run(args) == 0
  losses = [v for (k, _), v in _losses(tmp_path).items() if k.startswith("diffusion")]
  assert losses and all(v == v and abs(v) < 1e6 for v in losses)
  assert (tmp_path / "samples" / "joint.png").stat().st_size > 100
  from jaxgen.mvld.api import MVLD
  model = MVLD.from_workdir(str(tmp_path))
  assert model.spec.sde.name == "vesde" and model.spec.sde.sigma_max == 20.0


@pytest.mark.slow  # ~2 min: the authors' autoencoder is large even at 16x16
def test_tiny_run_with_the_authors_networks_augmentation_and_sampler(tmp_path):
  """The nmr preset's elements on the tiny data: autoencoder.kind=mld_cub with TrivialAugmentWide,
  score_net.kind=unet_mlp (scaled down), RePaint with Euler-Maruyama steps; training is finite and
  the conditional samples keep the observed views' reconstructions."""
  args = ["jaxgen.main", TINY, f"--workdir={tmp_path}", "--config.autoencoder.kind=mld_cub",
          "--config.autoencoder.augment=trivial_augment_wide",
          "--config.diffusion.score_net.kind=unet_mlp", "--config.diffusion.score_net.unet_init_dim=64",
          "--config.diffusion.score_net.unet_time_dim=32", "--config.sampler.name=repaint",
          "--config.sampler.num_steps=20", "--config.sampler.jump_length=5",
          "--config.sampler.num_repeats=2", "--config.sampler.predictor=euler_maruyama",
          "--stages=data,train_autoencoder,train_diffusion,sample"]
  assert jaxgen_main.run(args) == 0
  losses = _losses(tmp_path)
  assert losses and all(v == v and abs(v) < 1e6 for v in losses.values())
  import jax
  import numpy as np

  from jaxgen.mvld.api import MVLD
  model = MVLD.from_workdir(str(tmp_path))
  assert type(model.spec.score_net).__name__ == "UnetMLP"
  assert type(model.spec.autoencoder).__name__ == "MLDCubAutoencoder"
  from jaxgen.mvld.data import load_views
  images = load_views(model.config, str(tmp_path))["test_images"][:2]
  observed = np.array([[1, 0, 0, 0], [0, 1, 1, 0]], bool)
  views = model.generate(images, observed, jax.random.key(0))
  recon = model.decode(model.encode(images))
  assert views.shape == images.shape and views.dtype == np.uint8
  np.testing.assert_array_equal(views[observed], recon[observed])
