"""The FID Inception-V3 (Szegedy et al. 2016) as used for FID (Heusel et al. 2017) and IS
(Salimans et al. 2016): the TF "2015-12-05" graph in the PyTorch port of pytorch-fid.

It is torchvision's Inception3 with pytorch-fid's block changes: in Mixed_5b..5d (FIDInceptionA),
Mixed_6b..6e (FIDInceptionC) and Mixed_7b (FIDInceptionE_1) the pool branch averages without
counting padding, Mixed_7c (FIDInceptionE_2) max-pools instead, and the head has 1008 classes.
Inputs are resized to 299x299 (bilinear, half-pixel centres, no antialias, as F.interpolate with
align_corners=False) and scaled to [-1, 1]. Outputs: pool3 (2048) and the 1008 logits.
Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` via `load_fid_inception`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.torch_state_dict import load_state_dict, to_flax_variables
from jaxgen.metrics.image import scale_to_unit_range
from jaxgen.nets.conv import Conv
from jaxgen.parallel.batching import batched_apply

__all__ = [
    "FID_WEIGHTS_FILE", "FIDInceptionV3", "fid_weights_hint", "InceptionFeatures", "import_fid_inception",
    "inception_feature_fn", "load_fid_inception",
]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
def fid_weights_hint(config_key: str) -> str:
  """Where the FID weights come from, naming the caller's config key that takes their path."""
  return (f"get {FID_WEIGHTS_FILE} from the pytorch-fid release assets (github.com/mseitzer/"
          f"pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}) yourself and set "
          f"--config.{config_key} to it; jaxgen never downloads weights")
INPUT_SIZE = 299
NUM_CLASSES = 1008


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of 1-D linear interpolation with half-pixel centres and edge clamping.

  Source coordinate of output pixel o is (o + 0.5) * in/out - 0.5, clamped below at 0, i.e.
  `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)` without antialias.
  The coordinates are rounded like PyTorch's CPU kernel (float32 scale, float32 result), so
  features match pytorch-fid's to float32 rounding rather than differing by its ~1e-5
  coordinate error.
  """
  f32 = np.float32
  scale = np.float64(f32(in_size) / f32(out_size))
  src = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(f32), f32(0.0))
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(f32), f32(0.0), f32(1.0))
  m = np.zeros((out_size, in_size), np.float32)
  np.add.at(m, (np.arange(out_size), lo), f32(1.0) - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """Resizes NHWC `x` to (height, width) with `bilinear_matrix` along each axis."""
  mh = jnp.asarray(bilinear_matrix(x.shape[1], height))
  mw = jnp.asarray(bilinear_matrix(x.shape[2], width))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hi)
  return jnp.einsum("pw,nowc->nopc", mw, x, precision=hi)


class BasicConv(nn.Module):
  """Conv (no bias) + BatchNorm(eps=1e-3, running statistics) + ReLU: torchvision BasicConv2d."""

  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = Conv(self.features, self.kernel, strides=(self.strides, self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool over the valid pixels only (count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3(x: jax.Array, stride: int) -> jax.Array:
  pad = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=pad)


class FIDInceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(no pad count)-1x1."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(48, name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: stride-2 3x3 | 1x1-3x3-3x3(stride 2) | maxpool(stride 2)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3(x, 2)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches and an avgpool(no pad count)-1x1 branch."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) pairs
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c7, name="branch7x7_1")(x)
    b7 = BasicConv(c7, row[0], padding=row[1], name="branch7x7_2")(b7)
    b7 = BasicConv(192, col[0], padding=col[1], name="branch7x7_3")(b7)
    bd = BasicConv(c7, name="branch7x7dbl_1")(x)
    for i, (kp, ch) in enumerate(((col, c7), (row, c7), (col, c7), (row, 192)), start=2):
      bd = BasicConv(ch, kp[0], padding=kp[1], name=f"branch7x7dbl_{i}")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 1x1-3x3(stride 2) | 1x1-1x7-7x1-3x3(stride 2) | maxpool(stride 2)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(192, name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3(x, 2)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (`max_pool=False`, FIDInceptionE_1) and Mixed_7c (`max_pool=True`, E_2)."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max3(x, 1) if self.max_pool else _avg3(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Inception-V3 of the FID/IS reference implementations; returns (pool3 [N, 2048], logits
  [N, 1008] = pool3 @ W + b).

  Input: float NHWC in [-1, 1], 3 channels, any size >= 75 (resized to 299 first unless
  `resize` is None, which tests use to run small inputs).
  """

  resize: int | None = INPUT_SIZE

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if self.resize is not None:
      x = resize_bilinear(x, self.resize, self.resize)
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max3(x, 2)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max3(x, 2)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = FIDInceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = FIDInceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = FIDInceptionE(max_pool=False, name="Mixed_7b")(x)
    x = FIDInceptionE(max_pool=True, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, name="fc")(pool3)
    return pool3, logits


