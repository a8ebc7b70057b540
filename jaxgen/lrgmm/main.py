"""LR-GMM-NN end to end (paper 004): data -> autoencoder -> feature classifier -> fit -> generate ->
evaluate -> report.

For every column (N, K) of `table1`, `fit` learns P0, the GMM and its eigenpairs on the first N
images of X; `generate` draws LR-GMM codes, refines them by the NN projection (LR-GMM-NN), draws
the NN step alone from random codes (Fig. 6c) and decodes all three; `evaluate` computes Table 1,
the d_k sweep (Fig. 8), the memorisation check, decoded centroids (Fig. 7) and latent maps (Fig. 1).
"""

from __future__ import annotations

import functools
import math
import time

import jax
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.errors import ConfigError
from jaxgen.gmm import pca
from jaxgen.gmm.lowrank import component_dims
from jaxgen.gmm.init import INITS
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid, save_png
from jaxgen.io.params import load_params, save_params
from jaxgen.io.plots import line_plot
from jaxgen.lrgmm import autoencoder as ae_lib
from jaxgen.lrgmm import evaluate as ev
from jaxgen.lrgmm import model as lrgmm
from jaxgen.lrgmm import report as lrgmm_report
from jaxgen.lrgmm.data import DATA_NAMES, load_sets
from jaxgen.parallel.mesh import is_main_process
from jaxgen.stages import MethodRun, require_stage, run_method
from jaxgen.io import paths

