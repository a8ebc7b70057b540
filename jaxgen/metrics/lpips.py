"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", eq. 1) and an uncalibrated in-domain variant on any Flax classifier.

    d(x, y) = sum_l 1/(H_l W_l) sum_{h,w} || w_l * (f^l_hw(x) - f^l_hw(y)) ||_2^2

with f^l the channel-unit-normalised activations of slice l of a trunk network (SqueezeNet 1.1,
AlexNet or VGG16; paper 000 uses SqueezeNet) and w_l >= 0 the learned 1x1 calibration weights
(the lpips package's `weights/v0.1/<net>.pth`). Inputs pass the lpips v0.1 scaling layer first.
Every number must be reported with `lpips_label(net)` / `domain_lpips_label(...)` so a reader
knows which network produced it.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.torch_state_dict import load_state_dict, to_flax_variables
from jaxgen.metrics.image import scale_to_unit_range
from jaxgen.nets.lpips_backbones import BACKBONES, CHANNELS, MIN_SIZE, torchvision_name
from jaxgen.parallel.batching import batched_apply
from jaxgen.io import paths

# lpips v0.1 ScalingLayer: maps [-1, 1] inputs to ImageNet-normalised ones.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
_EPS = 1e-10  # lpips.normalize_tensor

__all__ = [
    "LPIPS", "capture_features", "distance_from_features", "domain_lpips", "domain_lpips_label",
    "import_lpips", "load_lpips", "lpips", "lpips_diversity", "lpips_label", "sample_pairs",
]

TORCHVISION_FILES = {
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}


def _check_net(net: str) -> None:
  if net not in BACKBONES:
    # An argument, not a config key (no config sets the trunk): a plain ValueError.
    raise ValueError(f"LPIPS trunk {net!r}: expected one of {sorted(BACKBONES)}")


def lpips_label(net: str) -> str:
  """The name reports print next to a calibrated LPIPS number, e.g. 'LPIPS-v0.1(squeeze)'."""
  return f"LPIPS-v0.1({net})"


def domain_lpips_label(model_name: str, layer_names: Sequence[str]) -> str:
  """The name reports print next to an in-domain LPIPS number (uncalibrated, equal weights)."""
  return f"domain-LPIPS({model_name}:{','.join(layer_names)}, uncalibrated)"


def to_unit_range(images: jax.Array, value_range: tuple[float, float] | None = None) -> jax.Array:
  """uint8 [0, 255], or float images in the stated `value_range`, -> float32 [-1, 1].

  Single-channel images are repeated to three channels (the trunks are RGB networks).
  """
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise DataError(f"LPIPS input has shape {images.shape}; expected NHWC images")
  x = scale_to_unit_range(images, value_range, "LPIPS")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[-1] != 3:
    raise DataError(f"LPIPS input has {x.shape[-1]} channels; expected 1 or 3")
  return x


def unit_normalize(features: jax.Array) -> jax.Array:
  """Divides each spatial position's channel vector by its L2 norm (+1e-10), LPIPS eq. 1."""
  return features / (jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True)) + _EPS)


def distance_from_features(feats_x: Sequence[jax.Array], feats_y: Sequence[jax.Array],
                           weights: Sequence[jax.Array] | None = None) -> jax.Array:
  """LPIPS eq. 1 given per-layer activations [N, H, W, C] (or [N, C]) of both images.

  `weights` are the per-channel calibration weights w_l (squared norm weights, as the lpips
  package's 1x1 convolutions apply them to squared differences); None means all ones, i.e. the
  uncalibrated "baseline" of the paper. Returns [N].
  """
  total = 0.0
  for i, (fx, fy) in enumerate(zip(feats_x, feats_y, strict=True)):
    fx = fx.reshape(fx.shape[0], -1, fx.shape[-1]).astype(jnp.float32)
    fy = fy.reshape(fy.shape[0], -1, fy.shape[-1]).astype(jnp.float32)
    diff = (unit_normalize(fx) - unit_normalize(fy))**2
    per_pos = diff.sum(-1) if weights is None else diff @ weights[i]
    total = total + per_pos.mean(-1)
  return total