def import_fid_inception(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Variables {'params', 'batch_stats'} of `FIDInceptionV3` from pytorch-fid's
  `pt_inception-2015-12-05` state dict (torchvision names: `Conv2d_1a_3x3.conv.weight`,
  `Mixed_5b.branch1x1.bn.running_mean`, `fc.weight`, ...).

  Raises:
    DataError: a key is missing or has the wrong shape (e.g. a 1000-class torchvision file).
  """
  target = jax.eval_shape(FIDInceptionV3(resize=None).init, jax.random.key(0),
                          jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return to_flax_variables(dict(state_dict), target, ".".join,
                           f"FID Inception weights ({FID_WEIGHTS_FILE})")


def load_fid_inception(path: str, config_key: str = "evaluate.inception_path") -> dict:
  """`import_fid_inception(load_state_dict(path))`; a missing file raises a DataError that says
  where to get `pt_inception-2015-12-05-6726825d.pth` (jaxgen never downloads it) and which
  config key (`config_key`, the caller's) takes its path."""
  return import_fid_inception(load_state_dict(path, hint=fid_weights_hint(config_key)))


@functools.partial(jax.jit, static_argnames=("resize",))
def _inception_apply(variables: Any, x: jax.Array, resize: int | None) -> tuple[jax.Array, ...]:
  return FIDInceptionV3(resize=resize).apply(variables, x)


def preprocess(images: jax.Array, value_range: tuple[float, float] | None = None) -> jax.Array:
  """uint8 NHWC [0, 255], or float images in the stated `value_range` ((-1, 1), (0, 1) or
  (0, 255); required for float input), -> float32 [-1, 1]; gray -> RGB."""
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"Inception input has shape {images.shape}; expected NHWC with 1 or 3 channels")
  x = scale_to_unit_range(images, value_range, "Inception")
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def inception_feature_fn(variables: Any, *, logits_bias: bool = False, batch_size: int = 100,
                         resize: int | None = INPUT_SIZE, mesh: Any = None,
                         ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Returns `f(images) -> (pool3 [N, 2048], logits [N, 1008])` as NumPy float32.

  `images` are uint8 NHWC (any size, 1 or 3 channels). pool3 is the FID feature (Heusel et al.
  2017). The logits follow the original Inception Score code (Salimans et al. 2016), which
  multiplies pool3 by the softmax weights without the bias; `logits_bias=True` adds it (the
  full torchvision `fc`). Batches are padded to `batch_size` so one compiled shape is reused;
  with a `mesh` they are split over its data axis (every host computes its rows).
  """
  bias = np.asarray(variables["params"]["fc"]["bias"], np.float32)

  def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = batched_apply(lambda chunk: _inception_apply(variables, preprocess(chunk), resize),
                        np.asarray(images), batch_size, pad="edge", mesh=mesh)
    if out is None:
      return np.zeros((0, 2048), np.float32), np.zeros((0, NUM_CLASSES), np.float32)
    pools, logits = out
    return np.asarray(pools), np.asarray(logits) - (0.0 if logits_bias else bias)

  return features


@dataclasses.dataclass(frozen=True, eq=False)
class InceptionFeatures:
  """A `jaxgen.metrics.features.FeatureExtractor` over the FID Inception-V3.

  `output`: 'pool3' (2048-d, FID/KID/PRDC), 'logits' (1008-d pool3 @ W, the Inception Score
  convention of Salimans et al. 2016) or 'logits_bias' (pool3 @ W + b). Call on a uint8 NHWC
  batch; traceable, so it can be jitted and sharded by the caller.
  """

  variables: Any
  output: str = "pool3"
  resize: int | None = INPUT_SIZE
  value_range: tuple[float, float] | None = None  # required for float images (see `preprocess`)

  def __post_init__(self):
    if self.output not in ("pool3", "logits", "logits_bias"):
      raise DataError(f"InceptionFeatures output {self.output!r}; expected 'pool3', 'logits' or "
                      "'logits_bias'")

  @property
  def name(self) -> str:
    return f"inception_v3_fid {self.output} ({FID_WEIGHTS_FILE})"

  @property
  def feature_dim(self) -> int:
    return 2048 if self.output == "pool3" else NUM_CLASSES

  def __call__(self, images: jax.Array) -> jax.Array:
    pool3, logits = _inception_apply(self.variables, preprocess(images, self.value_range), self.resize)
    if self.output == "pool3":
      return pool3
    if self.output == "logits":
      return logits - self.variables["params"]["fc"]["bias"]
    return logits
