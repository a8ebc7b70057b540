"""MVLD end to end: data -> autoencoder -> latent diffusion -> judge classifier -> sample ->
Table I evaluation -> transmission study -> report (paper 002; model of paper 000 sec. II-III).

Each stage leaves its outputs in the workdir (models/, eval/, samples/) and is skipped when
re-run; the training stages resume from their checkpoints. `run_context` exposes the same
pieces to the Python API (`jaxgen.mvld.api.MVLD`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
import PIL.features

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.data.batches import first_records, ordered_batches
from jaxgen.data.multiview import VARIANTS
from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.io.params import load_params, save_params
from jaxgen.io.plots import line_plot
from jaxgen.mvld import evaluate as mvld_eval
from jaxgen.mvld import model as mvld_model
from jaxgen.mvld import report as mvld_report
from jaxgen.mvld import sampler_study
from jaxgen.mvld import transmission
from jaxgen.mvld import transmission_baselines as baselines
from jaxgen.mvld.data import load_views
from jaxgen.mvld.judges import build_judges, check_judge_architecture
from jaxgen.mvld.train import train_autoencoder, train_diffusion
from jaxgen.nets.mixed_precision import COMPUTE_DTYPES
from jaxgen.nets.mld_autoencoder import num_levels as mld_num_levels
from jaxgen.parallel.mesh import is_main_process, place_if_divisible, to_host
from jaxgen.sde.samplers import ODE_METHODS, PREDICTORS
from jaxgen.stages import MethodRun, require_stage, run_method
from jaxgen.io import paths

# Each stage's random key is folded from its index here: new stages go at the end.
STAGES = ("data", "train_autoencoder", "train_diffusion", "train_classifier", "sample", "evaluate",
          "transmission", "report", "sampler_study")
DATA_NAMES = ("multiview", "nmr")
SAMPLERS = ("euler_maruyama", "pc", "ode", "repaint", "ddim", "dpmpp_2m")
BITS = (32, 16, 8, 4)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every impossible value fails here, before anything is built or compiled."""
  dp = configlib.validate_base(config, num_devices)
  configlib.require_choice(config, "data.name", DATA_NAMES)
  configlib.require_choice(config, "data.variant", VARIANTS)
  for key in ("data.image_size", "data.num_train", "data.num_test", "autoencoder.latent_dim",
              "sampler.num_steps", "evaluate.num_objects", "evaluate.batch_size",
              "transmission.num_objects"):
    configlib.require_positive_int(config, key)
  v = config.data.num_views
  configlib.require(isinstance(v, int) and 2 <= v <= 24, "data.num_views", v, "an integer in [2, 24]")
  configlib.require_choice(config, "autoencoder.kind", mvld_model.AUTOENCODERS)
  for key in ("autoencoder.channels", "diffusion.score_net.widths"):  # chosen kind or not
    sizes = list(configlib.get_path(config, key))
    configlib.require(bool(sizes) and all(isinstance(w, int) and w >= 1 for w in sizes), key, sizes,
                      "a non-empty list of positive integers")
  size = config.data.image_size
  if config.autoencoder.kind == "conv":
    down = 2 ** len(config.autoencoder.channels)
    configlib.require(size % down == 0, "data.image_size", size,
                      f"a multiple of {down} (2 ** len(autoencoder.channels))")
  else:  # mld_cub pools by 2 down to a 16x16 map
    try:
      mld_num_levels(size, 16)
    except ValueError:
      raise ConfigError("data.image_size", size,
                        "16 times a power of two for autoencoder.kind=mld_cub") from None
  configlib.require_choice(config, "autoencoder.augment", ("trivial_augment_wide", "none"))
  configlib.validate_train(config, "autoencoder.train", dp)
  configlib.validate_train(config, "diffusion.train", dp)
  configlib.require_choice(config, "diffusion.sde", mvld_model.SDES)
  for name in mvld_model.SDES:  # every SDE's own section, checked by that SDE (the chosen one too)
    if name in config.diffusion:
      mvld_model.build_sde(ml_collections.ConfigDict({**config.diffusion.to_dict(), "sde": name}))
  configlib.require_choice(config, "diffusion.score_net.kind", mvld_model.SCORE_NETS)
  ted = config.diffusion.score_net.time_embed_dim
  configlib.require(isinstance(ted, int) and ted >= 2 and ted % 2 == 0,
                    "diffusion.score_net.time_embed_dim", ted,
                    "an even integer >= 2 (sine and cosine halves)")
  net = config.diffusion.score_net
  for key in ("attention_depth", "attention_heads", "attention_width", "blocks_per_level",
              "unet_init_dim", "unet_time_dim", "unet_groups"):  # every kind's sizes, chosen or not
    if key in net:
      configlib.require_positive_int(config, f"diffusion.score_net.{key}")
  mults = list(net.unet_dim_mults)
  configlib.require(bool(mults) and all(isinstance(m, int) and m >= 1 for m in mults),
                    "diffusion.score_net.unet_dim_mults", mults, "a non-empty list of integers >= 1")
  if net.kind == "unet_mlp":
    _validate_unet_mlp(config)
  elif net.kind == "attention":
    configlib.require(net.attention_width % net.attention_heads == 0, "diffusion.score_net.attention_heads",
                      net.attention_heads, f"a divisor of attention_width = {net.attention_width}")
  configlib.require_choice(config, "diffusion.score_net.compute_dtype", COMPUTE_DTYPES)
  configlib.require(net.kind != "attention" or net.compute_dtype == "float32",
                    "diffusion.score_net.compute_dtype", net.compute_dtype,
                    "float32 with kind='attention' (bfloat16 is implemented for mlp and unet_mlp)")
  configlib.require_choice(config, "diffusion.mask_mode", ("per_example", "per_batch"))
  configlib.require_range(config, "diffusion.joint_prob", 0.0, 1.0)
  configlib.require_range(config, "diffusion.t_eps", 1e-6, 0.5)
  configlib.require_choice(config, "sampler.name", SAMPLERS)
  configlib.require_choice(config, "sampler.time_spacing", ("logsnr", "uniform"))
  configlib.require(isinstance(config.sampler.eta, (int, float)) and config.sampler.eta >= 0,
                    "sampler.eta", config.sampler.eta, "a number >= 0")
  if config.sampler.name in ("ddim", "dpmpp_2m"):  # few-step samplers of VP-type SDEs
    configlib.require(config.diffusion.sde in ("vpsde", "subvpsde"), "diffusion.sde",
                      config.diffusion.sde, f"vpsde or subvpsde for sampler {config.sampler.name}")
  configlib.require_positive_int(config, "sampler.jump_length")
  configlib.require_positive_int(config, "sampler.num_repeats")
  # Every sampler key is checked whichever sampler is chosen (the sampler study and the API use
  # the others), then the chosen sampler is traced below.
  configlib.require_choice(config, "sampler.predictor", PREDICTORS)
  configlib.require_choice(config, "sampler.ode_method", ODE_METHODS)
  snr = config.sampler.snr
  configlib.require(isinstance(snr, (int, float)) and snr > 0, "sampler.snr", snr, "a positive number")
  configlib.require_positive_int(config, "sampler.n_corrector_steps", allow_zero=True)
  t_eps = config.sampler.t_eps
  configlib.require(isinstance(t_eps, (int, float)) and 0 < t_eps < 0.5, "sampler.t_eps", t_eps,
                    "a number in (0, 0.5): the time sampling stops at")
  configlib.require(isinstance(config.sampler.denoise, bool), "sampler.denoise", config.sampler.denoise,
                    "true or false")
  if config.sampler.name == "repaint":
    configlib.require(config.sampler.jump_length <= config.sampler.num_steps, "sampler.jump_length",
                      config.sampler.jump_length, f"at most sampler.num_steps = {config.sampler.num_steps}")
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
  configlib.require_positive_int(config, "evaluate.num_grid_objects", allow_zero=True)
  for key in ("inception_path", "lpips_backbone_path", "lpips_linear_path"):
    path = config.evaluate[key]
    configlib.require(not path or paths.isfile(path), f"evaluate.{key}", path,
                      "'' or an existing weight file")
  _validate_baselines(config)
  _validate_sampler_study(config)
  # Last: every key it reads has been checked on its own.
  configlib.trace_once(config, ("data", "autoencoder", "diffusion", "sampler"),
                       functools.partial(_check_networks_build, config))
  configlib.trace_once(config, ("classifier", "evaluate", "data.image_size"),
                       functools.partial(check_judge_architecture, config, "classifier"))
  n_views = config.data.num_train * v
  for key in ("autoencoder.train.batch_size", "classifier.train.batch_size"):
    configlib.require(configlib.get_path(config, key) <= n_views, key, configlib.get_path(config, key),
                      f"at most the {n_views} training views")
  configlib.require(config.diffusion.train.batch_size <= config.data.num_train,
                    "diffusion.train.batch_size", config.diffusion.train.batch_size,
                    f"at most data.num_train = {config.data.num_train} objects")