class LPIPS(nn.Module):
  """Calibrated LPIPS: trunk `net`, scaling layer, 1x1 non-negative weights `lin<l>` per slice.

  Freshly initialised, the `lin<l>` weights are ones (the uncalibrated baseline); load the real
  ones with `import_lpips`.
  """

  net: str = "squeeze"

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """x, y: float NHWC in [-1, 1] -> [N] distances."""
    trunk = BACKBONES[self.net](name="net")
    both = (jnp.concatenate([x, y], axis=0) - _SHIFT) / _SCALE
    feats = trunk(both)
    n = x.shape[0]
    weights = [self.param(f"lin{i}", nn.initializers.ones, (c,))
               for i, c in enumerate(CHANNELS[self.net])]
    return distance_from_features([f[:n] for f in feats], [f[n:] for f in feats], weights)


@functools.partial(jax.jit, static_argnames="net")
def _lpips_apply(variables: Any, x: jax.Array, y: jax.Array, net: str) -> jax.Array:
  return LPIPS(net).apply(variables, x, y)


def lpips(x: jax.Array, y: jax.Array, variables: Any, net: str = "squeeze",
          value_range: tuple[float, float] | None = None) -> jax.Array:
  """LPIPS distance (Zhang et al. 2018 eq. 1, lpips v0.1) between image batches -> [N].

  Args:
    x, y: NHWC, uint8 [0, 255] or float with `value_range` given, same shape, 1 or 3 channels,
      at least `MIN_SIZE[net]` pixels a side (squeeze 17, alex 31, vgg 16).
    variables: from `import_lpips` / `load_lpips` for the same `net`.
    net: 'squeeze' (paper 000), 'alex' or 'vgg'.
    value_range: the scale of float inputs: (-1, 1), (0, 1) or (0, 255); required for them.
  """
  _check_net(net)
  x, y = to_unit_range(x, value_range), to_unit_range(y, value_range)
  if x.shape != y.shape:
    raise DataError(f"LPIPS inputs have shapes {x.shape} and {y.shape}; expected equal shapes")
  if min(x.shape[1:3]) < MIN_SIZE[net]:
    raise DataError(f"LPIPS({net}) input is {x.shape[1]}x{x.shape[2]}; the {net} trunk needs at "
                    f"least {MIN_SIZE[net]}x{MIN_SIZE[net]} (upsample smaller images first)")
  return _lpips_apply(variables, x, y, net)


def sample_pairs(n: int, max_pairs: int | None, key: jax.Array | None) -> np.ndarray:
  """All unordered pairs i < j of n items, or `max_pairs` pairs drawn uniformly (with
  replacement) among them when there are more; returns [P, 2] int indices."""
  if n < 2:
    raise DataError(f"LPIPS diversity needs at least 2 images, got {n}")
  total = n * (n - 1) // 2
  if max_pairs is None or max_pairs >= total:
    i, j = np.triu_indices(n, k=1)
    return np.stack([i, j], axis=1)
  if key is None:
    raise ValueError("lpips pairs: a PRNG key is needed when max_pairs < the number of pairs")
  ki, kj = jax.random.split(key)
  i = np.asarray(jax.random.randint(ki, (max_pairs,), 0, n))
  j = np.asarray(jax.random.randint(kj, (max_pairs,), 0, n - 1))
  j = j + (j >= i)  # uniform over the n - 1 indices other than i
  return np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)


