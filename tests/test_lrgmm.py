"""LR-GMM-NN: the tiny preset end to end from the command line (and its first stages as two
processes), bad input before training, the model."""

import json
import sys

import jax
import ml_collections
import numpy as np
import pytest

from jaxgen import main as jaxgen_main
from jaxgen.lrgmm import model as lrgmm
from test_torch_state_dict import fake_torch  # noqa: F401 (fixture)

import two_process
from notebooks import outputs_of, run_notebook

TINY = "--config=configs/lrgmm.py:tiny"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny preset, one process on 8 devices: the end-to-end test's run and the two-process
  test's reference."""
  return two_process.one_process_tiny_run(tmp_path_factory, "lrgmm")


def test_tiny_preset_end_to_end(tiny_run):
  """Every stage runs; results.json has table1[N][method] with fid/precision/recall and timing."""
  results = json.loads((tiny_run / "results.json").read_text())
  assert set(results["table1"]) == {"8", "64"}
  for n in ("8", "64"):
    for method in ("lr_gmm", "lr_gmm_nn", "nn_only"):
      row = results["table1"][n][method]
      assert np.isfinite(row["fid"]) and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    timing = results["timing"][n]
    for key in ("p0_compute_s", "encoding_s", "training_s", "sampling_per_image_s",
                "refining_per_image_s", "decoding_per_image_s"):
      assert timing[key] >= 0
  assert results["fits"]["8"]["form"] == "dual" and results["fits"]["64"]["form"] == "full"
  assert len(results["sweep"]) == 2 and "in-domain" in results["feature_network"]
  assert results["seed"] == 0 and results["data"].startswith("embedded registered faces")
  report = (tiny_run / "report.md").read_text()
  assert "Table 1" in report and "Memorisation" in report and "seed: 0" in report
  for png in ("samples/centroids.png", "samples/N64_methods.png", "samples/N8_latent_maps.png",
              "samples/sweep_lowrank.png", "eval/memorisation.png"):
    assert (tiny_run / png).stat().st_size > 100
  # The results page is generated from the JSON and every table number is checked against it.
  from jaxgen.lrgmm import claims, results_page
  summary = claims.summarise({0: results, 1: results})
  assert summary["nn_lowers_fid"]["64"]["num_seeds"] == 2
  page = results_page.build(results, summary, str(tiny_run))
  assert "Table 1" in page and results_page.check_numbers(page, [results, summary]) == []
  # It says where its numbers reproduce: the host's CPU model and convolution route (an older
  # results.json without them keeps the page's former sentence).
  from jaxgen.io.report import reproduction_scope
  env = results["environment"]
  assert env["cpu_model"] and reproduction_scope(env) in page and f"CPU model {env['cpu_model']}" in page
  assert reproduction_scope({k: v for k, v in env.items() if k != "cpu_model"}) is None
  assert results_page.check_numbers(page + "\n| 123.456789 |", [results, summary]) == ["123.456789"]
  # The Colab notebook on this run in a Jupyter kernel: its run call (a second run) finds every
  # stage done (results.json unchanged); report and figures render.
  before = (tiny_run / "results.json").read_text()
  nb = run_notebook("lrgmm", tiny_run, two_process.reference_flags("lrgmm"))
  assert len(outputs_of(nb, "image/png")) == 6 and outputs_of(nb, "text/markdown")
  assert (tiny_run / "results.json").read_text() == before


def test_two_process_first_stages_killed_and_resumed_match_one_process(tiny_run, tmp_path):
  """The autoencoder trained by two processes x 4 devices, SIGKILLed and launched again, then the
  EM fits sharded over both hosts' devices: the tiny run's losses (tests/two_process.py) and, on
  autoencoders whose weights differ by float rounding, the same iterations, likelihoods and
  weights."""
  two = tmp_path / "two"
  two_process.first_stages_match("lrgmm", tiny_run, two)
  fits = sorted((tiny_run / "eval").glob("fit_N*.json"))
  assert fits
  for path in fits:
    a, b = (json.loads(p.read_text()) for p in (path, two / "eval" / path.name))
    assert (a["em_iterations"], a["dims"]) == (b["em_iterations"], b["dims"])
    np.testing.assert_allclose(b["mean_log_likelihood"], a["mean_log_likelihood"], rtol=1e-3)
    np.testing.assert_allclose(b["weights"], a["weights"], atol=1e-3)


