"""Softlabel-GAN (paper 003): label sources, the training step's EMA of batch statistics, sampling,
validation before training, claims aggregation, and the tiny preset end to end (and its first stages
as two processes)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.softlabel_gan import PRESETS, get_config
from jaxgen import main as jaxgen_main
from jaxgen.nets.common import to_uint8
from jaxgen.softlabel_gan import claims as claims_lib
from jaxgen.softlabel_gan import labels as L
from jaxgen.softlabel_gan import train as T
from jaxgen.softlabel_gan.evaluate import TABLE2_METRICS
import two_process
from notebooks import outputs_of, run_notebook


def test_label_sources_by_hand():
  labels = np.array([0, 2, 1, 2])
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.0, 0.2, 0.8]], np.float32)
  np.testing.assert_array_equal(L.real_label_vectors("onehot", labels, 3), np.eye(3)[labels])
  smooth = L.real_label_vectors("smooth", labels, 3, smooth_alpha=0.3)
  np.testing.assert_allclose(smooth[1], [0.1, 0.1, 0.8], rtol=1e-6)  # 0.7 * onehot + 0.3 / 3
  np.testing.assert_array_equal(L.real_label_vectors("soft", labels, 3, probs=probs), probs)
  # Class means over correctly classified samples: class 0 -> row 0; class 2 -> mean of rows 1, 3;
  # class 1 has no correct sample (row 2 predicts 0) and keeps its one-hot row.
  means = L.class_mean_probabilities(probs, labels)
  np.testing.assert_allclose(means, [[0.7, 0.2, 0.1], [0, 1, 0], [0.05, 0.25, 0.7]], rtol=1e-6)
  np.testing.assert_allclose(L.real_label_vectors("class_mean", labels, 3, probs=probs), means[labels])
  # Table 1: samples giving a class more than 0.01 (row 3 gives class 0 exactly 0).
  np.testing.assert_array_equal(L.augmented_counts(probs, 0.01), [3, 4, 4])
  with pytest.raises(Exception, match="probabilities"):
    L.real_label_vectors("soft", labels, 3)


def test_mixup_mixes_images_and_labels_with_one_lambda():
  x = jnp.arange(4, dtype=jnp.float32).reshape(4, 1, 1, 1) * jnp.ones((4, 2, 2, 3))
  y = jax.nn.one_hot(jnp.arange(4), 4)
  xm, ym = T._mixup(jax.random.key(3), x, y, 1.0)
  # Each mixed label is lam e_i + (1 - lam) e_perm(i); the image carries the same weights.
  lam = float(jnp.max(ym[0])) if float(ym[0, 0]) >= 0.5 else None
  for i in range(4):
    weights = np.asarray(ym[i])
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(xm[i, 0, 0, 0]), float(np.dot(weights, np.arange(4))), rtol=1e-5)
  del lam


def _tiny_gan():
  config = get_config("tiny")
  g, d = T.build_networks(config.gan, 3, 32)
  return config, g, d


def test_ema_covers_batch_statistics_and_samples_are_g_in_eval_mode():
  config, g, d = _tiny_gan()
  cfg = config.gan
  state = T.init_state(g, d, cfg, jax.random.key(0))
  # DiffAugment #84: augmentation belongs to D's inputs only; samples are G(z, onehot) in eval
  # mode, whatever the batch size. A different batch may change XLA:CPU's convolution blocking
  # and so float32 rounding, which can move a pixel across a uint8 rounding boundary: atol 1.
  classes = np.array([0, 1, 2, 2, 1], np.int32)
  images = T.sample(g, state.ema_params, state.ema_stats, jax.random.key(5), classes, batch_size=2)
  z = jax.random.normal(jax.random.key(5), (5, g.dim_z))
  direct = to_uint8(g.apply({"params": state.ema_params, **state.ema_stats}, z,
                            jax.nn.one_hot(classes, 3), train=False))
  np.testing.assert_allclose(images.astype(int), np.asarray(direct, int), atol=1)
  np.testing.assert_allclose(images.astype(int), T.sample(g, state.ema_params, state.ema_stats,
                                                          jax.random.key(5), classes,
                                                          batch_size=5).astype(int), atol=1)
  batch = {"image": np.random.default_rng(0).integers(0, 256, (cfg.train.batch_size, 32, 32, 3), np.uint8),
           "label": np.eye(3, dtype=np.float32)[np.arange(cfg.train.batch_size) % 3]}
  step = jax.jit(T.make_step_fn(g, d, cfg, L.VARIANTS["soft"], 1.0))
  # Before ema_start (= 2 in tiny) the EMA equals G, statistics included.
  s1, _ = step(state, batch, jax.random.key(1))
  for a, b in zip(jax.tree.leaves(s1.ema_stats), jax.tree.leaves(s1.g_stats)):
    np.testing.assert_array_equal(a, b)
  s2, _ = step(s1, batch, jax.random.key(2))
  s3, _ = step(s2, batch, jax.random.key(3))  # step 2 >= ema_start: decayed
  decay = cfg.train.ema_decay
  stats_before = jax.tree.leaves(s2.ema_stats)
  changed = 0
  for e_new, e_old, g_new in zip(jax.tree.leaves(s3.ema_stats), stats_before, jax.tree.leaves(s3.g_stats)):
    np.testing.assert_allclose(e_new, decay * e_old + (1 - decay) * g_new, rtol=1e-5, atol=1e-6)
    changed += int(not np.allclose(e_new, g_new))
  assert changed > 0  # the running statistics really are averaged, not copied
  bn = s3.g_stats["batch_stats"]
  assert jax.tree.leaves(bn), "the generator keeps BatchNorm running statistics"
  for e_new, e_old, p in zip(jax.tree.leaves(s3.ema_params), jax.tree.leaves(s2.ema_params),
                             jax.tree.leaves(s3.g_params)):
    np.testing.assert_allclose(e_new, decay * e_old + (1 - decay) * p, rtol=1e-5, atol=1e-6)


def test_every_preset_validates(tmp_path):
  from jaxgen.softlabel_gan.main import validate_config
  weights = tmp_path / "weights.pth"
  weights.write_bytes(b"0")
  for preset in PRESETS:
    config = get_config(preset)
    if config.data.name != "multiview":
      with config.unlocked():
        config.data.data_dir = str(tmp_path)
      # Data on disk needs InceptionV3 / LPIPS files: refused in one line, before anything runs.
      with pytest.raises(Exception, match="evaluate.inception_path"):
        validate_config(config, 1)
      config.evaluate.update(inception_path=str(weights), lpips_backbone_path=str(weights),
                             lpips_linear_path=str(weights))
    validate_config(config, 1)


@pytest.mark.parametrize("override", [
    "--config.variants=('soft','nope')",
    "--config.gan.loss=softmax",
    "--config.gan.diffaugment=color,zoom",
    "--config.data.image_size=48",
    "--config.gan.hierarchical=True",  # dim_z 16 is not 20 x (blocks + 1)
    "--config.data.num_pool=100",
    "--config.gan.d_optim.b1=1.5",
    "--config.gan.train.optim.eps=0.0",
    "--config.evaluate.lpips_per_class=1",
    "--config.data.imbalance=uniform",
    "--config.data.name=tfds",
    "--config.data.variant=background_shift",
    "--config.diffusion.channels=(8,10)",  # 10 channels in 4 GroupNorm groups
    "--config.diffusion.sampler=euler",
    "--config.diffusion.attention_levels=(True,)",
    "--config.diffusion.p_uncond=0.0",
])
def test_bad_values_exit_2_before_anything_runs(tmp_path, capsys, override):
  code = jaxgen_main.run(["jaxgen.main", "--config=configs/softlabel_gan.py:tiny",
                          f"--workdir={tmp_path}", override])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("jaxgen: error: ") and "\n" not in err
  assert not os.path.exists(tmp_path / "stages")


def test_claims_summary_over_seeds():
  def record(fid_soft, fid_one):
    row = {m: 1.0 for m in TABLE2_METRICS}
    return {"table2": {"onehot": {**row, "fid": fid_one}, "soft": {**row, "fid": fid_soft}},
            "data": "d", "feature_network": "f", "networks": {}, "preset": "default",
            "classifiers": {"judge": {"reference_accuracy": 0.9}}}
  summary = claims_lib.summarise({0: record(10.0, 12.0), 1: record(11.0, 10.0), 2: record(9.0, 12.0)})
  assert summary["table2"]["soft"]["fid"]["mean"] == pytest.approx(10.0)
  assert summary["table2"]["soft"]["fid"]["std"] == pytest.approx(1.0)
  diff = summary["softlabel_minus"]["onehot"]["fid"]
  assert diff["values"] == [-2.0, 1.0, -3.0]
  assert diff["seeds_where_softlabel_better"] == 2
  assert summary["judge_accuracy"]["mean"] == pytest.approx(0.9)


def test_label_unet_embeds_soft_labels_linearly_and_inits_like_flax():
  from jaxgen.nets import label_unet as LU
  from jaxgen.softlabel_gan import diffusion as D
  net_cfg = D.network_config(get_config("tiny").diffusion, 5)
  params = LU.init_params(net_cfg, jax.random.key(0))
  x, t, y = jnp.zeros((2, 8, 8, 3)), jnp.ones(2), LU.null_labels(2, 5)
  flax_params = jax.eval_shape(lambda k: LU.LabelUNet(net_cfg).init(k, x, t, y)["params"],
                               jax.random.key(0))
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, flax_params)
  # A soft label's token is the probability-weighted mean of the class tokens; the null label has
  # its own; the U-Net sees the token (its output moves with it).
  emb = np.asarray(params["label_embedding"]["kernel"])
  p = np.array([[0.7, 0.2, 0.1, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(np.asarray(LU.with_null_slot(jnp.asarray(p))) @ emb, p @ emb[:5])
  np.testing.assert_array_equal(np.asarray(LU.null_labels(1, 5))[0], np.eye(6)[5])
  apply = jax.jit(lambda labels: LU.LabelUNet(net_cfg).apply({"params": params}, x[:1] + 0.3,
                                                               0.5 * t[:1], labels))
  onehot = LU.with_null_slot(jnp.asarray(np.eye(5, dtype=np.float32)[[0]]))
  assert not np.allclose(apply(onehot), apply(LU.null_labels(1, 5)))
  with pytest.raises(ValueError, match="K \\+ 1 = 6"):
    LU.LabelUNet(net_cfg).apply({"params": params}, x, t, jnp.zeros((2, 5)))


@pytest.mark.slow  # ~25-45 s of U-Net compiles: the default suite stays under 15 min on 2 cores
def test_diffusion_trains_and_guidance_scale_one_is_the_conditional_model():
  """Two training steps move the label embedding; guidance scale 1 samples the conditional model
  alone (the DPM-Solver++ sample of eps(x, t, y)), and a larger scale changes the samples."""
  from jaxgen.nets import label_unet as LU
  from jaxgen.sde.fast_samplers import sample_dpmpp_2m
  from jaxgen.softlabel_gan import diffusion as D
  cfg = get_config("tiny").diffusion
  net_cfg = D.network_config(cfg, 3)
  state = D.init_state(net_cfg, cfg, jax.random.key(0))
  step = jax.jit(D.make_step_fn(net_cfg, cfg))
  batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), np.uint8),
           "label": np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]}
  new, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1
  kernel = lambda s: np.asarray(s.params["label_embedding"]["kernel"])  # noqa: E731
  assert not np.allclose(kernel(new), kernel(state))
  classes = np.array([0, 1, 2, 2, 1])
  cfg.guidance_scale = 1.0
  ours = D.sample(net_cfg, cfg, new.params, jax.random.key(2), classes, 8, batch_size=5)
  assert ours.dtype == np.uint8 and ours.shape == (5, 8, 8, 3)
  noise = jax.random.normal(jax.random.key(2), (5, 8, 8, 3))
  sde, net = D.build_sde(cfg), LU.LabelUNet(net_cfg)
  y = LU.with_null_slot(jnp.asarray(np.eye(3, dtype=np.float32)[classes]))
  assert cfg.prediction == "v"

  def score(x, t):
    return D.score_from_output(net.apply({"params": new.params}, x, t, y), x, t, sde, "v")

  x = jax.jit(lambda n: sample_dpmpp_2m(jax.random.key(0), score, sde, n.shape, cfg.num_steps,
                                        t_eps=cfg.t_eps, x_init=n))(noise)
  np.testing.assert_allclose(ours.astype(int), np.asarray(to_uint8(jnp.clip(x, -1, 1))).astype(int),
                             atol=1)
  cfg.guidance_scale = 4.0  # traced: the same compiled sampler
  guided = D.sample(net_cfg, cfg, new.params, jax.random.key(2), classes, 8, batch_size=5)
  assert np.abs(guided.astype(int) - ours.astype(int)).max() > 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny preset with one GAN variant (`soft`), one process on 8 devices: the end-to-end
  test's run and the two-process test's reference."""
  return two_process.one_process_tiny_run(tmp_path_factory, "softlabel_gan")


