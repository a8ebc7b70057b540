"""MobileNetV3 Large / Small in Flax, configured like torchvision's `mobilenet_v3_large/small`.

Howard et al. 2019 ("Searching for MobileNetV3", Tables 1 and 2): inverted-residual blocks
(1x1 expand -> depthwise kxk -> optional squeeze-excitation -> 1x1 project, residual when the
stride is 1 and channels match), ReLU or hardswish activations, hardsigmoid SE gate, a 1x1 last
conv to 6x the last block's channels, then pool -> Linear -> hardswish -> Dropout(0.2) -> Linear.
Used by paper 000 (from scratch and fine-tuned from torchvision weights).

Flax names: stem_conv/stem_bn (torchvision features.0), block1..blockN (features.i, each with
expand_conv/expand_bn, dw_conv/dw_bn, se{fc1,fc2}, project_conv/project_bn), last_conv/last_bn
(features.N+1), classifier_0 and classifier_3 (torchvision classifier.0 / classifier.3).
`small_input=True` makes the first conv stride 1 for 32x32 / 64x64 inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets.conv import Conv
from jaxgen.nets.spinal import apply_head, conv_kaiming_fan_out

Dtype = Any

# torchvision builds MobileNetV3 with BatchNorm2d(eps=0.001, momentum=0.01); flax's momentum is
# the fraction of the running average kept, hence 0.99. Its ~100-step memory lags weights trained
# from scratch for a few hundred steps at a high learning rate (evaluation-mode accuracy then
# sits at chance), so `bn_momentum` is configurable; short runs use 0.9.
_BN_MOMENTUM = 0.99
_BN_EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """One bneck row of Howard et al. Table 1/2 (in, kernel, expanded, out, SE, act, stride)."""

  in_channels: int
  kernel: int
  expanded: int
  out_channels: int
  use_se: bool
  activation: str  # "RE" (ReLU) or "HS" (hardswish)
  stride: int


# Howard et al. 2019 Table 1 (Large) and Table 2 (Small), as in torchvision.
_LARGE = (
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1))
_SMALL = (
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1))
_LAST_CHANNEL = {"large": 1280, "small": 1024}


def make_divisible(v: float, divisor: int = 8) -> int:
  """Rounds channels to a multiple of `divisor`, never below 90% of v (MobileNetV2 convention)."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def block_configs(variant: str, width_mult: float = 1.0) -> tuple[BlockConfig, ...]:
  """The bneck rows of `variant` ('large' | 'small') with channels scaled by width_mult."""
  rows = {"large": _LARGE, "small": _SMALL}[variant]
  adj = lambda c: make_divisible(c * width_mult)  # noqa: E731
  return tuple(BlockConfig(adj(i), k, adj(e), adj(o), se, act, s)
               for i, k, e, o, se, act, s in rows)


def _act(name: str):
  return nn.relu if name == "RE" else nn.hard_swish


