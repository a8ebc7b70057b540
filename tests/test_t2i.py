"""The text-to-image backbone: diffusers' step semantics, the v-prediction algebra, config checks,
and the tiny preset end to end (textual-inversion rows, LoRA, report).

Diffusers parity of the sampling itself (DDIM / DPM-Solver++ pipelines, img2img with mixed
strengths) is in the torch group: tests/test_parity_t2i.py.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import main as jaxgen_main
from jaxgen.diffmix import results_page as dm_results_page
from jaxgen.diffmix import synthesis
from jaxgen.errors import ConfigError
from jaxgen.io import shard_cache
from jaxgen.io.params import load_params
from jaxgen.nets.text_encoder import token_embedding
from jaxgen.t2i import backbone as bb
from jaxgen.text.tokenizers import WordTokenizer
from jaxgen.t2i.schedules import SamplerSpec, sampler_grid, scheduler_timesteps, start_index

TINY = "--config=configs/t2i.py:tiny"


def test_scheduler_timesteps_follow_the_diffusers_formulas():
  """SD 1.x's DDIM (leading, offset 1) visits 961, 921, ..., 1; DPM-Solver++ (linspace) the
  rounded linspace(0, 999, K + 1) without its 0; trailing ends at the last training step."""
  np.testing.assert_array_equal(scheduler_timesteps(25, spacing="leading", steps_offset=1),
                                np.arange(961, 0, -40))
  np.testing.assert_array_equal(
      scheduler_timesteps(25, spacing="linspace", scheduler="dpmpp_2m"),
      np.round(np.linspace(0, 999, 26))[::-1][:-1].astype(np.int64))
  trailing = scheduler_timesteps(10, spacing="trailing")
  assert trailing[0] == 999 and trailing[-1] == 99 and np.all(np.diff(trailing) == -100)
  with pytest.raises(ConfigError, match="sampler.timestep_spacing"):
    scheduler_timesteps(10, spacing="karras")


def test_grid_and_strength_semantics():
  """DDIM with set_alpha_to_one=False steps last to alpha_bar_0 (t = 1/N); DPM-Solver++ ends with
  the data prediction and is first order at the end below 15 steps; strength s starts at index
  K - int(K s), at least one step."""
  sde = bb.BackboneConfig.tiny().sde
  g = sampler_grid(SamplerSpec(name="ddim", num_steps=25), sde)
  assert len(g.times) == 26 and not g.denoise and g.times[-1] == np.float32(1 / 1000)
  np.testing.assert_allclose(g.times[:-1], (g.timesteps + 1) / 1000, rtol=1e-6)
  assert sampler_grid(SamplerSpec(name="ddim", num_steps=25, set_alpha_to_one=True), sde).denoise
  g = sampler_grid(SamplerSpec(name="dpmpp_2m", num_steps=10), sde)
  assert len(g.times) == 10 and g.denoise and g.lower_order_final
  assert not sampler_grid(SamplerSpec(name="dpmpp_2m", num_steps=20), sde).lower_order_final
  np.testing.assert_array_equal(start_index(jnp.array([1.0, 0.7, 0.5, 0.3, 0.01]), 25),
                                [0, 8, 13, 18, 24])
  with pytest.raises(ConfigError, match="sampler.eta"):
    SamplerSpec(name="dpmpp_2m", eta=1.0)


def test_v_prediction_algebra_and_config_checks():
  """v = a eps - s x0 and eps = a v + s x_t invert each other for x_t = a x0 + s eps."""
  cfg = bb.BackboneConfig(**{**bb.BackboneConfig.tiny().__dict__, "prediction_type": "v_prediction"})
  k1, k2 = jax.random.split(jax.random.key(0))
  x0, eps = jax.random.normal(k1, (3, 4, 4, 4)), jax.random.normal(k2, (3, 4, 4, 4))
  t = jnp.array([0.05, 0.5, 0.99])
  a = cfg.sde.mean_coeff(t)[:, None, None, None]
  s = cfg.sde.marginal_std(t)[:, None, None, None]
  v = bb.training_target(x0, eps, t, cfg)
  np.testing.assert_allclose(v, a * eps - s * x0, rtol=1e-6)
  np.testing.assert_allclose(bb.noise_prediction(v, a * x0 + s * eps, t, cfg), eps, atol=2e-5)
  tiny = bb.BackboneConfig.tiny()
  with pytest.raises(ConfigError, match="backbone.prediction_type"):
    bb.BackboneConfig(unet=tiny.unet, vae=tiny.vae, text=tiny.text, prediction_type="sample")
  with pytest.raises(ConfigError, match="cross_attention_dim"):
    bb.BackboneConfig(unet=tiny.unet, vae=tiny.vae,
                      text=tiny.text.__class__(width=64, heads=2, vocab_size=10, max_length=8))


@pytest.mark.parametrize("args,needle", [
    (["--config.sampler.name=euler"], "sampler.name"),
    (["--config.finetune.strategy=lora"], "finetune.strategy"),
    (["--config.data.image_size=18"], "data.image_size"),
    (["--config.backbone.unet_heads=3"], "backbone.unet_heads"),
    (["--config.finetune.seeds=(0,0)"], "finetune.seeds"),
    (["--config.backbone.weights_path=/nonexistent/sd15"], "backbone.weights_path"),
    (["--config.finetune.train.batch_size=16"], "finetune.train.batch_size"),
])
def test_bad_values_exit_2_before_anything_runs(capsys, tmp_path, args, needle):
  code = jaxgen_main.run(["jaxgen.main", TINY, f"--workdir={tmp_path}", *args])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and needle in err[0]
  assert not (tmp_path / "stages").exists()


def test_sd15_preset_needs_its_weights(capsys, tmp_path):
  code = jaxgen_main.run(["jaxgen.main", "--config=configs/t2i.py:sd15", f"--workdir={tmp_path}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "backbone.weights_path" in err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny t2i run for this module (the Diff-Mix test below reuses its backbone)."""
  workdir = tmp_path_factory.mktemp("t2i_tiny")
  assert jaxgen_main.run(["jaxgen.main", TINY, f"--workdir={workdir}"]) == 0
  return workdir