STAGES = ("data", "train_autoencoder", "train_classifier", "fit", "generate", "evaluate", "report")
METHODS = ("lr_gmm", "lr_gmm_nn", "nn_only")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every impossible value fails here, before anything is built: shapes come from eval_shape."""
  dp = configlib.validate_base(config, num_devices)
  d = config.data
  configlib.require_choice(config, "data.name", DATA_NAMES)
  for key in ("data.image_size", "data.num_target", "data.num_test"):
    configlib.require_positive_int(config, key)
  configlib.require_positive_int(config, "data.num_aux", allow_zero=True)
  configlib.require_choice(config, "autoencoder.kind", ae_lib.KINDS)
  configlib.require_choice(config, "autoencoder.vqgan_preset", ae_lib.VQGAN_PRESETS)
  cfg_ae = config.autoencoder
  if cfg_ae.kind == "spatial":
    configlib.require(d.name == "faces" or d.num_aux > 0, "autoencoder.kind", cfg_ae.kind,
                      "'vqgan' for on-disk data (the spatial autoencoder trains on the faces' A set)")
    configlib.require(bool(cfg_ae.channels) and all(isinstance(c, int) and c > 0 for c in cfg_ae.channels),
                      "autoencoder.channels", list(cfg_ae.channels), "a non-empty list of positive integers")
    down = 2 ** len(cfg_ae.channels)
    configlib.require(d.image_size % down == 0 and d.image_size // down >= 1, "data.image_size",
                      d.image_size, f"a multiple of {down} (2 ** len(autoencoder.channels))")
    configlib.require_positive_int(config, "autoencoder.latent_channels")
    configlib.require_positive_int(config, "data.num_aux")
    configlib.validate_train(config, "autoencoder.train", dp)
    configlib.require(cfg_ae.train.batch_size <= d.num_aux, "autoencoder.train.batch_size",
                      cfg_ae.train.batch_size, f"at most data.num_aux = {d.num_aux}")
  h, w, c = ae_lib.latent_shape(cfg_ae, d.image_size)
  q = config.latent.num_channels
  configlib.require(isinstance(q, int) and 1 <= q <= c, "latent.num_channels", q,
                    f"an integer in [1, {c}] (the autoencoder's {c} latent channels)")
  d0 = h * w * q
  configlib.require_choice(config, "gmm.init", INITS)
  configlib.require_positive_int(config, "gmm.max_iter")
  configlib.require(config.gmm.tol >= 0, "gmm.tol", config.gmm.tol, "a non-negative number")
  configlib.require(config.gmm.reg_covar > 0, "gmm.reg_covar", config.gmm.reg_covar, "a positive number")
  configlib.require(config.lowrank.temperature > 0, "lowrank.temperature", config.lowrank.temperature,
                    "a positive number")
  configlib.require_positive_int(config, "lowrank.fixed_dim", allow_zero=True)
  configlib.require(config.lowrank.fixed_dim <= d0, "lowrank.fixed_dim", config.lowrank.fixed_dim,
                    f"0 (temperature rule) or at most d0 = {d0}")
  ps = config.nn.patch_size
  configlib.require(isinstance(ps, int) and ps >= 1 and ps % 2 == 1, "nn.patch_size", ps,
                    "an odd positive integer omega = 2 rho + 1")
  configlib.require_positive_int(config, "nn.num_iters")
  configlib.require_positive_int(config, "nn.chunk_size")
  sizes, comps = list(config.table1.sizes), list(config.table1.components)
  configlib.require(bool(sizes) and all(isinstance(n, int) and 2 <= n <= d.num_target for n in sizes),
                    "table1.sizes", sizes, f"integers in [2, data.num_target = {d.num_target}]")
  configlib.require(len(set(sizes)) == len(sizes), "table1.sizes", sizes, "distinct sizes")
  configlib.require(len(comps) == len(sizes) and all(isinstance(k, int) and 1 <= k <= n
                                                     for k, n in zip(comps, sizes)),
                    "table1.components", comps, "one integer K in [1, N] per entry of table1.sizes")
  e = config.evaluate
  for key in ("evaluate.num_samples", "evaluate.batch_size", "evaluate.pr_k", "evaluate.num_grid"):
    configlib.require_positive_int(config, key)
  configlib.require(e.num_samples > e.pr_k and d.num_test > e.pr_k, "evaluate.pr_k", e.pr_k,
                    "fewer than evaluate.num_samples and data.num_test")
  configlib.require(e.num_grid <= e.num_samples, "evaluate.num_grid", e.num_grid,
                    f"at most evaluate.num_samples = {e.num_samples}")
  configlib.require(e.sweep_size in sizes, "evaluate.sweep_size", e.sweep_size,
                    f"one of table1.sizes {sizes}")
  temps = list(e.sweep_temperatures)
  configlib.require(bool(temps) and all(isinstance(t, (int, float)) and t > 0 for t in temps),
                    "evaluate.sweep_temperatures", temps, "a non-empty list of positive numbers")
  if not e.inception_path:
    configlib.require(d.name == "faces", "evaluate.inception_path", e.inception_path,
                      "the FID InceptionV3 weight file for data without attribute labels")
    validate_classifier_config(config, "classifier", dp)
    configlib.require(config.classifier.train.batch_size <= d.num_aux, "classifier.train.batch_size",
                      config.classifier.train.batch_size, f"at most data.num_aux = {d.num_aux}")
  elif not paths.isfile(e.inception_path):
    raise ConfigError("evaluate.inception_path", e.inception_path, "an existing FID Inception weight file")
  ae_lib.check_checkpoint(cfg_ae)


class Run(MethodRun):
  """Shared state of one LR-GMM-NN run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir, STAGES)

  @functools.cached_property
  def data(self) -> dict:
    return load_sets(self.config)

  @functools.cached_property
  def codec(self) -> ae_lib.Codec:
    params = None
    if self.config.autoencoder.kind == "spatial":
      require_stage(self.workdir, "train_autoencoder", "fit")
      params = load_params(self.path("models", "autoencoder.msgpack"))
    return ae_lib.make_codec(self.config.autoencoder, params, self.config.evaluate.batch_size, self.mesh)

  @functools.cached_property
  def features(self):
    """(feature function uint8 images -> [n, f], name of the network)."""
    cfg = self.config.evaluate
    if cfg.inception_path:
      from jaxgen.metrics.inception import inception_feature_fn, load_fid_inception
      fn = inception_feature_fn(load_fid_inception(cfg.inception_path), batch_size=cfg.batch_size,
                                mesh=self.mesh)
      return (lambda x: fn(x)[0]), f"InceptionV3 pool3 (FID weights {cfg.inception_path})"
    require_stage(self.workdir, "train_classifier", "evaluate")
    clf = load_classifier(self.config.classifier, self.data["num_classes"], self.data["aux"].shape[1:],
                          workdir=self.workdir, name="classifier", mesh=self.mesh)
    return ((lambda x: clf.features(x, batch_size=self.config.classifier.eval_batch_size)),
            f"in-domain {self.config.classifier.arch} classifier trained by jaxgen on A's attribute "
            "labels (penultimate features), not InceptionV3: not comparable with published FIDs")

  def columns(self) -> list[tuple[int, int]]:
    return list(zip(self.config.table1.sizes, self.config.table1.components))

  def model(self, n: int) -> lrgmm.FittedModel:
    return lrgmm.FittedModel.load(self.path("models", f"lrgmm_N{n}.npz"))


