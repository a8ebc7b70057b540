"""Paper 003 Table 7: the label augmentation in a class-conditional diffusion model with
classifier-free guidance (CFG), beside the GANs.

Model: the label-conditioned pixel U-Net of `jaxgen.nets.label_unet` on the VP SDE of
`jaxgen.sde` (x_t = a(t) x_0 + s(t) eps), trained with the shared denoising score-matching loss
(`jaxgen.sde.losses.dsm_loss`, t ~ U(t_eps, 1)) to predict v = a eps - s x_0 (default) or eps.
Why v: an eps model's data prediction (x_t - s eps_hat) / a multiplies its error by ~150 near
t = 1, and a small pixel model trained for minutes is nowhere near accurate enough there; its
few-step samples diverged to noise (checked), while v keeps x0_hat = a x_t - s v_hat bounded.
The label y of each real image is the variant's label vector, as in the GAN's discriminator: one-hot for plain CFG, the classifier's
softmax C(x) for "CFG w/ our label augmentation" (paper sec. 5.4). With probability `p_uncond`
(Ho & Salimans 2022: 0.1 to 0.2) y is replaced by the null label, which trains the unconditional
branch. Sampling conditions on one-hot labels only, like the GAN's generator, and guides as
eps_u + w (eps_c - eps_u) (w = `guidance_scale`; 1 = no guidance) with a few-step solver of
`jaxgen.sde.fast_samplers` (DPM-Solver++(2M) or DDIM), one compiled scan per batch. The noise
is drawn for all samples at once, so images do not depend on the batch size or device count.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxgen import configlib
from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError
from jaxgen.nets import label_unet
from jaxgen.nets.common import to_model_range, to_uint8
from jaxgen.nets.cond_unet import CondUNetConfig
from jaxgen.nets.label_unet import LabelUNet, LabelUNetConfig
from jaxgen.parallel.batching import batched_apply
from jaxgen.sde.fast_samplers import batched_guided_score_fn, sample_ddim, sample_dpmpp_2m
from jaxgen.sde.losses import PREDICTIONS, dsm_loss
from jaxgen.sde.samplers import eps_to_score_fn, v_to_score_fn
from jaxgen.sde.sdes import VPSDE
from jaxgen.softlabel_gan.labels import Variant
from jaxgen.softlabel_gan.train import real_batches
from jaxgen.train import loop
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState
from jaxgen.train.xla_cpu import sampling_jit

Array = jax.Array
SAMPLERS = ("dpmpp_2m", "ddim")
# CondUNetConfig's field -> the config key it comes from, for errors that name the user's key.
_UNET_KEYS = {"block_out_channels": "channels", "down_block_types": "attention_levels",
              "up_block_types": "attention_levels", "num_attention_heads": "heads",
              "norm_num_groups": "num_groups", "cross_attention_dim": "embed_dim",
              "layers_per_block": "layers_per_block"}


def network_config(cfg: ml_collections.ConfigDict, num_classes: int) -> LabelUNetConfig:
  """The U-Net of the config's `diffusion` section: `channels` per level, cross-attention (with
  self-attention) on the levels `attention_levels` marks and in the middle block. A bad size
  raises ConfigError naming its `diffusion.*` key."""
  levels = tuple(bool(a) for a in cfg.attention_levels)
  if len(levels) != len(cfg.channels):
    raise ConfigError("diffusion.attention_levels", tuple(cfg.attention_levels),
                      f"{len(cfg.channels)} booleans (one per level of diffusion.channels)")
  try:
    unet = CondUNetConfig(
        in_channels=3, out_channels=3, block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in levels[::-1]),
        num_attention_heads=cfg.heads, cross_attention_dim=cfg.embed_dim,
        norm_num_groups=cfg.num_groups)
  except ConfigError as err:
    field = err.key.split(".", 1)[1]
    key = _UNET_KEYS.get(field, field)
    raise ConfigError(f"diffusion.{key}", cfg[key], err.expected) from None
  return LabelUNetConfig(unet=unet, num_classes=num_classes)


def build_sde(cfg: ml_collections.ConfigDict) -> VPSDE:
  return VPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max)


def init_state(net_cfg: LabelUNetConfig, cfg: ml_collections.ConfigDict, key: Array) -> TrainState:
  return TrainState.create(label_unet.init_params(net_cfg, key),
                           make_optimizer(cfg.train.optim, cfg.train.num_steps),
                           ema_decay=cfg.train.ema_decay)


def make_step_fn(net_cfg: LabelUNetConfig, cfg: ml_collections.ConfigDict):
  """One step: drop each label to the null label with probability p_uncond, then dsm_loss."""
  net, sde, k = LabelUNet(net_cfg), build_sde(cfg), net_cfg.num_classes

  def step_fn(state: TrainState, batch: dict, key: Array) -> tuple[TrainState, dict]:
    k_drop, k_loss = jax.random.split(key)
    x0 = to_model_range(batch["image"])
    b = x0.shape[0]
    drop = jax.random.bernoulli(k_drop, cfg.p_uncond, (b, 1))
    y = jnp.where(drop, label_unet.null_labels(b, k),
                  label_unet.with_null_slot(batch["label"].astype(jnp.float32)))

    def loss_fn(params):
      model = lambda x, t: net.apply({"params": params}, x, t, y)  # noqa: E731
      loss, aux = dsm_loss(k_loss, model, sde, x0, t_eps=cfg.t_eps, prediction=cfg.prediction)
      return loss, aux

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads), {"loss": loss, "grad_norm": optax.global_norm(grads)}

  return step_fn


def train_diffusion(name: str, net_cfg: LabelUNetConfig, cfg: ml_collections.ConfigDict,
                    variant: Variant, images: np.ndarray | Source, label_vectors: np.ndarray,
                    classes: np.ndarray, *, workdir: str, mesh: Mesh, key: Array,
                    writer: Any = None, image_size: int | None = None) -> TrainState:
  """Train (or resume) the diffusion model `name` on uint8 images (or a Source decoded at
  `image_size`) with their label vectors; returns the state (EMA in `eval_params`)."""
  k_init, k_data, k_train = jax.random.split(key, 3)
  state = init_state(net_cfg, cfg, k_init)
  seed = int(jax.random.randint(k_data, (), 0, 2**31 - 1))
  batches = real_batches(images, label_vectors, classes, cfg.train.batch_size, variant.sampling,
                         seed, image_size)
  return loop.train(name=name, state=state, step_fn=make_step_fn(net_cfg, cfg), batches=batches,
                    cfg=cfg.train, workdir=workdir, mesh=mesh, key=k_train, writer=writer)


def score_from_output(out: Array, x: Array, t: Array, sde: VPSDE, prediction: str) -> Array:
  """The score from the network's output: eps (score = -eps / s) or v (eps = a v + s x)."""
  fn = eps_to_score_fn if prediction == "eps" else v_to_score_fn
  return fn(lambda *_: out, sde)(x, t)