def _validate_unet_mlp(config: ml_collections.ConfigDict) -> None:
  net = config.diffusion.score_net
  mults = list(net.unet_dim_mults)
  widths = [net.unet_init_dim] + [net.unet_init_dim * m for m in mults]
  configlib.require(all(w % net.unet_groups == 0 for w in widths), "diffusion.score_net.unet_groups",
                    net.unet_groups, f"a divisor of every level width {widths} (GroupNorm groups)")


def _check_networks_build(config: ml_collections.ConfigDict) -> None:
  """Trace both networks' init on the configured shapes (jax.eval_shape: nothing is computed), so
  a shape that cannot work fails here rather than after the autoencoder has trained."""
  spec = mvld_model.build_spec(config)
  size, v, latent = config.data.image_size, config.data.num_views, config.autoencoder.latent_dim
  f32 = np.float32
  variables = {}
  for name, init, shapes in (
      ("autoencoder.kind", spec.autoencoder.init, [(1, size, size, 3)]),
      ("diffusion.score_net.kind", spec.score_net.init, [(1, v * latent), (1, v)])):
    try:
      variables[name] = jax.eval_shape(init, jax.random.key(0),
                                       *[jax.ShapeDtypeStruct(s, f32) for s in shapes])
    except (TypeError, ValueError, AssertionError) as err:
      raise ConfigError(name, configlib.get_path(config, name),
                        f"a network that builds at these shapes ({str(err).splitlines()[0][:160]})") from None
  # The configured sampler, traced on abstract parameters: its own argument checks run now.
  params = variables["diffusion.score_net.kind"]["params"]
  z = jax.ShapeDtypeStruct((2, v * latent), f32)
  observed = jax.ShapeDtypeStruct((2, v), f32)
  jax.eval_shape(lambda p, z, o: mvld_model.sample_latents(spec, p, jax.random.key(0), z, o, config.sampler),
                 params, z, observed)