def _stage_data(run: Run) -> None:
  d = run.data
  if is_main_process():
    print(f"[data] {d['description']}", flush=True)
    if run.config.log_images:
      save_png(run.path("samples", "target.png"), image_grid(d["target"][:32], ncols=8))


def _stage_autoencoder(run: Run) -> None:
  cfg = run.config.autoencoder
  if cfg.kind != "spatial":
    run.codec  # loads and checks the checkpoint now, not mid-way through fitting
    return
  params = ae_lib.train_spatial(cfg, run.data["aux"], workdir=run.workdir, mesh=run.mesh,
                                key=run.key("train_autoencoder"), writer=run.writer, seed=run.config.seed)
  if is_main_process():
    save_params(run.path("models", "autoencoder.msgpack"), params)
    x = run.data["target"][:run.config.evaluate.num_grid]
    codec = ae_lib.make_codec(cfg, params, run.config.evaluate.batch_size)
    if run.config.log_images:
      save_png(run.path("samples", "reconstructions.png"),
               image_grid(np.stack([x, codec.decode(codec.encode(x))])))


def _stage_classifier(run: Run) -> None:
  if run.config.evaluate.inception_path:
    return
  d = run.data
  fit_classifier(run.config.classifier, d["aux"], d["aux_labels"], d["num_classes"],
                 workdir=run.workdir, name="classifier", mesh=run.mesh,
                 key=run.key("train_classifier"), writer=run.writer)


def _max_rank(config: ml_collections.ConfigDict, d0: int) -> int:
  temps = list(config.evaluate.sweep_temperatures) + [config.lowrank.temperature]
  return max(config.lowrank.fixed_dim, min(d0, math.ceil(max(temps) * d0)))


def _stage_fit(run: Run) -> None:
  cfg = run.config
  for i, (n, k) in enumerate(run.columns()):
    x = run.data["target"][:n]
    h, w, c = ae_lib.latent_shape(cfg.autoencoder, cfg.data.image_size)
    q = cfg.latent.num_channels
    d0 = h * w * q
    fit = functools.partial(lrgmm.fit, run.codec.encode, x, num_channels=q, num_components=k,
                            gmm_cfg=cfg.gmm, temperature=cfg.lowrank.temperature,
                            fixed_dim=cfg.lowrank.fixed_dim, max_rank=_max_rank(cfg, d0),
                            key=run.key("fit", i), mesh=run.mesh)
    model, timing = fit()
    if n == cfg.evaluate.sweep_size:  # the timing table's column: time a second, compiled fit
      model, timing = fit()
    if is_main_process():
      model.save(run.path("models", f"lrgmm_N{n}.npz"))
      dims = np.asarray(model.lowrank.dims)
      atomic_write_json(run.path("eval", f"fit_N{n}.json"), {
          "N": n, "K": k, "d0": d0, "latent_shape": list(model.latent_shape), "timing": timing,
          "em_iterations": model.num_iters, "em_converged": model.converged,
          "mean_log_likelihood": model.log_likelihood.tolist(), "weights": np.asarray(model.lowrank.weights).tolist(),
          "dims": dims.tolist(), "form": "dual" if n < d0 else "full",
          # Paper supp. sec. 3: P0 stores y_bar, V0, s0; each component c_k, d_k eigenvectors, s_k, pi_k.
          "num_parameters": int(np.sum((dims + 1) * d0 + dims + 1)) + (c + 1) * q + c})
      print(f"[fit] N={n} K={k}: {model.num_iters} EM iterations (converged {model.converged}), "
            f"d_k={dims.tolist()}, setup {timing['setup_total_s']:.2f}s", flush=True)


