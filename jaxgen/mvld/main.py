"""MVLD end to end: data -> autoencoder -> latent diffusion -> judge classifier -> sample ->
Table I evaluation -> transmission study -> report (paper 002; model of paper 000 sec. II-III).

Each stage leaves its outputs in the workdir (models/, eval/, samples/) and is skipped when
re-run; the training stages resume from their checkpoints. `run_context` exposes the same
pieces to the Python API (`jaxgen.mvld.api.MVLD`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.io.params import load_params, save_params
from jaxgen.io.plots import line_plot
from jaxgen.mvld import evaluate as mvld_eval
from jaxgen.mvld import model as mvld_model
from jaxgen.mvld import report as mvld_report
from jaxgen.mvld import transmission
from jaxgen.mvld.data import load_views
from jaxgen.mvld.judges import build_judges
from jaxgen.mvld.train import train_autoencoder, train_diffusion
from jaxgen.parallel.mesh import is_main_process
from jaxgen.stages import MethodRun, require_stage, run_method

STAGES = ("data", "train_autoencoder", "train_diffusion", "train_classifier", "sample", "evaluate",
          "transmission", "report")
DATA_NAMES = ("multiview", "nmr")
SAMPLERS = ("euler_maruyama", "pc", "ode", "repaint", "ddim", "dpmpp_2m")
BITS = (32, 16, 8, 4)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every impossible value fails here, before anything is built or compiled."""
  dp = configlib.validate_mesh(config, num_devices)
  configlib.require_choice(config, "data.name", DATA_NAMES)
  for key in ("data.image_size", "data.num_train", "data.num_test", "autoencoder.latent_dim",
              "sampler.num_steps", "evaluate.num_objects", "evaluate.batch_size",
              "transmission.num_objects"):
    configlib.require_positive_int(config, key)
  v = config.data.num_views
  configlib.require(isinstance(v, int) and 2 <= v <= 24, "data.num_views", v, "an integer in [2, 24]")
  down = 2 ** len(config.autoencoder.channels)
  configlib.require(config.data.image_size % down == 0, "data.image_size", config.data.image_size,
                    f"a multiple of {down} (2 ** len(autoencoder.channels))")
  configlib.require_choice(config, "autoencoder.augment", ("trivial_augment_wide", "none"))
  configlib.validate_train(config, "autoencoder.train", dp)
  configlib.validate_train(config, "diffusion.train", dp)
  configlib.require_choice(config, "diffusion.sde", mvld_model.SDES)
  mvld_model.build_sde(config.diffusion)  # its own section's parameters, checked by the SDE
  configlib.require_choice(config, "diffusion.score_net.kind", mvld_model.SCORE_NETS)
  configlib.require_choice(config, "diffusion.mask_mode", ("per_example", "per_batch"))
  configlib.require_range(config, "diffusion.joint_prob", 0.0, 1.0)
  configlib.require_range(config, "diffusion.t_eps", 1e-6, 0.5)
  configlib.require_choice(config, "sampler.name", SAMPLERS)
  if config.sampler.name in ("ddim", "dpmpp_2m"):  # few-step samplers of VP-type SDEs
    configlib.require(config.diffusion.sde in ("vpsde", "subvpsde"), "diffusion.sde",
                      config.diffusion.sde, f"vpsde or subvpsde for sampler {config.sampler.name}")
    configlib.require_choice(config, "sampler.time_spacing", ("logsnr", "uniform"))
    configlib.require(isinstance(config.sampler.eta, (int, float)) and config.sampler.eta >= 0,
                      "sampler.eta", config.sampler.eta, "a number >= 0")
    configlib.require(config.sampler.t_eps > 0, "sampler.t_eps", config.sampler.t_eps,
                      f"> 0 for {config.sampler.name} (log-SNR is infinite at t = 0)")
  configlib.require_positive_int(config, "sampler.jump_length")
  configlib.require_positive_int(config, "sampler.num_repeats")
  validate_classifier_config(config, "classifier", dp)
  configlib.require(config.evaluate.num_objects <= config.data.num_test, "evaluate.num_objects",
                    config.evaluate.num_objects, f"at most data.num_test = {config.data.num_test}")
  configlib.require(config.transmission.num_objects <= config.data.num_test,
                    "transmission.num_objects", config.transmission.num_objects,
                    f"at most data.num_test = {config.data.num_test}")
  counts = list(config.evaluate.observed_counts)
  configlib.require(bool(counts) and all(isinstance(k, int) and 1 <= k < v for k in counts),
                    "evaluate.observed_counts", counts, f"integers in [1, {v - 1}]")
  bits = list(config.transmission.bits)
  configlib.require(bool(bits) and all(b in BITS for b in bits), "transmission.bits", bits,
                    f"values among {BITS}")
  configlib.require_range(config, "transmission.bit_error_rate", 0.0, 0.5)
  configlib.require_range(config, "transmission.view_loss_prob", 0.0, 1.0)
  n_views = config.data.num_train * v
  for key in ("autoencoder.train.batch_size", "classifier.train.batch_size"):
    configlib.require(configlib.get_path(config, key) <= n_views, key, configlib.get_path(config, key),
                      f"at most the {n_views} training views")
  configlib.require(config.diffusion.train.batch_size <= config.data.num_train,
                    "diffusion.train.batch_size", config.diffusion.train.batch_size,
                    f"at most data.num_train = {config.data.num_train} objects")