def test_tiny_end_to_end(tiny_run, tmp_path):  # ~55-70 s on 2 cores with the Colab notebook
  workdir = str(tiny_run)
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert set(results["table2"]) == {"soft"}  # one GAN: the comparison's code paths are unit-tested
  for metric in ("fid", "intra_fid_mean", "intra_fid_std", "lpips", "precision", "recall", "density",
                 "coverage"):
    assert np.isfinite(results["table2"]["soft"][metric])
  assert len(results["table1"]["soft"]) == 12
  assert "not InceptionV3" in results["feature_network"]
  report = open(os.path.join(workdir, "report.md")).read()
  assert "Softlabel-GAN (`soft`)" in report and "Table 1" in report
  # A second run finds every stage done and changes nothing.
  before = open(os.path.join(workdir, "results.json")).read()
  assert jaxgen_main.run(["jaxgen.main", "--config=configs/softlabel_gan.py:tiny", f"--workdir={workdir}",
                          *two_process.reference_flags("softlabel_gan")]) == 0
  assert open(os.path.join(workdir, "results.json")).read() == before
  # The results page from a one-seed summary prints only numbers of its JSON sources.
  from jaxgen.softlabel_gan import results_page
  summary = claims_lib.summarise({0: results})
  page = results_page.build(summary, results, str(tmp_path / "img"), entropy0=results["table1"])
  assert "Table 2" in page and "Softlabel-GAN" in page
  assert results_page.check_numbers(page, [summary, results]) == []
  assert results_page.check_numbers(page + "\n| 123.456 |", [summary, results]) == ["123.456"]
  # The Colab notebook runs on this workdir in a Jupyter kernel (no figures: log_images=False).
  nb = run_notebook("softlabel_gan", workdir, two_process.reference_flags("softlabel_gan"))
  assert outputs_of(nb, "text/markdown") and not outputs_of(nb, "image/png")


