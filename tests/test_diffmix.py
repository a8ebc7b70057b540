"""Diff-Mix (paper 001): soft labels, the synthesis plan (per-example target and strength, tail
weighting), the confidence filter, the resumable synthetic cache, validation, and a tiny run (and its
fine-tuning as two processes)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import main as jaxgen_main
from jaxgen.data.pipeline import resize_center_crop
from jaxgen.diffmix import filtering, synthesis
from jaxgen.diffmix import data as dm_data
from jaxgen.diffmix import main as dm_main
from jaxgen.diffmix import validation as dm_validation
from jaxgen.diffmix import report as dm_report
from jaxgen.errors import ConfigError, DataError
from jaxgen.io import shard_cache
from jaxgen.io.report import comparison_words
from jaxgen.nets import cond_unet
from jaxgen.t2i import backbone as bb
from jaxgen.t2i.sampling import sample_latents
from jaxgen.t2i.schedules import SamplerSpec
import two_process
from notebooks import outputs_of, run_notebook


# --------------------------------------------------------------------------- annotation

def test_soft_label_direction_matches_the_papers_example():
  """Eq. 3 with gamma = 0.5, s = 0.7: 0.16 on the reference class, 0.84 on the target (Table 6's
  caption); aug rows are one-hot; gamma = 0 puts everything on the target."""
  y = synthesis.soft_labels(np.array([1, 2, 0]), np.array([3, 2, 0]), np.array([0.7, 0.9, 0.5]),
                            0.5, 4)
  np.testing.assert_allclose(y[0], [0, 1 - 0.7 ** 0.5, 0, 0.7 ** 0.5], atol=1e-7)
  assert round(float(y[0, 1]), 2) == 0.16 and round(float(y[0, 3]), 2) == 0.84
  np.testing.assert_array_equal(y[1], [0, 0, 1, 0])
  np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
  # gamma = 0.1, s = 0.7 -> 0.04 / 0.96 (the caption's other example)
  y = synthesis.soft_labels(np.array([0]), np.array([1]), np.array([0.7]), 0.1, 2)
  assert round(float(y[0, 0]), 2) == 0.04 and round(float(y[0, 1]), 2) == 0.96
  np.testing.assert_array_equal(synthesis.soft_labels(np.array([0]), np.array([1]),
                                                      np.array([0.7]), 0.0, 2), [[0, 1]])
  with pytest.raises(ConfigError, match="synthesis.gamma"):
    synthesis.soft_labels(np.array([0]), np.array([1]), np.array([0.7]), -1.0, 2)


def test_plan_draws_target_and_strength_per_image():
  labels = np.repeat(np.arange(5), 4)
  mix = synthesis.plan_synthesis(labels, 5, kind="mix", multiplier=3, strengths=(0.5, 0.7, 0.9),
                                 target_sampling="uniform", seed=0)
  assert len(mix["target_class"]) == 60
  np.testing.assert_array_equal(mix["reference_index"], np.tile(np.arange(20), 3))
  np.testing.assert_array_equal(mix["reference_class"], labels[mix["reference_index"]])
  first = slice(0, 10)  # one sampler batch: several targets and strengths in it
  assert len(set(mix["strength"][first].tolist())) > 1 and len(set(mix["target_class"][first])) > 1
  assert {round(float(v), 3) for v in mix["strength"]} == {0.5, 0.7, 0.9}
  assert np.any(mix["target_class"] != mix["reference_class"])
  aug = synthesis.plan_synthesis(labels, 5, kind="aug", multiplier=2, strengths=(0.7,),
                                 target_sampling="uniform", seed=0)
  np.testing.assert_array_equal(aug["target_class"], aug["reference_class"])
  np.testing.assert_allclose(aug["strength"], 0.7)
  gen = synthesis.plan_synthesis(labels, 5, kind="gen", multiplier=2, strengths=(0.7,),
                                 target_sampling="uniform", seed=0)
  assert np.all(gen["reference_index"] == -1) and np.all(gen["strength"] == 1.0)
  again = synthesis.plan_synthesis(labels, 5, kind="mix", multiplier=3, strengths=(0.5, 0.7, 0.9),
                                   target_sampling="uniform", seed=0)
  for k in mix:
    np.testing.assert_array_equal(mix[k], again[k])
  with pytest.raises(ConfigError, match="synthesis.strengths"):
    synthesis.plan_synthesis(labels, 5, kind="mix", multiplier=1, strengths=(0.0,),
                             target_sampling="uniform", seed=0)
  with pytest.raises(ConfigError, match="strategies"):
    synthesis.split_strategy("none")


def test_tail_weighted_targets_follow_one_over_count_plus_one():
  """p(c) = (1 / (n_c + 1)) / sum; the drawn targets match it (3-sigma binomial bounds)."""
  counts = np.array([40, 10, 4, 1, 0])
  p = synthesis.target_distribution(counts, "tail")
  expected = (1 / (counts + 1)) / np.sum(1 / (counts + 1))
  np.testing.assert_allclose(p, expected, rtol=1e-12)
  np.testing.assert_allclose(synthesis.target_distribution(counts, "uniform"), 0.2)
  labels = np.repeat(np.arange(5), counts)
  plan = synthesis.plan_synthesis(labels, 5, kind="mix", multiplier=100, strengths=(0.7,),
                                  target_sampling="tail", seed=1)
  m = len(plan["target_class"])
  freq = np.bincount(plan["target_class"], minlength=5) / m
  assert np.all(np.abs(freq - expected) < 3 * np.sqrt(expected * (1 - expected) / m))
  assert freq[4] > freq[0] * 10  # the empty class is drawn most, the head class least


def test_referable_classes_limit_the_references_of_each_target():
  """Fig. 7b: with r referable classes, target t takes references only from t, t-1, ..., t-r+1."""
  labels = np.repeat(np.arange(6), 5)
  plan = synthesis.plan_synthesis(labels, 6, kind="mix", multiplier=20, strengths=(0.7,),
                                  target_sampling="uniform", seed=0, referable_classes=2)
  for t in range(6):
    refs = set(plan["reference_class"][plan["target_class"] == t].tolist())
    assert refs == {t, (t - 1) % 6}
  full = synthesis.plan_synthesis(labels, 6, kind="mix", multiplier=20, strengths=(0.7,),
                                  target_sampling="uniform", seed=0, referable_classes=0)
  assert len(set(full["reference_class"][full["target_class"] == 0].tolist())) == 6


# --------------------------------------------------------------------------- filtering

def test_filter_keeps_the_confident_images():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.3, 0.7]])
  scores = filtering.target_confidence(probs, np.array([0, 0, 1, 0, 1]))
  np.testing.assert_allclose(scores, [0.9, 0.2, 0.4, 0.5, 0.7])
  np.testing.assert_array_equal(filtering.keep_mask(scores, 0.4), [1, 0, 0, 1, 1])
  np.testing.assert_array_equal(filtering.keep_mask(scores, 0.0), [1] * 5)
  # ties: the later image goes first
  np.testing.assert_array_equal(filtering.keep_mask(np.array([0.5, 0.5, 0.5]), 0.34),
                                [1, 1, 0])
  with pytest.raises(ConfigError, match="filter.drop_fraction"):
    filtering.keep_mask(scores, 1.0)


def test_diffusion_classifier_scores_match_a_numpy_loop():
  """A toy eps model that is exact for class means mu_c: the image drawn near mu_1 gets class 1;
  the log-probabilities equal an explicit NumPy loop over times and classes (atol 1e-5)."""
  rng = np.random.default_rng(0)
  mus = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
  x0 = (mus[[1, 2]] + 0.05 * rng.normal(size=(2, 4, 4, 2))).astype(np.float32)
  a = np.array([0.9, 0.6, 0.3], np.float32)
  s = np.sqrt(1 - a ** 2).astype(np.float32)
  times = np.array([0.2, 0.5, 0.8], np.float32)
  noise = rng.normal(size=(3, 2, 4, 4, 2)).astype(np.float32)
  contexts = mus.reshape(3, 1, -1)  # the "prompt" carries the class mean

  def eps_model(z, t, context):
    k = jnp.searchsorted(jnp.asarray(times), t[0])
    mu = context[:, 0].reshape(z.shape)
    return (z - jnp.asarray(a)[k] * mu) / jnp.asarray(s)[k]

  logp = np.asarray(filtering.diffusion_class_log_probs(
      eps_model, jnp.asarray(x0), jnp.asarray(contexts), jnp.asarray(times), jnp.asarray(noise),
      jnp.asarray(a), jnp.asarray(s)))
  err = np.zeros((2, 3))
  for i in range(2):
    for c in range(3):
      for k in range(3):
        z = a[k] * x0[i] + s[k] * noise[k, i]
        err[i, c] += np.sum(((z - a[k] * mus[c]) / s[k] - noise[k, i]) ** 2) / 3
  ref = -err - np.log(np.sum(np.exp(-err - (-err).max(1, keepdims=True)), 1, keepdims=True)) \
      - (-err).max(1, keepdims=True)
  np.testing.assert_allclose(logp, ref, atol=1e-4, rtol=1e-5)
  np.testing.assert_array_equal(logp.argmax(axis=1), [1, 2])


# --------------------------------------------------------------------------- per-example SDEdit

def test_one_sampler_batch_mixes_targets_and_strengths():
  """Each row of one SDEdit call uses its own prompt and strength: permuting the rows (prompts,
  strengths, references and noise together) permutes the outputs. The authors' script used the
  first item's target and the last item's strength for a whole batch, which would break this."""
  cfg = bb.BackboneConfig.tiny()
  unet = {"params": cond_unet.init_params(cfg.unet, jax.random.key(0))}
  spec = SamplerSpec(name="dpmpp_2m", num_steps=6)
  rng = np.random.default_rng(0)
  init = jnp.asarray(rng.normal(size=(3,) + cfg.latent_shape), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(3,) + cfg.latent_shape), jnp.float32)
  # three different prompts' text states
  context = jnp.asarray(rng.normal(size=(3, cfg.text.max_length, cfg.text.width)), jnp.float32)
  strength = jnp.asarray([0.3, 0.6, 0.9])

  def run(order):
    return np.asarray(sample_latents(unet, cfg, spec, jax.random.key(1), context[order],
                                     None, 1.0, init_latents=init[order],
                                     strength=strength[order], noise=noise[order]))

  base = run(np.array([0, 1, 2]))
  for order in ([2, 0, 1], [1, 2, 0]):
    np.testing.assert_allclose(run(np.array(order)), base[order], atol=2e-5)
  # the strength matters: the weakest edit stays closest to its reference latents
  dist = np.linalg.norm((base - np.asarray(init)).reshape(3, -1), axis=1)
  assert dist[0] < dist[2]


# --------------------------------------------------------------------------- the cache

def _planned_shard(plan, calls):
  def make(shard, index):
    calls.append(shard)
    # a toy "translation": the image encodes its reference, target and strength
    img = (plan["reference_index"][index, None, None, None] * 7 + plan["target_class"][index,
           None, None, None] * 3 + (plan["strength"][index, None, None, None] * 10)) % 256
    return {"images": np.broadcast_to(img, (len(index), 2, 2, 3)).astype(np.uint8),
            **{k: v[index] for k, v in plan.items()}}
  return make


def test_synthetic_cache_resumes_after_a_kill_without_duplicates_or_gaps(tmp_path):
  labels = np.repeat(np.arange(4), 3)
  plan = synthesis.plan_synthesis(labels, 4, kind="mix", multiplier=2, strengths=(0.5, 0.9),
                                  target_sampling="uniform", seed=0)
  manifest = {"strategy": "diff_mix", "plan": shard_cache.fingerprint(*plan.values())}
  full = shard_cache.build_shards(str(tmp_path / "full"), 24, 5, _planned_shard(plan, []),
                                  manifest=manifest, log=lambda m: None)
  calls = []
  make = _planned_shard(plan, calls)

  def dies(shard, index):
    if shard == 3:
      raise KeyboardInterrupt
    return make(shard, index)

  cache = str(tmp_path / "killed")
  with pytest.raises(KeyboardInterrupt):
    shard_cache.build_shards(cache, 24, 5, dies, manifest=manifest, log=lambda m: None)
  assert sorted(f for f in os.listdir(cache) if f.startswith("shard")) == [
      f"shard_0000{i}.npz" for i in range(3)]
  calls.clear()
  resumed = shard_cache.build_shards(cache, 24, 5, make, manifest=manifest, log=lambda m: None,
                                     shapes={"images": (2, 2, 3)})
  assert calls == [3, 4]
  out = shard_cache.read_shards(cache, 24)
  for k in full:
    np.testing.assert_array_equal(resumed[k], full[k])
    np.testing.assert_array_equal(out[k], full[k])
  np.testing.assert_array_equal(out["index"], np.arange(24))
  np.testing.assert_array_equal(out["target_class"], plan["target_class"])
  with pytest.raises(DataError, match="other settings"):
    shard_cache.build_shards(cache, 24, 5, make, manifest={**manifest, "strategy": "diff_aug"},
                             log=lambda m: None)
  os.remove(os.path.join(cache, "shard_00001.npz"))
  with pytest.raises(DataError, match="distinct of 24 items"):
    shard_cache.read_shards(cache, 24)


# --------------------------------------------------------------------------- report claims

def test_claims_need_three_seeds():
  def entry(values):
    return {"accuracy_mean": float(np.mean(values)), "accuracy_std": float(np.std(values)),
            "accuracy_values": values, "seeds": list(range(len(values)))}
  v = dm_report.verdict(entry([0.6, 0.62, 0.61]), entry([0.4, 0.41, 0.42]))
  assert v["beats_beyond_one_std"] and not v["loses_beyond_one_std"]
  assert not dm_report.verdict(entry([0.6, 0.3, 0.61]), entry([0.4, 0.41, 0.42]))[
      "beats_beyond_one_std"]
  one = dm_report.verdict(entry([0.9]), entry([0.1]))
  assert not one["beats_beyond_one_std"] and "not claimed" in comparison_words(one)
  # paired by seed: a wins every seed by ~0.05 although the seeds spread more than that
  paired = dm_report.verdict(entry([0.25, 0.35, 0.30]), entry([0.20, 0.29, 0.26]))
  assert not paired["beats_beyond_one_std"] and paired["beats_paired"] and paired["wins"] == 3
  assert "yes when paired" in comparison_words(paired)


def test_a_study_compares_each_strategy_across_its_runs():
  def entry(values):
    return {"accuracy_mean": float(np.mean(values)), "accuracy_std": float(np.std(values)),
            "accuracy_values": values, "seeds": list(range(len(values)))}
  runs = {"ti": {"comparison": {"none": entry([0.2, 0.3, 0.25]),
                                "diff_mix": entry([0.25, 0.35, 0.30])}},
          "db": {"comparison": {"none": entry([0.2, 0.3, 0.25]),
                                "diff_mix": entry([0.20, 0.29, 0.26])}},
          "ti_db": {"comparison": {"none": entry([0.2, 0.3, 0.25]),
                                   "diff_gen": entry([0.1, 0.2, 0.3])}}}
  across = dm_report.across_runs(runs)
  assert set(across) == {"diff_mix"}  # diff_gen is in one run only; 'none' is the baseline
  assert across["diff_mix"]["best_run"] == "ti" and set(across["diff_mix"]["versus"]) == {"db"}
  v = across["diff_mix"]["versus"]["db"]
  np.testing.assert_allclose(v["paired_differences"], [0.05, 0.06, 0.04], atol=1e-12)
  assert v["wins"] == 3 and v["beats_paired"]


# --------------------------------------------------------------------------- config and runs

@pytest.mark.parametrize("args, needle", [
    (["--config.strategies=('diff_mix',)"], "strategies"),
    (["--config.data.shots=99"], "data.shots"),
    (["--config.synthesis.strengths=(0.5, 1.5)"], "synthesis.strengths"),
    (["--config.synthesis.target_sampling=head"], "synthesis.target_sampling"),
    (["--config.filter.scorer=clip"], "filter.scorer"),
    (["--config.data.augment=rrc"], "data.augment"),  # embedded target: nothing streams
    (["--config.data.workers=2"], "data.workers"),
    (["--config.filter.drop_fraction=1.0"], "filter.drop_fraction"),
    (["--config.classifier.synthetic_replace_prob=1.5"], "classifier.synthetic_replace_prob"),
    (["--config.classifier.train.batch_size=64"], "classifier.train.batch_size"),
    (["--config.finetune.strategy=lora"], "finetune.strategy"),
    (["--config.seeds=(0, 0)"], "seeds"),
    (["--config.t2i_workdir=/nonexistent"], "t2i_workdir"),
])
def test_bad_values_exit_2_before_anything_runs(capsys, tmp_path, args, needle):
  code = jaxgen_main.run(["x", "--config=configs/diffmix.py:tiny", f"--workdir={tmp_path}/w",
                          *args])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and needle in err[0]
  assert not os.path.exists(tmp_path / "w" / "stages")


def test_reused_t2i_workdir_must_match_the_t2i_section(tmp_path, capsys):
  from configs import diffmix as dm_config
  config = dm_config.get_config("tiny")
  work = tmp_path / "t2i"
  (work / "stages").mkdir(parents=True)
  for stage in dm_validation.T2I_STAGES:
    (work / "stages" / f"{stage}.json").write_text("{}")
  theirs = config.t2i.to_dict()
  theirs["method"] = "t2i"
  theirs["data"]["image_size"] = 32
  (work / "config.json").write_text(json.dumps(theirs))
  config.t2i_workdir = str(work)
  with pytest.raises(ConfigError, match=r"t2i.data.image_size.*32"):
    dm_main.validate_config(config, jax.device_count())
  theirs["data"]["image_size"] = config.t2i.data.image_size
  (work / "config.json").write_text(json.dumps(theirs))
  dm_main.validate_config(config, jax.device_count())
  del theirs["judge"]["drw_beta"]  # a run made before the key existed is still reusable
  (work / "config.json").write_text(json.dumps(theirs))
  dm_main.validate_config(config, jax.device_count())
  assert "t2i.judge.drw_beta" in capsys.readouterr().out


def test_every_preset_validates_and_studies_name_the_failing_run(capsys, tmp_path):
  from configs import diffmix as dm_config
  dm_main.validate_config(dm_config.get_config("default"), 1)
  for preset in set(dm_config.PRESETS) - set(dm_config.PAPER_PRESETS):  # (paper: own test)
    dm_main.validate_config(dm_config.get_config(preset), 1, check_backbone=preset == "tiny")
  code = jaxgen_main.run(["x", "--config=configs/diffmix.py:tiny", "--config.study=few_shot",
                          f"--workdir={tmp_path}/w"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "(run 'shots_1' of study 'few_shot')" in err[0]
  for args, needle in ((["--config.study=tables"], "config.study="),
                       (["--config.study=size", "--config.study_runs=('nope',)"], "study_runs")):
    code = jaxgen_main.run(["x", "--config=configs/diffmix.py:tiny", f"--workdir={tmp_path}/w",
                            *args])
    assert code == 2 and needle in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "w" / "stages")


def test_long_tail_groups_and_subset():
  from jaxgen.diffmix.evaluate import class_groups
  groups = class_groups(np.array([5, 40, 1, 20, 9, 2]))
  assert groups["many"].tolist() == [1, 3] and groups["medium"].tolist() == [0, 4]
  assert groups["few"].tolist() == [2, 5]
  data = {"shot_images": np.arange(40)[:, None], "shot_labels": np.tile(np.arange(4), 10),
          "judge_images": np.zeros((0, 1)), "judge_labels": np.zeros(0, int),
          "num_target_classes": 4}
  _, labels = dm_data.real_training_set(data, 0, imbalance_factor=10.0)
  counts = np.bincount(labels, minlength=4)
  assert counts[0] == 10 and counts[-1] == 1 and np.all(np.diff(counts) <= 0)


def test_real_training_set_takes_the_first_shots_of_each_class():
  data = {"shot_images": np.arange(6)[:, None], "shot_labels": np.array([0, 1, 2, 0, 1, 2]),
          "judge_images": np.arange(6, 12)[:, None], "judge_labels": np.array([0, 1, 2, 0, 1, 2]),
          "num_target_classes": 3}
  images, labels = dm_data.real_training_set(data, 3)
  np.testing.assert_array_equal(images[:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8])
  np.testing.assert_array_equal(labels, [0, 1, 2] * 3)
  images, labels = dm_data.real_training_set(data, 1)
  np.testing.assert_array_equal(images[:, 0], [0, 1, 2])
  assert len(dm_data.real_training_set(data, 0)[0]) == 12



TWO_STRATEGIES = "--config.strategies=('none', 'diff_mix')"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """diffmix:tiny with no t2i_workdir (it trains its backbone in WORKDIR/t2i) and two of its five
  strategies (tests/test_t2i.py's slow group runs the rest on a shared backbone), one process on
  8 devices: the end-to-end test's run and the two-process test's reference."""
  return two_process.one_process_tiny_run(tmp_path_factory, "diffmix", [TWO_STRATEGIES], "dm")


def test_tiny_preset_trains_its_own_backbone_then_its_notebook_runs(tiny_run):
  """The Colab path (~1.5 min on 2 cores): the tiny run trained its backbone, then Diff-Mix; the
  notebook runs on that workdir (its stages are skipped)."""
  for stage in dm_validation.T2I_STAGES:
    assert (tiny_run / "t2i" / "stages" / f"{stage}.json").exists()
  results = json.loads((tiny_run / "results.json").read_text())
  assert set(results["comparison"]) == {"none", "diff_mix"}
  nb = run_notebook("diffmix", tiny_run, [TWO_STRATEGIES, *two_process.reference_flags("diffmix")])
  assert outputs_of(nb, "image/png") and outputs_of(nb, "text/markdown")


# Slow group: CI's 15 minutes (the default suite took 846 s here and 893 s on CI, 2026-12-07, with
# it and Softlabel-GAN's). Its kill and resume are the shared training loop's, which the default
# suite runs on two processes for the classifier (tests/test_multiprocess.py), MVLD and LR-GMM-NN;
# the whole tiny run on two processes is tests/test_multiprocess_methods.py, also slow.
@pytest.mark.slow
def test_two_process_fine_tuning_killed_and_resumed_matches_one_process(tiny_run, tmp_path):
  """The tiny run's backbone fine-tuned by two processes x 4 devices, SIGKILLed and launched
  again: the tiny run's fine-tuning losses (tests/two_process.py)."""
  two_process.first_stages_match("diffmix", tiny_run, tmp_path / "two",
                                 [TWO_STRATEGIES, f"--config.t2i_workdir={tiny_run / 't2i'}"])


def test_background_shift_set_and_its_four_groups(tmp_path):
  """Table 4's data: training backgrounds follow the class group (but for the minority), test
  backgrounds are balanced per class; the four test groups partition the test set."""
  from configs import diffmix as dm_config
  from jaxgen.diffmix.evaluate import test_groups
  config = dm_config.get_config("tiny")
  config.data.target, config.data.minority_fraction = "background_shift", 0.0
  d = dm_data.load(config, lambda: {"num_target_classes": 3}, str(tmp_path))
  k, per_class = 3, config.data.shots
  assert d["real_images"].shape == (k * per_class, 16, 16, 3)
  class_group = (2 * d["real_labels"] >= k).astype(int)
  np.testing.assert_array_equal(d["real_groups"], 3 * class_group)  # own background only
  masks = test_groups(d, np.bincount(d["real_labels"]), long_tail=False)
  assert list(masks) == list(dm_data.GROUP_NAMES)
  assert sum(m.astype(int) for m in masks.values()).tolist() == [1] * len(d["target_test_labels"])
  water = d["target_test_groups"] % 2 == 1
  for c in range(k):
    rows = d["target_test_labels"] == c
    assert water[rows].sum() == rows.sum() // 2
  assert (tmp_path / "data" / "background_shift.npz").exists()


def test_paper_presets_validate_and_need_their_weights(tmp_path, capsys):
  """Table 1's presets: SD 1.5 weights and the ImageNet classifier weights are required; with
  (stand-in) paths they validate; keys of a real source are refused for the embedded targets."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from configs import diffmix as dm_config
  weights = tmp_path / "sd15"
  weights.mkdir()
  (tmp_path / "resnet50.pth").write_bytes(b"stand-in")
  for preset in ("cub", "cars_vit"):
    config = dm_config.get_config(preset)
    with tfds.testing.mock_data(num_examples=64):
      with pytest.raises(ConfigError, match="classifier.pretrained_path"):
        dm_main.validate_config(config, 1)
      config.classifier.pretrained_path = str(tmp_path / "missing.pth")
      with pytest.raises(ConfigError, match="classifier.pretrained_path"):
        dm_main.validate_config(config, 1)
      config.classifier.pretrained_path = str(tmp_path / "resnet50.pth")
      with pytest.raises(ConfigError, match="t2i.backbone.weights_path"):
        dm_main.validate_config(config, 1)
      config.t2i.backbone.weights_path = str(weights)
      dm_main.validate_config(config, 1)
    config.data.data_dir = str(tmp_path)  # an empty TFDS data dir: the set is not prepared
    with pytest.raises(DataError, match="not prepared"):
      dm_main.validate_config(config, 1)
  assert dm_config.get_config("cub_vit").classifier.arch == "vit_b16"
  code = jaxgen_main.run(["x", "--config=configs/diffmix.py:tiny", f"--workdir={tmp_path}/w",
                          "--config.data.tfds_name=cifar10"])
  assert code == 2 and "data.target='source'" in capsys.readouterr().err


def test_a_real_source_target_reads_tfds_and_names_its_classes(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from configs import diffmix as dm_config
  config = dm_config.get_config("tiny")
  config.data.update(target="source", source="tfds", tfds_name="oxford_flowers102",
                     image_size=16, num_classes=102, metaclass="flower", shots=1)
  with tfds.testing.mock_data(num_examples=12):
    d = dm_data.load(config, None, str(tmp_path))
    # the classifiers stream the same records from the split (resized as the cached arrays)
    streamed = dm_data.streamed_real_set(config, d)
    np.testing.assert_array_equal(streamed.labels(), d["real_labels"])
    for i in (0, len(streamed) - 1):
      np.testing.assert_array_equal(resize_center_crop(streamed[i]["image"], 16),
                                    d["real_images"][i])
  assert d["real_images"].shape[1:] == (16, 16, 3) and d["target_test_images"].shape[0] == 12
  assert len(d["real_labels"]) == len(set(d["real_labels"].tolist()))  # one shot per class
  prompts = dm_data.vanilla_prompts(d)
  assert len(prompts) == 102 and prompts[0].startswith("a photo of a ") and prompts[0].endswith(
      ", a type of flower")
  config.data.num_classes = 5
  (tmp_path / "other").mkdir()
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(DataError, match="102 classes"):
      dm_data.load(config, None, str(tmp_path / "other"))


def test_filter_results_are_redone_when_the_filter_changes(tmp_path):
  import ml_collections
  from jaxgen.io.files import atomic_save_npz
  f = ml_collections.ConfigDict({"scorer": "classifier", "drop_fraction": 0.1, "num_times": 5})
  path = str(tmp_path / "filter.npz")
  assert not dm_main._filter_current(path, f)
  atomic_save_npz(path, score=np.ones(3), keep=np.ones(3, bool), scorer=np.asarray("classifier"),
                  drop_fraction=np.asarray(0.1), num_times=np.asarray(5))
  assert dm_main._filter_current(path, f)
  f.num_times = 3  # only the backbone scorer uses it
  assert dm_main._filter_current(path, f)
  f.drop_fraction = 0.2
  assert not dm_main._filter_current(path, f)


def test_a_finetune_made_with_other_settings_is_refused(tmp_path):
  path = str(tmp_path / "finetune_seed0.msgpack")
  settings = {"finetune": {"strategy": "ti_db", "lora_rank": 10}, "real_set": "abc"}
  assert not dm_main._finetune_current(path, settings)
  (tmp_path / "finetune_seed0.msgpack").write_bytes(b"x")
  assert dm_main._finetune_current(path, settings)  # no record: made before records existed
  (tmp_path / "finetune_seed0.msgpack.json").write_text(json.dumps(settings))
  assert dm_main._finetune_current(path, settings)
  with pytest.raises(ConfigError, match="finetune.lora_rank: 10 in the cache, 4 now"):
    dm_main._finetune_current(path, {**settings, "finetune": {"strategy": "ti_db", "lora_rank": 4}})


def test_recorded_settings_refuse_a_different_rerun(tmp_path):
  record = str(tmp_path / "classifier_seed0_none.json")
  settings = {"classifier": {"train": {"num_steps": 300}}, "real_set": "abc", "synthetic": ""}
  assert not dm_main._settings_current(record, settings, "classifier", "classifier")
  (tmp_path / "classifier_seed0_none.json").write_text(json.dumps(settings))
  assert dm_main._settings_current(record, settings, "classifier", "classifier")
  with pytest.raises(ConfigError, match="classifier.train.num_steps: 300 in the cache, 200 now"):
    dm_main._settings_current(record, {**settings, "classifier": {"train": {"num_steps": 200}}},
                              "classifier", "classifier")