def _validate_sampler_study(config: ml_collections.ConfigDict) -> None:
  cfg = config.sampler_study
  configlib.require(isinstance(cfg.enabled, bool), "sampler_study.enabled", cfg.enabled, "true or false")
  if not cfg.enabled:
    return
  configlib.require_positive_int(config, "sampler_study.num_objects")
  configlib.require(cfg.num_objects <= config.data.num_test, "sampler_study.num_objects",
                    cfg.num_objects, f"at most data.num_test = {config.data.num_test}")
  names = list(cfg.samplers)
  allowed = sampler_study.STUDY_SAMPLERS
  configlib.require(bool(names) and all(n in allowed for n in names) and len(set(names)) == len(names),
                    "sampler_study.samplers", names, f"distinct values among {allowed} (RePaint: "
                    "sampler_study.repaint)")
  if set(sampler_study.VP_ONLY) & set(names):
    configlib.require(config.diffusion.sde in ("vpsde", "subvpsde"), "sampler_study.samplers", names,
                      f"none of {sampler_study.VP_ONLY} with diffusion.sde={config.diffusion.sde}")
  nfes = list(cfg.nfe)
  configlib.require(bool(nfes) and all(isinstance(n, int) and n >= 3 for n in nfes), "sampler_study.nfe",
                    nfes, "integers >= 3 (network evaluations, the final denoising one included)")
  configlib.require(isinstance(cfg.repaint, bool), "sampler_study.repaint", cfg.repaint, "true or false")
  ref = list(cfg.reference)
  configlib.require(len(ref) == 2 and ref[0] in names and isinstance(ref[1], str) and ref[1].isdigit()
                    and int(ref[1]) in nfes, "sampler_study.reference", ref,
                    "[sampler, 'NFE'] with the sampler in sampler_study.samplers and NFE in sampler_study.nfe")
  configlib.require_positive_int(config, "sampler_study.reach_max_nfe")