# Slow group: CI's 15 minutes (the default suite took 846 s here and 893 s on CI, 2026-12-07, with
# it and Diff-Mix's). Its kill and resume are the shared training loop's, which the default suite
# runs on two processes for the classifier (tests/test_multiprocess.py), MVLD and LR-GMM-NN; the
# whole tiny run on two processes is tests/test_multiprocess_methods.py, also slow.
@pytest.mark.slow
def test_two_process_first_stages_killed_and_resumed_match_one_process(tiny_run, tmp_path):
  """The soft labels of classifier C and the `soft` GAN trained by two processes x 4 devices,
  SIGKILLed in the GAN training and launched again: the tiny run's GAN losses
  (tests/two_process.py). C is the tiny run's, copied in (its stage is then done; ~17 s less):
  training C is the shared classifier trainer, whose two-process kill and resume
  tests/test_multiprocess.py runs, and the slow whole-run test trains C on two processes."""
  two = tmp_path / "two"
  for part in ("checkpoints/classifier", "eval/classifier.json", "stages/train_classifier.json"):
    source, target = tiny_run / part, two / part
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
  two_process.first_stages_match("softlabel_gan", tiny_run, two)


def test_comparisons_pair_each_label_augmented_variant_with_its_own_model_family():
  assert L.comparisons(["onehot", "smooth", "soft", "cfg", "cfg_soft"]) == [
      ("soft", "onehot"), ("soft", "smooth"), ("cfg_soft", "cfg")]
  assert L.comparisons(["onehot", "cfg"]) == []
  assert L.of_model(["cfg", "soft", "cfg_soft"], "diffusion") == ["cfg", "cfg_soft"]