def lpips_diversity(images: jax.Array, variables: Any = None, net: str = "squeeze", *,
                    max_pairs: int | None = None, key: jax.Array | None = None,
                    batch_size: int = 32,
                    distance_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                    ) -> float:
  """Mean pairwise LPIPS over a set of images, the diversity score of paper 003 (higher = more
  diverse): mean over pairs (i < j) of d(x_i, x_j), all pairs or `max_pairs` sampled with `key`.

  `distance_fn(x, y) -> [B]` replaces the calibrated LPIPS (e.g. a partial of `domain_lpips`);
  then `variables`/`net` are unused.
  """
  if distance_fn is None:
    _check_net(net)
    distance_fn = functools.partial(lpips, variables=variables, net=net)
  images = np.asarray(images)
  pairs = sample_pairs(images.shape[0], max_pairs, key)
  # The pairs' indices are batched (one compiled shape; padding rows are the pair (0, 0) and are
  # dropped), each batch's images gathered on the host.
  d = batched_apply(lambda i, j: distance_fn(images[i], images[j]), (pairs[:, 0], pairs[:, 1]),
                    batch_size)
  return float(np.asarray(d, np.float64).sum() / len(pairs))


def _lpips_key(name: str) -> str:
  """Accepts full `lpips.LPIPS` state dicts too: net.sliceK.<i>.x -> features.<i>.x,
  linK.model.<j>.weight -> linK."""
  name = re.sub(r"^net\.slice\d+\.(\d+)\.", r"features.\1.", name)
  return re.sub(r"^(lin\d+)\.model\.\d+\.weight$", r"\1", name)


def import_lpips(backbone_state_dict: Mapping[str, np.ndarray],
                 lin_state_dict: Mapping[str, np.ndarray], net: str = "squeeze") -> dict:
  """LPIPS variables from torchvision trunk weights and the lpips calibration weights.

  Args:
    backbone_state_dict: torchvision's `squeezenet1_1` / `alexnet` / `vgg16` weights (keys
      `features.<i>...`; the classifier is ignored), or an `lpips.LPIPS` state dict.
    lin_state_dict: the lpips package's `weights/v0.1/<net>.pth` (`lin<l>.model.1.weight`).
    net: 'squeeze', 'alex' or 'vgg'.
  Raises:
    DataError: keys missing, wrong shapes, or negative calibration weights.
  """
  _check_net(net)
  trunk = {_lpips_key(k): v for k, v in backbone_state_dict.items()}
  target = jax.eval_shape(BACKBONES[net]().init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3), jnp.float32))
  params = to_flax_variables(trunk, target, torchvision_name,
                             f"torchvision {net} weights ({TORCHVISION_FILES[net]})")["params"]
  lins = {_lpips_key(k): v for k, v in lin_state_dict.items()}
  out = {"net": params}
  for i, c in enumerate(CHANNELS[net]):
    w = lins.get(f"lin{i}")
    if w is None or w.size != c:
      raise DataError(f"lpips weights/v0.1/{net}.pth: lin{i}.model.1.weight with {c} channels "
                      "is missing or has another size; is this the file for this net?")
    w = np.asarray(w, np.float32).reshape(c)
    if (w < 0).any():
      raise DataError(f"lpips weights for {net}: lin{i} has negative weights; expected the "
                      "non-negative calibration weights of lpips weights/v0.1")
    out[f"lin{i}"] = w
  return {"params": out}


def load_lpips(backbone_path: str, lin_path: str, net: str = "squeeze", *,
               backbone_key: str = "evaluate.lpips_backbone_path",
               lin_key: str = "evaluate.lpips_linear_path") -> dict:
  """`import_lpips` from files; a missing file raises DataError saying where it comes from and
  which config key (the caller's `backbone_key` / `lin_key`) takes its path."""
  _check_net(net)
  hints = {
      backbone_path: (f"get torchvision's ImageNet weights {TORCHVISION_FILES[net]} (download."
                      f"pytorch.org/models/{TORCHVISION_FILES[net]}) yourself and set "
                      f"--config.{backbone_key}; jaxgen never downloads weights"),
      lin_path: (f"get weights/v0.1/{net}.pth from the lpips package (pip install lpips, or "
                 f"github.com/richzhang/PerceptualSimilarity) yourself and set --config.{lin_key}; "
                 "jaxgen never downloads weights"),
  }
  for path in (backbone_path, lin_path):  # both files are checked before either is read
    if not paths.isfile(path):
      raise DataError(f"weight file {path} does not exist; {hints[path]}")
  backbone = load_state_dict(backbone_path, hint=hints[backbone_path])
  lin = load_state_dict(lin_path, hint=hints[lin_path])
  return import_lpips(backbone, lin, net)