def _validate_baselines(config: ml_collections.ConfigDict) -> None:
  base = config.transmission.baselines
  configlib.require(isinstance(base.enabled, bool), "transmission.baselines.enabled", base.enabled,
                    "true or false")
  for key, lo, hi in (("jpeg_qualities", 1, 100), ("webp_qualities", 0, 100)):
    values = list(base[key])
    configlib.require(all(isinstance(q, int) and lo <= q <= hi for q in values),
                      f"transmission.baselines.{key}", values, f"integers in [{lo}, {hi}]")
  if list(base.webp_qualities) and config.transmission.enabled and base.enabled:
    configlib.require(PIL.features.check("webp"), "transmission.baselines.webp_qualities",
                      list(base.webp_qualities), "[] (this Pillow build has no WebP encoder)")
  size = config.data.image_size
  factors = list(base.downsample_factors)
  configlib.require(all(isinstance(f, int) and f >= 2 and size % f == 0 for f in factors),
                    "transmission.baselines.downsample_factors", factors,
                    f"integers >= 2 dividing data.image_size = {size}")
  configlib.require(isinstance(base.png, bool), "transmission.baselines.png", base.png, "true or false")
  fills = list(base.fills)
  configlib.require(bool(fills) and all(f in baselines.FILLS for f in fills) and
                    len(set(fills)) == len(fills), "transmission.baselines.fills", fills,
                    f"distinct values among {baselines.FILLS}")
  configlib.require(bool(baselines.schemes_from_config(base)), "transmission.baselines", "no codec",
                    "at least one codec, or transmission.baselines.enabled=False")


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
    with paths.load_npz(self.path("models", "latent_stats.npz")) as f:
      return mvld_model.LatentStats(mean=f["mean"], std=f["std"])

  def latent_range(self) -> tuple[np.ndarray, np.ndarray]:
    with paths.load_npz(self.path("models", "latent_stats.npz")) as f:
      return f["lo"], f["hi"]

  def classifier(self):
    shape = self.data["image_shape"]
    return load_classifier(self.config.classifier, self.data["num_classes"], shape,
                           workdir=self.workdir, name="classifier", mesh=self.mesh)

  def encode(self, ae_params: Any, images: np.ndarray | Source) -> np.ndarray:
    """Raw latents [N, V, L] of uint8 [N, V, H, W, 3] (or of a source's objects, streamed in
    order), in batches."""
    fn = jax.jit(functools.partial(mvld_model.encode_views, self.spec, ae_params))
    bs = max(1, self.config.evaluate.batch_size)
    # Each batch the data axis divides is split over every host's devices (the last, short one
    # runs whole): the same latents, each host computing its rows.
    return np.concatenate([to_host(fn(place_if_divisible(batch, self.mesh)))
                           for batch in ordered_batches(images, bs)])


def _stage_data(run: Run) -> None:
  d = run.data
  if is_main_process():
    train = (len(d["train_images"]), len(d["test_images"][0]), *d["image_shape"])
    print(f"[data] {d['description']}: train {train}, test {d['test_images'].shape}", flush=True)
    run.save_figure(image_grid(first_records(d["train_images"], 8)), "samples", "data.png")