def _generate(run: Run, model: lrgmm.FittedModel, key: jax.Array, num: int, sampler=None,
              nn_only: bool = True) -> dict:
  """The methods' samples (uint8) and per-image timings for one fitted model; `nn_only=False`
  skips the NN-alone baseline (it does not depend on the low-rank sampler)."""
  codec, cfg = run.codec, run.config
  t0 = time.perf_counter()
  codes, comps = lrgmm.sample_codes(model, jax.random.fold_in(key, 0), num, sampler)
  t_sample = time.perf_counter() - t0
  t0 = time.perf_counter()
  refined = lrgmm.refine(model, codes, comps, cfg.nn)
  jax.block_until_ready(refined.latents)
  t_refine = time.perf_counter() - t0
  t0 = time.perf_counter()
  lr_images = lrgmm.decode_codes(codec.decode, model.projector, codes)
  t_decode = time.perf_counter() - t0
  out = {"lr_gmm": lr_images,
         "lr_gmm_nn": lrgmm.decode_codes(codec.decode, model.projector, np.asarray(refined.latents))}
  if nn_only:
    random = lrgmm.refine(model, lrgmm.random_codes(model, jax.random.fold_in(key, 1), num), None, cfg.nn)
    out["nn_only"] = lrgmm.decode_codes(codec.decode, model.projector, np.asarray(random.latents))
  return {**out, "indices": np.asarray(refined.indices), "components": comps,
          "timing": {"sampling_per_image_s": t_sample / num, "refining_per_image_s": t_refine / num,
                     "decoding_per_image_s": t_decode / num}}