@pytest.mark.parametrize("override, needle", [
    ("--config.latent.num_channels=9", "config.latent.num_channels=9"),
    ("--config.nn.patch_size=4", "config.nn.patch_size=4"),
    ("--config.table1.sizes=(8,65)", "config.table1.sizes=[8, 65]: expected integers in [2, data.num_target = 64]"),
    ("--config.table1.components=(1,100)", "config.table1.components=[1, 100]: expected one integer K"),
    ("--config.evaluate.sweep_size=7", "config.evaluate.sweep_size=7"),
    ("--config.gmm.init=spectral", "config.gmm.init='spectral'"),
    ("--config.gmm.reg_covar=0.0", "config.gmm.reg_covar=0.0"),
    ("--config.data.image_size=18", "config.data.image_size=18"),
    ("--config.autoencoder.kind=vqgan", "config.autoencoder.checkpoint_path=''"),
    ("--config.evaluate.inception_path=/nonexistent.pth", "config.evaluate.inception_path"),
    ("--config.lowrank.temperature=-1.0", "config.lowrank.temperature=-1.0"),
])
def test_bad_values_exit_2_before_training(tmp_path, capsys, override, needle):
  """One line naming the key, exit code 2, and nothing trained (no checkpoint written)."""
  assert jaxgen_main.run(["jaxgen.main", TINY, f"--workdir={tmp_path}", override]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and needle in err[0], err
  assert not (tmp_path / "checkpoints").exists()


def test_model_fit_sample_refine_decode():
  """The algorithm box on a toy identity codec: shapes, NN output made of training codes only."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)

  def encode(x):  # [N, 8, 8, 3] -> a 4x4x12 latent map (space-to-depth): lossless and registered
    x = np.asarray(x, np.float32) / 127.5 - 1
    return x.reshape(len(x), 4, 2, 4, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(len(x), 4, 4, 12)

  def decode(z):
    z = np.asarray(z).reshape(len(z), 4, 4, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(len(z), 8, 8, 3)
    return np.clip(np.round((z + 1) * 127.5), 0, 255).astype(np.uint8)

  gmm_cfg = ml_collections.ConfigDict({"init": "kmeans", "max_iter": 20, "tol": 1e-3, "reg_covar": 1e-6})
  model, timing = lrgmm.fit(encode, images, num_channels=12, num_components=2, gmm_cfg=gmm_cfg,
                            temperature=0.12, fixed_dim=0, max_rank=16, key=jax.random.key(0))
  assert model.codes.shape == (40, 4, 4, 12) and set(np.unique(model.labels)) <= {0, 1}
  assert timing["setup_total_s"] > 0
  # With q = c, P0* o P0 is the identity: decoding the training codes gives the images back.
  np.testing.assert_array_equal(lrgmm.decode_codes(decode, model.projector, model.codes), images)
  codes, comps = lrgmm.sample_codes(model, jax.random.key(1), 10)
  assert codes.shape == (10, 4, 4, 12) and comps.shape == (10,)
  nn_cfg = ml_collections.ConfigDict({"patch_size": 3, "num_iters": 1, "same_position": True,
                                      "same_cluster": True, "chunk_size": 4})
  out = lrgmm.refine(model, codes, comps, nn_cfg)
  idx = np.asarray(out.indices)
  rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
  np.testing.assert_allclose(np.asarray(out.latents), model.codes[idx, rows[None], cols[None]], atol=1e-6)
  # Same-cluster restriction: every copied pixel comes from a training image of the sample's cluster.
  assert np.all(model.labels[idx] == np.asarray(comps)[:, None, None])
  # Fig. 6c prior: every latent pixel is some training image's pixel at that position.
  rand = lrgmm.random_codes(model, jax.random.key(2), 5)
  match = (rand[:, None] == model.codes[None]).all(-1).any(1)
  assert match.all()


@pytest.mark.slow  # ~40 s (VQ-GAN import and shapes stay in tests/test_vqgan.py): the default suite's 15-min CI budget
def test_vqgan_autoencoder_path_runs_on_a_written_checkpoint(tmp_path, fake_torch, monkeypatch):  # noqa: F811
  """The paper's autoencoder path end to end: a taming-style .ckpt (random weights, the tiny
  VQ-GAN architecture) written by the test is loaded and used as E / D for every stage."""
  from test_vqgan import _write_checkpoint, fake_checkpoint_state_dict
  from jaxgen.nets.vqgan import VQGANConfig
  ckpt = tmp_path / "vqgan.ckpt"
  _write_checkpoint(ckpt, fake_checkpoint_state_dict(VQGANConfig.tiny()), fake_torch)
  monkeypatch.delitem(sys.modules, "torch", raising=False)  # the fake only writes the file
  work = tmp_path / "run"
  args = ["jaxgen.main", TINY, f"--workdir={work}", "--config.autoencoder.kind=vqgan",
          "--config.autoencoder.vqgan_preset=tiny", f"--config.autoencoder.checkpoint_path={ckpt}",
          "--config.latent.num_channels=4", "--config.table1.sizes=(64,)", "--config.table1.components=(2,)"]
  assert jaxgen_main.run(args) == 0
  results = json.loads((work / "results.json").read_text())
  assert results["fits"]["64"]["latent_shape"] == [8, 8, 4]  # 16x16 images -> 8x8x8 -> q = 4
  assert not (work / "checkpoints" / "autoencoder").exists()  # nothing trained for E / D


def test_celebahq_preset_without_files_exits_2(tmp_path, capsys):
  """The paper-scale preset names the first missing file in one line, before anything runs."""
  code = jaxgen_main.run(["jaxgen.main", "--config=configs/lrgmm.py:celebahq", f"--workdir={tmp_path}",
                          "--config.evaluate.inception_path=/nonexistent/pt_inception.pth"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "inception_path" in err[0], err


def test_codec_split_over_8_devices_equals_one_device():
  """Evaluation that scales: the autoencoder's batched encode / decode split over the 8-device
  mesh equal the one-device computation (latents rtol 1e-5; decoded uint8 within 1 level)."""
  import jax.numpy as jnp

  from configs import lrgmm as lrgmm_config
  from jaxgen.lrgmm import autoencoder as ae_lib
  from jaxgen.parallel.mesh import make_mesh

  cfg = lrgmm_config.get_config("tiny").autoencoder
  cfg.channels, cfg.latent_channels = (4,), 2  # small: the test is about the split, not the model
  size = 8
  params = jax.jit(ae_lib.spatial_model(cfg).init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  images = np.random.default_rng(0).integers(0, 256, (11, size, size, 3), np.uint8)
  mesh = make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
  one, split = ae_lib.make_codec(cfg, params, 8), ae_lib.make_codec(cfg, params, 8, mesh)
  z = one.encode(images)
  np.testing.assert_allclose(split.encode(images), z, rtol=1e-5, atol=1e-6)
  assert np.abs(split.decode(z).astype(int) - one.decode(z).astype(int)).max() <= 1