def capture_features(apply_fn: Callable[..., Any], variables: Any, images: jax.Array,
                     layer_names: Sequence[str],
                     apply_kwargs: Mapping[str, Any] | None = None) -> list[jax.Array]:
  """Outputs of the submodules `layer_names` ('stage1', 'stage2/block0', ...) of a Flax model.

  Calls `apply_fn(variables, images, capture_intermediates=..., mutable=['intermediates'],
  **apply_kwargs)` (e.g. `model.apply` with `apply_kwargs={'train': False}`) and returns the
  `__call__` output of each named submodule, in the order given.
  """
  wanted = set(layer_names)

  def keep(module: nn.Module, method: str) -> bool:
    return method == "__call__" and "/".join(module.path) in wanted

  _, state = apply_fn(variables, images, capture_intermediates=keep, mutable=["intermediates"],
                      **dict(apply_kwargs or {}))
  feats = []
  for name in layer_names:
    node = state.get("intermediates", {})
    for part in name.split("/"):
      node = node.get(part, {}) if isinstance(node, Mapping) else {}
    value = node.get("__call__") if isinstance(node, Mapping) else None
    if not value:  # the callers' validation names their config key (e.g. classifier.arch)
      raise ValueError(f"the classifier has no submodule {name!r} to take LPIPS features from")
    feats.append(value[0])
  return feats


def _domain_lpips(x: jax.Array, y: jax.Array, variables: Any, apply_fn: Callable[..., Any],
                  layer_names: tuple[str, ...], kwargs: tuple,
                  preprocess: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  both = jnp.concatenate([x, y], axis=0)
  if both.dtype == jnp.uint8:
    both = preprocess(both) if preprocess is not None else both.astype(jnp.float32) / 127.5 - 1.0
  else:
    both = both.astype(jnp.float32)
  feats = capture_features(apply_fn, variables, both, layer_names, dict(kwargs))
  n = x.shape[0]
  return distance_from_features([f[:n] for f in feats], [f[n:] for f in feats])


_domain_lpips_jit = jax.jit(_domain_lpips,
                            static_argnames=("apply_fn", "layer_names", "kwargs", "preprocess"))


def domain_lpips(x: jax.Array, y: jax.Array, apply_fn: Callable[..., Any], variables: Any,
                 layer_names: Sequence[str],
                 apply_kwargs: Mapping[str, Any] | None = None,
                 preprocess: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """In-domain LPIPS: eq. 1 with unit-normalised channels and equal weights (the paper's
  uncalibrated baseline) on the activations of `layer_names` of any Flax classifier -> [N].

  For offline use when the ImageNet trunks are unavailable or off-domain; report it with
  `domain_lpips_label`, never as "LPIPS". uint8 inputs go through `preprocess` (the classifier's
  own input normalisation, e.g. `Classifier.preprocess`; default: to [-1, 1]); float inputs are
  taken to be the classifier's input already. Compiled once per (apply_fn,
  layer_names, apply_kwargs) when those are hashable (e.g. `model.apply`, {'train': False}),
  otherwise traced eagerly; it can also be called inside the caller's own `jax.jit`.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.shape != y.shape:
    raise DataError(f"domain LPIPS inputs have shapes {x.shape} and {y.shape}; expected equal")
  names = tuple(layer_names)
  kwargs = tuple(sorted(dict(apply_kwargs or {}).items()))
  try:
    hash((apply_fn, kwargs, preprocess))
  except TypeError:
    return _domain_lpips(x, y, variables, apply_fn, names, kwargs, preprocess)
  return _domain_lpips_jit(x, y, variables, apply_fn=apply_fn, layer_names=names, kwargs=kwargs,
                           preprocess=preprocess)