@pytest.mark.slow  # ~2 min: Table 7's two diffusion models end to end at the tiny sizes
def test_tiny_table7_end_to_end(tmp_path):
  workdir = str(tmp_path / "run")
  argv = ["jaxgen.main", "--config=configs/softlabel_gan.py:tiny", f"--workdir={workdir}",
          "--config.variants=('cfg','cfg_soft')", "--config.log_images=False"]
  assert jaxgen_main.run(argv) == 0
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert set(results["table2"]) == {"cfg", "cfg_soft"}
  for metric in ("fid", "intra_kid", "intra_lpips_mean", "intra_precision", "intra_coverage"):
    assert np.isfinite(results["table2"]["cfg_soft"][metric])
  assert os.path.exists(os.path.join(workdir, "models", "diffusion_cfg_soft.msgpack"))
  assert not os.path.exists(os.path.join(workdir, "models", "gan_cfg.msgpack"))
  report = open(os.path.join(workdir, "report.md")).read()
  assert "Table 7" in report and "intra-KID: CFG w/ label augmentation" in report
  from jaxgen.softlabel_gan import results_page
  summary = claims_lib.summarise({0: results})
  assert summary["against"] == {"cfg": "cfg_soft"}
  page = results_page.build_table7(summary, results, str(tmp_path / "img"))
  assert "Table 7" in page and "21.92" in page
  from jaxgen.softlabel_gan.report import PAPER_TABLE7
  assert results_page.check_numbers(page, [summary, results, PAPER_TABLE7]) == []