@pytest.mark.slow  # ~5.5 min (the tiny run behind it): over the default suite's 15-minute budget on 2 cores
def test_tiny_preset_end_to_end(tiny_run):
  """Every stage runs; fine-tuning moved only the identifier rows of the text encoder; the report
  names data, seed and feature network; a second call skips every stage."""
  tmp_path = tiny_run
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["claims"]) == {
      "prompt_following_above_chance", "guidance_raises_class_accuracy",
      "sdedit_edit_grows_with_strength", "sdedit_fidelity_falls_with_strength",
      "finetuning_improves_class_fidelity", "finetuned_vs_vanilla"}
  assert set(results["sdedit"]) == {"0.3", "0.5", "0.7", "0.9"}
  for name in ("guided", "unguided"):
    assert np.isfinite(results["vanilla"][name]["fid"])
  assert results["finetune"]["diff_gen"]["accuracy"]["values"] and results["seed"] == 0
  ceilings = [*results["real_test_reconstructed"].values(),  # the autoencoder's ceiling rows
              results["target_real_test"]["reconstructed_class_accuracy"]]
  assert len(ceilings) == 4 and all(0.0 <= a <= 1.0 for a in ceilings)
  base = load_params(str(tmp_path / "models" / "denoiser.msgpack"))["text"]["params"]
  tuned = load_params(str(tmp_path / "models" / "finetune_seed0.msgpack"))
  old, new = token_embedding(base), token_embedding(tuned["text"]["params"])
  assert new.shape[0] == old.shape[0] + 3  # three target classes in the tiny preset
  np.testing.assert_array_equal(new[:old.shape[0]], old)  # bit-identical old rows
  cube = WordTokenizer.load(str(tmp_path / "models" / "tokenizer.json")).token_to_id("cube")
  assert np.all(np.any(new[old.shape[0]:] != old[cube], axis=1))  # every identifier row trained
  base_layers = jax.tree.leaves({k: v for k, v in base.items() if k != "embeddings"})
  tuned_layers = jax.tree.leaves({k: v for k, v in tuned["text"]["params"].items()
                                  if k != "embeddings"})
  for a, b in zip(base_layers, tuned_layers):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.leaves(tuned["lora"])  # ti_db trains LoRA factors too
  report = (tmp_path / "report.md").read_text()
  assert "seed: 0" in report and "in-domain" in report and "SDEdit" in report
  assert "real target test images through the autoencoder" in report
  for png in ("samples/vanilla_guided.png", "samples/sdedit.png",
              "samples/target_diff_gen_seed0.png"):
    assert (tmp_path / png).stat().st_size > 100
  before = (tmp_path / "results.json").read_text()
  assert jaxgen_main.run(["jaxgen.main", TINY, f"--workdir={tmp_path}"]) == 0
  assert (tmp_path / "results.json").read_text() == before