@functools.lru_cache(maxsize=8)
def _sampler(net_cfg: LabelUNetConfig, sde: VPSDE, sampler: str, num_steps: int, t_eps: float,
             prediction: str):
  net = LabelUNet(net_cfg)

  def run(params, noise, y, scale):
    def score_model(x, t, labels):
      return score_from_output(net.apply({"params": params}, x, t, labels), x, t, sde, prediction)

    null = label_unet.null_labels(y.shape[0], y.shape[1])
    score = batched_guided_score_fn(score_model, label_unet.with_null_slot(y), null, scale)
    solve = sample_ddim if sampler == "ddim" else sample_dpmpp_2m
    x = solve(jax.random.key(0), score, sde, noise.shape, num_steps, t_eps=t_eps, x_init=noise)
    return to_uint8(jnp.clip(x, -1.0, 1.0))

  return sampling_jit(run)  # on XLA:CPU, the route's sampling options (jaxgen/train/xla_cpu.py)


def sample(net_cfg: LabelUNetConfig, cfg: ml_collections.ConfigDict, params: Any, key: Array,
           classes: np.ndarray, image_size: int, batch_size: int,
           mesh: Mesh | None = None) -> np.ndarray:
  """uint8 samples [N, H, W, 3] for the class ids `classes`, guided with `cfg.guidance_scale`.
  DDIM runs with eta = 0 and DPM-Solver++ is deterministic, so the sampler's own key is fixed."""
  classes = np.asarray(classes, np.int32)
  noise = np.asarray(jax.random.normal(key, (len(classes), image_size, image_size, 3)), np.float32)
  y = np.eye(net_cfg.num_classes, dtype=np.float32)[classes]
  fn = _sampler(net_cfg, build_sde(cfg), cfg.sampler, cfg.num_steps, cfg.t_eps, cfg.prediction)
  scale = jnp.float32(cfg.guidance_scale)
  return batched_apply(lambda xb, yb: fn(params, xb, yb, scale), (noise, y), batch_size, mesh=mesh)


