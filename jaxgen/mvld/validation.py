"""MVLD's config checks: every impossible value of `configs/mvld.py` (and of DIMVIDA's `mvld`
section) fails here, before anything trains; the networks, samplers and judges are built
abstractly at the configured shapes."""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
import PIL.features

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.data.multiview import VARIANTS
from jaxgen.errors import ConfigError
from jaxgen.mvld import model as mvld_model
from jaxgen.mvld import sampler_study
from jaxgen.mvld import transmission_baselines as baselines
from jaxgen.mvld.judges import check_judge_architecture, has_feature_layers
from jaxgen.nets.mixed_precision import COMPUTE_DTYPES
from jaxgen.nets.mld_autoencoder import num_levels as mld_num_levels
from jaxgen.sde.samplers import ODE_METHODS, PREDICTORS
from jaxgen.io import paths

DATA_NAMES = ("multiview", "nmr")
SAMPLERS = ("euler_maruyama", "pc", "ode", "repaint", "ddim", "dpmpp_2m", "dpmpp_2s")
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
  configlib.require_choice(config, "diffusion.prediction", mvld_model.PREDICTIONS)
  configlib.require(config.diffusion.prediction == "eps" or config.diffusion.sde == "vpsde",
                    "diffusion.prediction", config.diffusion.prediction,
                    f"'eps' with diffusion.sde={config.diffusion.sde} (v needs vpsde: a^2 + s^2 = 1)")
  configlib.require_choice(config, "diffusion.mask_mode", ("per_example", "per_batch"))
  configlib.require_range(config, "diffusion.joint_prob", 0.0, 1.0)
  configlib.require_range(config, "diffusion.t_eps", 1e-6, 0.5)
  configlib.require_choice(config, "sampler.name", SAMPLERS)
  configlib.require_choice(config, "sampler.time_spacing", ("logsnr", "uniform"))
  configlib.require(isinstance(config.sampler.eta, (int, float)) and config.sampler.eta >= 0,
                    "sampler.eta", config.sampler.eta, "a number >= 0")
  if config.sampler.name in ("ddim", "dpmpp_2m", "dpmpp_2s"):  # few-step samplers of VP-type SDEs
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
  _validate_perceptual(config, dp)
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
  for key in ("autoencoder.train.batch_size", "classifier.train.batch_size",
              "autoencoder.perceptual.train.batch_size"):
    configlib.require(configlib.get_path(config, key) <= n_views, key, configlib.get_path(config, key),
                      f"at most the {n_views} training views")
  configlib.require(config.diffusion.train.batch_size <= config.data.num_train,
                    "diffusion.train.batch_size", config.diffusion.train.batch_size,
                    f"at most data.num_train = {config.data.num_train} objects")


def _validate_perceptual(config: ml_collections.ConfigDict, dp: int) -> None:
  """The autoencoder's feature loss: its weight, its network (checked whether used or not, as
  every section) and the layers it reads (traced)."""
  weight = config.autoencoder.perceptual_weight
  configlib.require(isinstance(weight, (int, float)) and 0 <= weight < float("inf"),
                    "autoencoder.perceptual_weight", weight, "a number >= 0 (0: eq. 1's L1 alone)")
  validate_classifier_config(config, "autoencoder.perceptual", dp)
  layers = config.autoencoder.perceptual_layers
  configlib.require(isinstance(layers, (tuple, list)) and bool(layers)
                    and all(isinstance(n, str) and n for n in layers),
                    "autoencoder.perceptual_layers", layers, "a non-empty list of submodule names")
  net = config.autoencoder.perceptual
  configlib.trace_once(config, ("autoencoder.perceptual", "autoencoder.perceptual_layers",
                                "data.image_size"),
                       lambda: configlib.require(
                           has_feature_layers(net, config.data.image_size, tuple(layers)),
                           "autoencoder.perceptual_layers", list(layers),
                           f"submodules of autoencoder.perceptual.arch={net.arch} (a resnet's "
                           "'stage1' ... 'stage4')"))


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
