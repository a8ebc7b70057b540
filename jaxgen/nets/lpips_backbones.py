"""Feature trunks of LPIPS (Zhang et al. 2018): SqueezeNet 1.1, AlexNet and VGG16 `features`.

Each module mirrors torchvision's `features` Sequential and returns the activations at the ends
of the slices the lpips package uses (7 for SqueezeNet, 5 for AlexNet and VGG16). Submodules are
named `features_<i>` after the torchvision index so `torchvision_name` maps them back to the
keys of torchvision's weight files (`features.<i>.weight`, `features.<i>.squeeze.weight`, ...).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets.conv import Conv


def max_pool(x: jax.Array, window: int, stride: int, ceil_mode: bool = False) -> jax.Array:
  """`torch.nn.MaxPool2d(window, stride, ceil_mode=...)` without padding on NHWC input.

  With `ceil_mode` the output has ceil((H - window) / stride) + 1 rows; the extra window is
  filled with -inf so it only sees real pixels, as in PyTorch.
  """
  if ceil_mode:
    pads = []
    for size in x.shape[1:3]:
      out = -(-(size - window) // stride) + 1
      pads.append((0, max(0, (out - 1) * stride + window - size)))
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")


def _conv(features: int, kernel: int, stride: int = 1, pad: int = 0, name: str | None = None):
  return Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), name=name)


class Fire(nn.Module):
  """SqueezeNet Fire module: 1x1 squeeze, then concatenated 1x1 and 3x3 expands (all ReLU)."""

  squeeze: int
  expand: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = nn.relu(_conv(self.squeeze, 1, name="squeeze")(x))
    e1 = nn.relu(_conv(self.expand, 1, name="expand1x1")(s))
    e3 = nn.relu(_conv(self.expand, 3, pad=1, name="expand3x3")(s))
    return jnp.concatenate([e1, e3], axis=-1)


class SqueezeNetFeatures(nn.Module):
  """torchvision `squeezenet1_1().features`, returning LPIPS's 7 slice outputs.

  Channels per slice: 64, 128, 256, 384, 384, 512, 512 (lpips `pretrained_networks.squeezenet`).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outs = []
    h = nn.relu(_conv(64, 3, stride=2, name="features_0")(x))
    outs.append(h)
    h = max_pool(h, 3, 2, ceil_mode=True)
    h = Fire(16, 64, name="features_3")(h)
    h = Fire(16, 64, name="features_4")(h)
    outs.append(h)
    h = max_pool(h, 3, 2, ceil_mode=True)
    h = Fire(32, 128, name="features_6")(h)
    h = Fire(32, 128, name="features_7")(h)
    outs.append(h)
    h = max_pool(h, 3, 2, ceil_mode=True)
    for index, (squeeze, expand) in zip((9, 10, 11, 12), ((48, 192), (48, 192), (64, 256),
                                                         (64, 256))):
      h = Fire(squeeze, expand, name=f"features_{index}")(h)
      outs.append(h)
    return outs


class AlexNetFeatures(nn.Module):
  """torchvision `alexnet().features`, returning LPIPS's 5 slice outputs (64/192/384/256/256)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outs = []
    h = nn.relu(_conv(64, 11, stride=4, pad=2, name="features_0")(x))
    outs.append(h)
    h = nn.relu(_conv(192, 5, pad=2, name="features_3")(max_pool(h, 3, 2)))
    outs.append(h)
    h = nn.relu(_conv(384, 3, pad=1, name="features_6")(max_pool(h, 3, 2)))
    outs.append(h)
    h = nn.relu(_conv(256, 3, pad=1, name="features_8")(h))
    outs.append(h)
    h = nn.relu(_conv(256, 3, pad=1, name="features_10")(h))
    outs.append(h)
    return outs


# (torchvision index of each conv, channels), one tuple per LPIPS slice of VGG16 (relu1_2 ...).
_VGG16_SLICES: Sequence[Sequence[tuple[int, int]]] = (
    ((0, 64), (2, 64)),
    ((5, 128), (7, 128)),
    ((10, 256), (12, 256), (14, 256)),
    ((17, 512), (19, 512), (21, 512)),
    ((24, 512), (26, 512), (28, 512)),
)


class VGG16Features(nn.Module):
  """torchvision `vgg16().features`, returning relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outs = []
    h = x
    for i, convs in enumerate(_VGG16_SLICES):
      if i:
        h = max_pool(h, 2, 2)
      for index, channels in convs:
        h = nn.relu(_conv(channels, 3, pad=1, name=f"features_{index}")(h))
      outs.append(h)
    return outs


BACKBONES: dict[str, type[nn.Module]] = {
    "squeeze": SqueezeNetFeatures,
    "alex": AlexNetFeatures,
    "vgg": VGG16Features,
}
CHANNELS: dict[str, tuple[int, ...]] = {
    "squeeze": (64, 128, 256, 384, 384, 512, 512),
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
}

# Smallest square input whose every slice output is non-empty (checked in tests/test_lpips.py).
MIN_SIZE: dict[str, int] = {"squeeze": 17, "alex": 31, "vgg": 16}


def torchvision_name(path: tuple[str, ...]) -> str:
  """Flax module path (`('features_3', 'squeeze')`) -> torchvision name (`features.3.squeeze`)."""
  return ".".join(p.replace("features_", "features.") for p in path)