class Run(MethodRun):
  """Shared state of one MVLD run: config, workdir, mesh, model spec, keys, writer, paths."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir, STAGES)  # config.json: read by the Python API too
    self.spec = mvld_model.build_spec(config)

  @functools.cached_property
  def data(self) -> dict:
    return load_views(self.config, self.workdir)

  def autoencoder_params(self) -> Any:
    return load_params(self.path("models", "autoencoder.msgpack"))

  def score_params(self) -> Any:
    return load_params(self.path("models", "score_net.msgpack"))

  def latent_stats(self) -> mvld_model.LatentStats:
    with np.load(self.path("models", "latent_stats.npz")) as f:
      return mvld_model.LatentStats(mean=f["mean"], std=f["std"])

  def latent_range(self) -> tuple[np.ndarray, np.ndarray]:
    with np.load(self.path("models", "latent_stats.npz")) as f:
      return f["lo"], f["hi"]

  def classifier(self):
    shape = self.data["train_images"].shape[2:]
    return load_classifier(self.config.classifier, self.data["num_classes"], shape,
                           workdir=self.workdir, name="classifier", mesh=self.mesh)

  def encode(self, ae_params: Any, images: np.ndarray) -> np.ndarray:
    """Raw latents [N, V, L] of uint8 [N, V, H, W, 3], in batches."""
    fn = jax.jit(functools.partial(mvld_model.encode_views, self.spec, ae_params))
    bs = max(1, self.config.evaluate.batch_size)
    return np.concatenate([np.asarray(fn(images[i:i + bs])) for i in range(0, len(images), bs)])


def _stage_data(run: Run) -> None:
  d = run.data
  if is_main_process():
    print(f"[data] {d['description']}: train {d['train_images'].shape}, test {d['test_images'].shape}",
          flush=True)
    run.save_figure(image_grid(d["train_images"][:8]), "samples", "data.png")


def _stage_autoencoder(run: Run) -> None:
  images = run.data["train_images"]
  views = images.reshape((-1,) + images.shape[2:])
  params = train_autoencoder(run.spec, run.config.autoencoder, views, workdir=run.workdir,
                             mesh=run.mesh, key=run.key("train_autoencoder"), writer=run.writer,
                             seed=run.config.seed)
  if is_main_process():
    save_params(run.path("models", "autoencoder.msgpack"), params)


def _stage_diffusion(run: Run) -> None:
  require_stage(run.workdir, "train_autoencoder", "train_diffusion")
  ae = run.autoencoder_params()
  latents = run.encode(ae, run.data["train_images"])
  stats = mvld_model.LatentStats.fit(latents)
  z = np.asarray(stats.standardize(latents))
  if is_main_process():  # the receiver's quantiser range is part of the model
    atomic_save_npz(run.path("models", "latent_stats.npz"), mean=np.asarray(stats.mean),
                    std=np.asarray(stats.std), lo=z.reshape(-1, z.shape[-1]).min(0),
                    hi=z.reshape(-1, z.shape[-1]).max(0))
  params = train_diffusion(run.spec, run.config.diffusion, z.reshape((len(z), -1)), workdir=run.workdir,
                           mesh=run.mesh, key=run.key("train_diffusion"), writer=run.writer,
                           seed=run.config.seed)
  if is_main_process():
    save_params(run.path("models", "score_net.msgpack"), params)


def _stage_classifier(run: Run) -> None:
  images, labels = run.data["train_images"], run.data["train_labels"]
  v = images.shape[1]
  fit_classifier(run.config.classifier, images.reshape((-1,) + images.shape[2:]),
                 np.repeat(labels, v), run.data["num_classes"], workdir=run.workdir,
                 name="classifier", mesh=run.mesh, key=run.key("train_classifier"), writer=run.writer)


def _generator(run: Run):
  require_stage(run.workdir, "train_diffusion", "sampling")
  return mvld_eval.make_generator(run.spec, run.autoencoder_params(), run.score_params(),
                                  run.latent_stats(), run.config.sampler)


def _stage_sample(run: Run) -> None:
  generate = _generator(run)
  n = run.config.evaluate.num_grid_objects
  images = run.data["test_images"][:n]
  v = images.shape[1]
  joint = generate(run.key("sample"), images, np.zeros((n, v), np.float32))  # nothing observed
  one = generate(jax.random.fold_in(run.key("sample"), 1), images,
                 np.eye(v, dtype=np.float32)[np.zeros(n, int)])  # view 0 observed
  if is_main_process():
    run.save_figure(image_grid(np.asarray(joint)), "samples", "joint.png")
    run.save_figure(image_grid(np.concatenate([np.asarray(one), images], axis=0)),
                    "samples", "from_view0.png")


def _stage_evaluate(run: Run) -> None:
  require_stage(run.workdir, "train_classifier", "evaluate")
  generate = _generator(run)
  cfg = run.config.evaluate
  images = run.data["test_images"][:cfg.num_objects]
  labels = run.data["test_labels"][:cfg.num_objects]
  judges = build_judges(run.config, run.classifier(), run.mesh)
  reconstruct = mvld_eval.reconstruct_fn(run.spec, run.autoencoder_params())
  table, examples = mvld_eval.evaluate_table1(
      generate, reconstruct, images, labels, judges, observed_counts=list(cfg.observed_counts),
      key=run.key("evaluate"), batch_size=cfg.batch_size, seed=run.config.seed)
  if is_main_process():
    atomic_write_json(run.path("eval", "table1.json"),
                      {"table1": table, "feature_network": judges.feature_network,
                       "lpips_network": judges.lpips_network})
    run.save_figure(mvld_eval.example_grid(images, examples, cfg.num_grid_objects),
                    "samples", "table1_examples.png")


def _stage_transmission(run: Run) -> None:
  cfg = run.config.transmission
  if not cfg.enabled:
    return
  require_stage(run.workdir, "train_classifier", "transmission")
  ae, score, stats = run.autoencoder_params(), run.score_params(), run.latent_stats()
  lo, hi = run.latent_range()
  images = run.data["test_images"][:cfg.num_objects]
  labels = run.data["test_labels"][:cfg.num_objects]
  judges = build_judges(run.config, run.classifier(), run.mesh)
  spec = run.spec

  @jax.jit
  def receive(key, z_rx, received):
    z = mvld_model.sample_latents(spec, score, key, z_rx.reshape((z_rx.shape[0], -1)), received,
                                  run.config.sampler)
    z = stats.unstandardize(z.reshape(z_rx.shape))
    return mvld_model.decode_views(spec, ae, z)

  def encode(x):
    return np.asarray(stats.standardize(run.encode(ae, x)))

  def judge(generated, true, labels):
    return mvld_eval.pair_metrics(generated, true, labels, judges, run.config.evaluate.batch_size)

  rows = transmission.run_study(encode, receive, images, labels, judge, latent_dim=spec.latent_dim,
                                bits_list=list(cfg.bits), bit_error_rate=cfg.bit_error_rate,
                                view_loss_prob=cfg.view_loss_prob, lo=lo, hi=hi,
                                key=run.key("transmission"), seed=run.config.seed)
  if is_main_process():
    atomic_write_json(run.path("eval", "transmission.json"),
                      {"rows": rows, "lpips_network": judges.lpips_network,
                       "classifier": judges.feature_network})
    series = {}
    for bits in cfg.bits:
      sel = [r for r in rows if r["bits"] == bits]
      series[f"MVLD {bits}-bit"] = ([r["bytes"] for r in sel], [r["psnr"] for r in sel])
    by_k = {r["views_sent"]: r for r in rows}
    series["PNG views (k sent)"] = ([by_k[k]["png_bytes"] for k in sorted(by_k)],
                                    [_png_psnr(run, k) for k in sorted(by_k)])
    run.save_figure(line_plot(series, title="Bytes sent per object vs PSNR of all views",
                              xlabel="bytes per object", ylabel="PSNR (dB)", log_x=True),
                    "eval", "transmission.png")


def _png_psnr(run: Run, k: int) -> float:
  """PSNR over all V views when only k PNG views are sent and nothing fills the others: views not
  sent count as a mid-grey image (what a receiver without a generative model can show)."""
  images = run.data["test_images"][:run.config.transmission.num_objects].astype(np.float64)
  v = images.shape[1]
  errs = []
  for view in range(v):
    if view < k:  # lossless
      continue
    errs.append(np.mean((images[:, view] - 127.5) ** 2, axis=(1, 2, 3)))
  if not errs:
    return float("inf")
  mse = np.sum(errs, axis=0) / v
  return float(np.mean(10 * np.log10(255.0 ** 2 / mse)))


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  table = read_json(run.path("eval", "table1.json"))
  trans_path = run.path("eval", "transmission.json")
  trans = read_json(trans_path) if os.path.exists(trans_path) else None
  if is_main_process():
    mvld_report.write(run.config, run.workdir, run.data, table, trans)


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  plan = [("data", lambda: _stage_data(run)), ("train_autoencoder", lambda: _stage_autoencoder(run)),
          ("train_diffusion", lambda: _stage_diffusion(run)),
          ("train_classifier", lambda: _stage_classifier(run)), ("sample", lambda: _stage_sample(run)),
          ("evaluate", lambda: _stage_evaluate(run)),
          ("transmission", lambda: _stage_transmission(run)), ("report", lambda: _stage_report(run))]
  run_method(run, plan, "mvld", stages, force)