def _stage_generate(run: Run) -> None:
  require_stage(run.workdir, "fit", "generate")
  cfg = run.config.evaluate
  for i, (n, _) in enumerate(run.columns()):
    model = run.model(n)
    out = _generate(run, model, run.key("generate", i), cfg.num_samples)
    if n == cfg.sweep_size:  # the timing table's column: time a second, compiled generation
      out = _generate(run, model, run.key("generate", i), cfg.num_samples)
    if is_main_process():
      atomic_save_npz(run.path("samples", f"N{n}.npz"), **{m: out[m] for m in METHODS},
                      indices=out["indices"], components=out["components"])
      atomic_write_json(run.path("eval", f"generate_N{n}.json"), out["timing"])
      if run.config.log_images:
        g = cfg.num_grid
        save_png(run.path("samples", f"N{n}_methods.png"),
                 image_grid(np.stack([out[m][:g] for m in METHODS])))
        scale = max(1, run.config.data.image_size // out["indices"].shape[1])
        save_png(run.path("samples", f"N{n}_latent_maps.png"),
                 image_grid(np.stack([out["lr_gmm_nn"][:g],
                                      ev.latent_map_image(out["indices"][:g], n, scale)])))


def _stage_evaluate(run: Run) -> None:
  require_stage(run.workdir, "generate", "evaluate")
  cfg = run.config
  feat_fn, feature_network = run.features
  real = feat_fn(run.data["test"])
  test_latents = run.codec.encode(run.data["test"])
  autoencoder = ev.set_metrics(real, feat_fn(run.codec.decode(test_latents)), cfg.evaluate.pr_k)
  table1, memo = {}, {}
  for n, _ in run.columns():
    with paths.load_npz(run.path("samples", f"N{n}.npz")) as f:
      samples = {m: f[m] for m in METHODS}
    table1[str(n)] = {m: ev.set_metrics(real, feat_fn(samples[m]), cfg.evaluate.pr_k) for m in METHODS}
    table1[str(n)]["real_target"] = ev.set_metrics(real, feat_fn(run.data["target"][:max(n, cfg.evaluate.pr_k + 1)]),
                                                   cfg.evaluate.pr_k)
    # The ceilings: E then D, and E -> P0 -> P0* -> D (paper Fig. 5b), on the test images.
    table1[str(n)]["autoencoder"] = autoencoder
    model = run.model(n)
    p0_codes = np.asarray(pca.project(model.projector, test_latents))
    table1[str(n)]["p0_reconstruction"] = ev.set_metrics(
        real, feat_fn(lrgmm.decode_codes(run.codec.decode, model.projector, p0_codes)), cfg.evaluate.pr_k)
    m = ev.memorisation(samples, run.data["target"][:n], run.data["test"])
    memo[str(n)] = {name: {k: v for k, v in stats.items() if k != "distances"} for name, stats in m.items()}
    if n == cfg.evaluate.sweep_size and is_main_process():
      series = ev.histogram_series({name: stats["distances"] for name, stats in m.items()})
      save_png(run.path("eval", "memorisation.png"),
               line_plot(series, title=f"Distance to the nearest of the N={n} training images",
                         xlabel="pixel L2 distance ([0,1] scale)", ylabel="density"))
  sweep = _sweep(run, real, feat_fn)
  fits = {str(n): read_json(run.path("eval", f"fit_N{n}.json")) for n, _ in run.columns()}
  gens = {str(n): read_json(run.path("eval", f"generate_N{n}.json")) for n, _ in run.columns()}
  model = run.model(cfg.evaluate.sweep_size)
  # Every process decodes: the codec is split over all hosts' devices (a collective).
  centroids = lrgmm.decode_codes(run.codec.decode, model.projector,
                                 np.asarray(model.lowrank.means).reshape((-1,) + model.latent_shape))
  if is_main_process():
    save_png(run.path("samples", "centroids.png"), image_grid(centroids))
    atomic_write_json(run.path("eval", "evaluation.json"), {
        "table1": table1, "sweep": sweep, "memorisation": memo, "fits": fits, "generation": gens,
        "feature_network": feature_network, "num_test": int(len(real))})


def _sweep(run: Run, real: np.ndarray, feat_fn) -> list[dict]:
  """Fig. 8: quality vs diversity over the temperature lambda (same eps for every lambda)."""
  cfg = run.config
  n = cfg.evaluate.sweep_size
  model = run.model(n)
  weights = np.asarray(model.lowrank.weights)
  rows, grids = [], []
  for temp in cfg.evaluate.sweep_temperatures:
    dims = component_dims(weights, model.dim, temperature=temp, max_rank=model.lowrank.bases.shape[2])
    out = _generate(run, model, run.key("evaluate", 1), cfg.evaluate.num_samples,
                    lrgmm.with_dims(model, dims), nn_only=False)
    row = {"temperature": float(temp), "dims": dims.tolist()}
    for m in ("lr_gmm", "lr_gmm_nn"):
      row[m] = ev.set_metrics(real, feat_fn(out[m]), cfg.evaluate.pr_k)
    rows.append(row)
    grids.append(out["lr_gmm"][:cfg.evaluate.num_grid])
  if is_main_process() and cfg.log_images:
    save_png(run.path("samples", "sweep_lowrank.png"), image_grid(np.stack(grids)))
  return rows


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  if is_main_process():
    lrgmm_report.write(run.config, run.workdir, run.data["description"],
                       read_json(run.path("eval", "evaluation.json")))


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  plan = [("data", lambda: _stage_data(run)), ("train_autoencoder", lambda: _stage_autoencoder(run)),
          ("train_classifier", lambda: _stage_classifier(run)), ("fit", lambda: _stage_fit(run)),
          ("generate", lambda: _stage_generate(run)), ("evaluate", lambda: _stage_evaluate(run)),
          ("report", lambda: _stage_report(run))]
  run_method(run, plan, "lrgmm", stages, force)