@pytest.mark.slow  # ~2.5 min (the default suite's 15-minute budget): Diff-Mix's units are in test_diffmix.py
def test_diffmix_tiny_run_on_this_backbone(tiny_run, tmp_path):
  """Diff-Mix (tests/test_diffmix.py has its unit tests) reusing the tiny t2i run: fine-tuning,
  synthesis with per-image targets and strengths in each shard (each shard split over the 8 test
  devices), the backbone's own filter score, classifiers and the report; a lost shard
  regenerated on 1 device is identical."""
  work = tmp_path / "dm"
  args = ["jaxgen.main", "--config=configs/diffmix.py:tiny", f"--workdir={work}",
          "--config.strategies=('none', 'diff_mix')",
          "--config.filter.scorer=backbone", "--config.filter.drop_fraction=0.25",
          f"--config.t2i_workdir={tiny_run}"]
  assert jaxgen_main.run(args) == 0
  assert not (work / "t2i").exists()  # reused, not retrained
  results = json.loads((work / "results.json").read_text())
  comp = results["comparison"]
  assert set(comp) == {"none", "diff_mix"}
  for entry in comp.values():
    assert 0.0 <= entry["accuracy_mean"] <= 1.0 and entry["seeds"] == [0]
    assert len(entry["per_class_accuracy_mean"]) == 3
  assert set(results["synthetic"]) == {"diff_mix"}
  assert "in-domain" in results["feature_network"]
  assert "not claimed" in (work / "report.md").read_text()
  page, unlisted = dm_results_page.build(str(work))  # every table number is in results.json
  assert not unlisted and "## Few-shot comparison" in page and "same CPU model" in page
  cache = work / "synthetic" / "seed0" / "diff_mix"
  syn = shard_cache.read_shards(str(cache), 18)
  assert syn["images"].shape == (18, 16, 16, 3)
  first = slice(0, 8)  # one shard = one sampler call
  assert len(set(syn["target_class"][first])) > 1 and len(set(syn["strength"][first])) > 1
  np.testing.assert_allclose(syn["soft_label"], synthesis.soft_labels(
      syn["reference_class"], syn["target_class"], syn["strength"], 0.5, 3), atol=1e-7)
  with np.load(cache / "filter.npz") as f:
    assert f["keep"].sum() == 18 - 4 and np.all((f["score"] >= 0) & (f["score"] <= 1))
  manifest = json.loads((cache / "manifest.json").read_text())
  assert "finetune_seed0.msgpack" in manifest["backbone_checkpoints"]
  # synthesis.stream: the sets stay in the cache on disk (scored and featurised 16 at a time,
  # the classifier's picks read per step); the scores, weights and numbers are the same
  stream = tmp_path / "dm_stream"
  shutil.copytree(work, stream)
  shutil.rmtree(stream / "checkpoints" / "classifier_seed0_diff_mix")
  (stream / "models" / "classifier_seed0_diff_mix.json").unlink()
  (stream / "synthetic" / "seed0" / "diff_mix" / "filter.npz").unlink()
  assert jaxgen_main.run([*args[:2], f"--workdir={stream}", *args[3:],
                          "--config.synthesis.stream=true", "--force",
                          "--stages=filter,train_classifiers,evaluate,report"]) == 0
  with np.load(cache / "filter.npz") as f, \
      np.load(stream / "synthetic" / "seed0" / "diff_mix" / "filter.npz") as g:
    np.testing.assert_array_equal(f["score"], g["score"])
  streamed = json.loads((stream / "results.json").read_text())
  assert streamed["comparison"] == results["comparison"]
  assert streamed["synthetic"] == results["synthetic"]
  with np.load(cache / "shard_00001.npz") as f:
    before = f["images"].copy()
  # the run above split each shard over 8 devices; regenerate a lost shard on 1 device
  os.remove(cache / "shard_00001.npz")
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") +
             " --xla_force_host_platform_device_count=1")
  done = subprocess.run([sys.executable, "-m", *args, "--stages=synthesize",
                         "--force"], env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  with np.load(cache / "shard_00001.npz") as f:
    np.testing.assert_array_equal(f["images"], before)



@pytest.mark.slow  # ~1 min
def test_diffmix_study_runs_on_this_backbone(tiny_run, tmp_path):
  """A study preset runs its runs as complete Diff-Mix runs on one backbone and gathers them."""
  work = tmp_path / "study"
  assert jaxgen_main.run(["jaxgen.main", "--config=configs/diffmix.py:tiny", f"--workdir={work}",
                          "--config.study=conventional", "--config.study_runs=('mixup',)",
                          f"--config.t2i_workdir={tiny_run}"]) == 0
  results = json.loads((work / "results.json").read_text())
  run = results["study"]["runs"]["mixup"]
  assert results["study"]["name"] == "conventional" and list(results["study"]["runs"]) == ["mixup"]
  assert run["overrides"]["classifier.mixup_alpha"] == 1.0 and run["num_real"] == 21  # all shots
  assert set(run["comparison"]) == {"none"}
  assert (work / "study" / "mixup" / "report.md").exists()
  assert "Table 1" in (work / "report.md").read_text()
  page, unlisted = dm_results_page.build(str(work))  # a study's results page: its study table
  assert not unlisted and "the `tiny` preset" in page and "configs/diffmix.py:tiny" in page
  assert "| mixup | no augmentation" in page



@pytest.mark.slow  # ~2 min
def test_diffmix_on_an_image_folder_source(tiny_run, tmp_path):
  """The paper presets' path (data.target='source') end to end on a written image folder, at a
  size other than the backbone's: class-name prompts for the vanilla backbone, the real-set
  classifier as judge, real batches streamed from the folder (grain, flipped per step) and the
  synthetic sets kept on disk (synthesis.stream)."""
  from jaxgen.io.images import save_png
  rng = np.random.default_rng(0)
  for split, n in (("train", 4), ("test", 2)):
    for c, name in enumerate(("red_box", "blue_box", "green_box")):
      for i in range(n):
        img = np.zeros((24, 24, 3), np.uint8)
        img[..., c] = 200
        img += rng.integers(0, 40, img.shape).astype(np.uint8)
        save_png(str(tmp_path / "folder" / split / name / f"{i}.png"), img)
  work = tmp_path / "dm"
  assert jaxgen_main.run([
      "jaxgen.main", "--config=configs/diffmix.py:tiny", f"--workdir={work}",
      f"--config.t2i_workdir={tiny_run}", "--config.data.target=source",
      "--config.data.source=folder", f"--config.data.data_dir={tmp_path / 'folder'}",
      "--config.data.image_size=24", "--config.data.num_classes=3", "--config.data.metaclass=cube",
      "--config.data.shots=0", "--config.strategies=('none', 'real_mix', 'diff_mix')",
      "--config.data.augment=flip", "--config.synthesis.stream=true"]) == 0
  results = json.loads((work / "results.json").read_text())
  assert set(results["comparison"]) == {"none", "real_mix", "diff_mix"}
  assert results["num_real"] == 12 and "real-set resnet18 classifier" in results["feature_network"]
  syn = shard_cache.read_shards(str(work / "synthetic" / "seed0" / "real_mix"), 24)
  assert syn["images"].shape == (24, 24, 24, 3)
  record = json.loads((work / "models" / "classifier_seed0_diff_mix.json").read_text())
  assert record["real_augment"] == "flip" and record["synthetic"].startswith("cache:")


# checkpoints every 2 steps, written synchronously (an asynchronous save may still be in flight
# when the kill lands, and the stage would rightly restart from 0), so a kill at step 2 resumes
# mid-stage
RESUME_FLAGS = [f"--config.{s}.train.{k}" for s in ("autoencoder", "denoiser", "judge", "finetune")
                for k in ("checkpoint_every=2", "async_checkpoints=false")]


def _cli(workdir, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "jaxgen.main", TINY, f"--workdir={workdir}",
                         *RESUME_FLAGS],
                        env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # ~10 min: four killed runs and two complete ones of the tiny preset
def test_kill_and_resume_of_every_training_stage_gives_the_uninterrupted_weights(tmp_path):
  """SIGKILL at step 2 of the autoencoder, the denoiser, a judge and a fine-tuning run (each
  resumes from its step-2 checkpoint, finished stages kept); the final weights and results equal
  those of an uninterrupted run."""
  full, killed = tmp_path / "full", tmp_path / "killed"
  assert _cli(full).returncode == 0
  previous = None
  for stage in ("autoencoder", "denoiser", "judge_target", "finetune_seed0", None):
    out = _cli(killed, {"JAXGEN_KILL_AT": f"{stage}:2"} if stage else None)
    assert out.returncode == (-9 if stage else 0), (stage, out.stderr[-2000:])
    if previous:  # the stage killed last time picked up from its step-2 checkpoint
      assert f"[{previous}] resumed from checkpoint at step 2" in out.stdout + out.stderr
    previous = stage
  for name in ("autoencoder.msgpack", "denoiser.msgpack", "finetune_seed0.msgpack"):
    assert (full / "models" / name).read_bytes() == (killed / "models" / name).read_bytes(), name
  a = json.loads((full / "results.json").read_text())
  b = json.loads((killed / "results.json").read_text())
  assert a["finetune"] == b["finetune"] and a["vanilla"] == b["vanilla"]