def _stage_autoencoder(run: Run) -> None:
  params = train_autoencoder(run.spec, run.config.autoencoder, run.data["train_views"],
                             workdir=run.workdir,
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
  views, labels = run.data["train_views"], run.data["train_labels"]
  view_labels = None if run.data["streamed"] else np.repeat(labels, len(views) // len(labels))
  fit_classifier(run.config.classifier, views, view_labels, run.data["num_classes"],
                 workdir=run.workdir,
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
      key=run.key("evaluate"), batch_size=cfg.batch_size, seed=run.config.seed, mesh=run.mesh)
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
    metrics = mvld_eval.pair_metrics(generated, true, labels, judges, run.config.evaluate.batch_size,
                                     run.mesh)
    # PSNR per object over all its views: finite when the sent views arrive losslessly.
    return {**metrics, "psnr": transmission.object_psnr(generated, true, run.config.data.num_views)}

  rows = transmission.run_study(encode, receive, images, labels, judge, latent_dim=spec.latent_dim,
                                bits_list=list(cfg.bits), bit_error_rate=cfg.bit_error_rate,
                                view_loss_prob=cfg.view_loss_prob, lo=lo, hi=hi,
                                key=run.key("transmission"), seed=run.config.seed)
  record = {"rows": rows, "lpips_network": judges.lpips_network, "classifier": judges.feature_network}
  if cfg.baselines.enabled:
    def generate(key, received_images, received):
      z = encode(received_images) * received[..., None]
      return receive(key, z, received)

    def judge_images(generated, true, labels):
      return mvld_eval.per_image_metrics(generated, true, labels, judges, run.config.evaluate.batch_size)

    record["baselines"] = baselines.run_baselines(
        images, labels, judge_images, generate, schemes=baselines.schemes_from_config(cfg.baselines),
        fills=list(cfg.baselines.fills),
        key=jax.random.fold_in(run.key("transmission"), 1_000_000))  # apart from run_study's keys
    record["equal_psnr"] = baselines.equal_psnr_table(rows, record["baselines"])
  if is_main_process():
    atomic_write_json(run.path("eval", "transmission.json"), record)
    run.save_figure(_rd_plot(rows, record.get("baselines", [])), "eval", "transmission.png")


def _rd_plot(rows: list[dict], baseline_rows: list[dict]) -> np.ndarray:
  """Bytes per object vs PSNR of all views: MVLD at each bit depth (over k), and the RD front of
  every baseline family (codec + fill)."""
  series = {}
  for bits in sorted({r["bits"] for r in rows}, reverse=True):
    sel = [r for r in rows if r["bits"] == bits]
    series[f"MVLD {bits}-bit"] = ([r["bytes"] for r in sel], [r["psnr"] for r in sel])
  for name, pts in sorted(baselines.family_points(baseline_rows).items()):
    front = baselines.rd_front([p for p in pts if np.isfinite(p[1])])
    series[name] = ([b for b, _ in front], [q for _, q in front])
  return line_plot(series, title="Bytes sent per object vs PSNR of all views (RD fronts)",
                   xlabel="bytes per object", ylabel="PSNR (dB)", log_x=True, size=(860, 520))


def _stage_sampler_study(run: Run) -> None:
  cfg = run.config.sampler_study
  if not cfg.enabled:
    return
  require_stage(run.workdir, "train_classifier", "sampler_study")
  ae, score, stats = run.autoencoder_params(), run.score_params(), run.latent_stats()
  images = run.data["test_images"][:cfg.num_objects]
  labels = run.data["test_labels"][:cfg.num_objects]
  judges = build_judges(run.config, run.classifier(), run.mesh)

  def make_generate(sampler):
    return mvld_eval.make_generator(run.spec, ae, score, stats, sampler)

  study = sampler_study.run_study(
      make_generate, images, labels, judges, base_sampler=run.config.sampler,
      samplers=list(cfg.samplers), nfes=list(cfg.nfe), repaint=cfg.repaint,
      observed_counts=list(run.config.evaluate.observed_counts), key=run.key("sampler_study"),
      batch_size=run.config.evaluate.batch_size, seed=run.config.seed, mesh=run.mesh,
      log=lambda line: print(line, flush=True) if is_main_process() else None)
  reference = list(cfg.reference)
  record = {"study": study, "reference": reference, "max_nfe": cfg.reach_max_nfe,
            "num_objects": int(len(images)), "feature_network": judges.feature_network,
            "tolerance": {m: list(t) for m, t in sampler_study.TOLERANCE.items()}}
  if reference[0] in study and reference[1] in study[reference[0]]:
    record["reaches"] = sampler_study.reaches_reference(study, tuple(reference), cfg.reach_max_nfe)
  if is_main_process():
    atomic_write_json(run.path("eval", "sampler_study.json"), record)
    run.save_figure(_nfe_plot(study), "eval", "sampler_study.png")


def _nfe_plot(study: dict) -> np.ndarray:
  """Metric vs NFE (log), one line per sampler, one panel per Table I metric."""
  panels = []
  for metric in mvld_eval.METRICS:
    series = {}
    for name, runs in study.items():
      rows = sorted(runs.values(), key=lambda r: r["nfe"])
      series[name] = ([r["nfe"] for r in rows], [r[metric] for r in rows])
    panels.append(line_plot(series, title=f"{metric} (mean over observed counts) vs NFE",
                            xlabel="network evaluations", ylabel=metric, log_x=True))
  if len(panels) % 2:
    panels.append(np.full_like(panels[0], 255))
  return np.concatenate([np.concatenate(panels[i:i + 2], axis=1) for i in range(0, len(panels), 2)])


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  table = read_json(run.path("eval", "table1.json"))
  optional = {}
  for name in ("transmission", "sampler_study"):
    path = run.path("eval", f"{name}.json")
    optional[name] = read_json(path) if paths.exists(path) else None
  if is_main_process():
    mvld_report.write(run.config, run.workdir, run.data, table, optional["transmission"],
                      optional["sampler_study"])


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  plan = [("data", lambda: _stage_data(run)), ("train_autoencoder", lambda: _stage_autoencoder(run)),
          ("train_diffusion", lambda: _stage_diffusion(run)),
          ("train_classifier", lambda: _stage_classifier(run)), ("sample", lambda: _stage_sample(run)),
          ("evaluate", lambda: _stage_evaluate(run)),
          ("transmission", lambda: _stage_transmission(run)),
          ("sampler_study", lambda: _stage_sampler_study(run)), ("report", lambda: _stage_report(run))]
  run_method(run, plan, "mvld", stages, force)