def validate(config: ml_collections.ConfigDict, num_classes: int, image_size: int,
             trace: bool) -> None:
  """The `diffusion` section's values; with `trace`, the U-Net and one training step are built
  abstractly at the configured sizes (a shape error fails here, not after the classifier)."""
  d = config.diffusion
  for key in ("diffusion.layers_per_block", "diffusion.heads", "diffusion.num_groups",
              "diffusion.embed_dim", "diffusion.num_steps"):
    configlib.require_positive_int(config, key)
  configlib.require(len(d.channels) > 0 and all(isinstance(c, int) and c > 0 for c in d.channels),
                    "diffusion.channels", tuple(d.channels), "a non-empty tuple of positive ints")
  configlib.require(image_size % 2 ** (len(d.channels) - 1) == 0, "diffusion.channels",
                    tuple(d.channels), f"at most log2 levels that halve {image_size} evenly")
  configlib.require_choice(config, "diffusion.sampler", SAMPLERS)
  configlib.require_choice(config, "diffusion.prediction", PREDICTIONS)
  configlib.require(bool(np.isfinite(d.beta_max) and d.beta_max > 0), "diffusion.beta_max",
                    d.beta_max, "a finite positive number")
  configlib.require(0.0 < d.beta_min < d.beta_max, "diffusion.beta_min", d.beta_min,
                    f"a positive number below diffusion.beta_max = {d.beta_max}")
  configlib.require(0.0 < d.t_eps < 0.5, "diffusion.t_eps", d.t_eps, "a number in (0, 0.5)")
  configlib.require(0.0 < d.p_uncond < 1.0, "diffusion.p_uncond", d.p_uncond,
                    "a probability in (0, 1) (CFG needs the unconditional branch trained)")
  configlib.require(bool(d.guidance_scale >= 0.0), "diffusion.guidance_scale", d.guidance_scale,
                    "a number >= 0 (1 = no guidance)")
  net_cfg = network_config(d, num_classes)
  if trace:  # (label_unet.init_params cuts host arrays; Flax's init gives the same tree abstractly)
    x = jnp.zeros((2, image_size, image_size, 3))
    y = label_unet.null_labels(2, num_classes)
    batch = {"image": jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.uint8),
             "label": jax.ShapeDtypeStruct((2, num_classes), jnp.float32)}
    try:
      params = jax.eval_shape(lambda k: LabelUNet(net_cfg).init(k, x, jnp.ones(2), y)["params"],
                              jax.random.key(0))
      state = jax.eval_shape(lambda p: TrainState.create(
          p, make_optimizer(d.train.optim, d.train.num_steps), ema_decay=d.train.ema_decay), params)
      jax.eval_shape(make_step_fn(net_cfg, d), state, batch, jax.random.key(0))
    except (ValueError, TypeError) as err:
      raise ConfigError("diffusion", f"channels={tuple(d.channels)}, heads={d.heads}",
                        f"a buildable U-Net at {image_size}x{image_size} ({err})") from None


__all__ = ["SAMPLERS", "build_sde", "init_state", "make_step_fn", "network_config", "sample",
           "train_diffusion", "validate"]