class SqueezeExcitation(nn.Module):
  """Hu et al. 2018 SE with MobileNetV3's gate: x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))."""

  squeeze: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    conv = functools.partial(Conv, kernel_size=(1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=conv_kaiming_fan_out, bias_init=nn.initializers.zeros)
    s = nn.relu(conv(self.squeeze, name="fc1")(s))
    s = nn.hard_sigmoid(conv(c, name="fc2")(s))
    return x * s


class InvertedResidual(nn.Module):
  """MobileNetV3 bneck block (Howard et al. 2019 Fig. 4)."""

  cfg: BlockConfig
  stride: int
  bn_momentum: float = _BN_MOMENTUM
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.cfg
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=conv_kaiming_fan_out)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=_BN_EPS, dtype=self.dtype)
    act = _act(cfg.activation)
    y = x
    if cfg.expanded != cfg.in_channels:
      y = act(norm(name="expand_bn")(conv(cfg.expanded, (1, 1), name="expand_conv")(y)))
    p = (cfg.kernel - 1) // 2
    y = conv(cfg.expanded, (cfg.kernel, cfg.kernel), strides=self.stride, padding=((p, p), (p, p)),
             feature_group_count=cfg.expanded, name="dw_conv")(y)
    y = act(norm(name="dw_bn")(y))
    if cfg.use_se:
      y = SqueezeExcitation(make_divisible(cfg.expanded // 4), dtype=self.dtype, name="se")(y)
    y = norm(name="project_bn")(conv(cfg.out_channels, (1, 1), name="project_conv")(y))
    if self.stride == 1 and cfg.in_channels == cfg.out_channels:
      y = y + x
    return y


class MobileNetV3(nn.Module):
  """torchvision MobileNetV3 classifier on NHWC float32 inputs.

  Attributes:
    variant: 'large' or 'small'.
    num_classes: logits.
    width_mult: channel multiplier (1.0 in torchvision's published models).
    small_input: first conv with stride 1 (for 32x32 / 64x64 inputs).
    dropout: dropout before the last Linear (0.2 in torchvision).
    head: 'linear' (torchvision classifier.3) or 'spinal' (replaces classifier.3).
    spinal_width, spinal_layers, spinal_dropout: SpinalHead options.
    bn_momentum: fraction of the BatchNorm running averages kept per step (0.99 = torchvision).
    dtype: compute dtype; parameters and logits are float32.
  """

  variant: str
  num_classes: int
  width_mult: float = 1.0
  small_input: bool = False
  dropout: float = 0.2
  head: str = "linear"
  spinal_width: int = 512
  spinal_layers: int = 4
  spinal_dropout: float = 0.5
  bn_momentum: float = _BN_MOMENTUM
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Returns logits, or (logits, features) with the hardswish output of classifier_0 (N, 1280
    for large / 1024 for small), i.e. the input of the last Linear."""
    cfgs = block_configs(self.variant, self.width_mult)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=_BN_EPS, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = Conv(cfgs[0].in_channels, (3, 3), strides=1 if self.small_input else 2,
                padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=conv_kaiming_fan_out, name="stem_conv")(x)
    x = nn.hard_swish(norm(name="stem_bn")(x))
    for i, cfg in enumerate(cfgs):
      x = InvertedResidual(cfg, cfg.stride, bn_momentum=self.bn_momentum, dtype=self.dtype,
                           name=f"block{i + 1}")(x, train=train)
    last_in = cfgs[-1].out_channels
    x = Conv(6 * last_in, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=conv_kaiming_fan_out, name="last_conv")(x)
    x = nn.hard_swish(norm(name="last_bn")(x))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    last_channel = make_divisible(_LAST_CHANNEL[self.variant] * self.width_mult)
    # torchvision initialises the classifier Linears with N(0, 0.01) weights and zero bias.
    lin_init = nn.initializers.normal(0.01)
    features = nn.Dense(last_channel, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=lin_init, name="classifier_0")(pooled)
    features = nn.hard_swish(features)
    h = nn.Dropout(self.dropout, deterministic=not train)(features)
    logits = apply_head(h, head=self.head, num_classes=self.num_classes, linear_name="classifier_3",
                        train=train, dtype=self.dtype, kernel_init=lin_init,
                        bias_init=nn.initializers.zeros,
                        spinal_kw=dict(layer_width=self.spinal_width, num_layers=self.spinal_layers,
                                       dropout=self.spinal_dropout))
    return (logits, features.astype(jnp.float32)) if return_features else logits


def mobilenet_v3_large(num_classes: int, **kw: Any) -> MobileNetV3:
  """MobileNetV3-Large (Howard et al. 2019 Table 1; torchvision: 5,483,032 params at 1000)."""
  return MobileNetV3(variant="large", num_classes=num_classes, **kw)


def mobilenet_v3_small(num_classes: int, **kw: Any) -> MobileNetV3:
  """MobileNetV3-Small (Howard et al. 2019 Table 2; torchvision: 2,542,856 params at 1000)."""
  return MobileNetV3(variant="small", num_classes=num_classes, **kw)
