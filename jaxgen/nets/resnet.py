"""ResNet-18 / ResNet-50 in Flax, laid out like torchvision's `resnet18` / `resnet50`.

He et al. 2016 ("Deep Residual Learning", Table 1) with torchvision's "v1.5" change: in the
Bottleneck the stride sits on the 3x3 convolution, not the first 1x1. Used as classifiers by paper
000 (ResNet18, from scratch and fine-tuned from torchvision weights) and paper 001 (ResNet50).

Layout (names mirror torchvision so `jaxgen.io.torchvision_import` maps keys one to one):
  conv1, bn1, [max-pool], stage1..stage4 (torchvision layer1..layer4) of blocks block0.., fc.
Each block: conv1/bn1, conv2/bn2, [conv3/bn3], downsample_conv/downsample_bn on the shortcut.
`small_input=True` replaces the 7x7/2 stem and max-pool with a 3x3/1 conv (the usual CIFAR stem)
for 32x32 or 64x64 inputs.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets.conv import Conv
from jaxgen.nets.pooling import max_pool
from jaxgen.nets.spinal import apply_head, conv_kaiming_fan_out

Dtype = Any

# BatchNorm2d defaults: momentum 0.1 (flax keeps 1 - 0.1 of the old average), eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # torch pads symmetrically by k//2; flax "SAME" would pad (0, 1) for even inputs at stride 2.
  return ((k // 2, k // 2), (k // 2, k // 2))


class ResidualBlock(nn.Module):
  """BasicBlock (two 3x3 convs, expansion 1) or Bottleneck (1x1-3x3-1x1, expansion 4).

  Computes relu(F(x) + shortcut(x)) with F as in He et al. 2016 Fig. 5; the shortcut is a strided
  1x1 conv + BN when the shape changes (torchvision option B).
  """

  planes: int
  stride: int
  bottleneck: bool
  downsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=conv_kaiming_fan_out)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=_BN_MOMENTUM,
                             epsilon=_BN_EPS, dtype=self.dtype)
    if self.bottleneck:
      y = nn.relu(norm(name="bn1")(conv(self.planes, (1, 1), name="conv1")(x)))
      y = conv(self.planes, (3, 3), strides=self.stride, padding=_pad(3), name="conv2")(y)
      y = nn.relu(norm(name="bn2")(y))
      y = norm(name="bn3")(conv(self.planes * 4, (1, 1), name="conv3")(y))
      out_ch = self.planes * 4
    else:
      y = conv(self.planes, (3, 3), strides=self.stride, padding=_pad(3), name="conv1")(x)
      y = nn.relu(norm(name="bn1")(y))
      y = norm(name="bn2")(conv(self.planes, (3, 3), padding=_pad(3), name="conv2")(y))
      out_ch = self.planes
    if self.downsample:
      x = conv(out_ch, (1, 1), strides=self.stride, padding="VALID", name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(y + x)


class ResNetStage(nn.Module):
  """One of torchvision's layer1..layer4: `num_blocks` blocks, the first one strided."""

  planes: int
  num_blocks: int
  stride: int
  in_channels: int
  bottleneck: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    expansion = 4 if self.bottleneck else 1
    for j in range(self.num_blocks):
      stride = self.stride if j == 0 else 1
      downsample = j == 0 and (stride != 1 or self.in_channels != self.planes * expansion)
      x = ResidualBlock(self.planes, stride, self.bottleneck, downsample, dtype=self.dtype,
                        name=f"block{j}")(x, train=train)
    return x


class ResNet(nn.Module):
  """torchvision ResNet (v1.5) classifier on NHWC float32 inputs.

  Attributes:
    stage_sizes: blocks per stage, (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50.
    bottleneck: Bottleneck blocks (ResNet-50) instead of BasicBlocks (ResNet-18).
    num_classes: logits.
    width: channels of the stem / first stage (64 in torchvision).
    small_input: 3x3 stride-1 stem without max-pool, for 32x32 / 64x64 images.
    head: 'linear' (torchvision `fc`) or 'spinal' (SpinalNet head named 'spinal').
    spinal_width, spinal_layers, spinal_dropout: SpinalHead options.
    dtype: compute dtype (bfloat16 on GPU/TPU); parameters and logits are float32.
  """

  stage_sizes: Sequence[int]
  bottleneck: bool
  num_classes: int
  width: int = 64
  small_input: bool = False
  head: str = "linear"
  spinal_width: int = 512
  spinal_layers: int = 4
  spinal_dropout: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Returns logits (N, num_classes), or (logits, pooled features (N, C)) if return_features."""
    x = x.astype(self.dtype)
    if self.small_input:
      x = Conv(self.width, (3, 3), padding=_pad(3), use_bias=False, dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=conv_kaiming_fan_out, name="conv1")(x)
    else:
      x = Conv(self.width, (7, 7), strides=2, padding=_pad(7), use_bias=False, dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=conv_kaiming_fan_out, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                     dtype=self.dtype, name="bn1")(x)
    x = nn.relu(x)
    if not self.small_input:
      x = max_pool(x, (3, 3), (2, 2), _pad(3))
    expansion = 4 if self.bottleneck else 1
    in_ch = self.width
    for i, n in enumerate(self.stage_sizes):
      planes = self.width * 2**i
      x = ResNetStage(planes, n, 1 if i == 0 else 2, in_ch, self.bottleneck, dtype=self.dtype,
                      name=f"stage{i + 1}")(x, train=train)
      in_ch = planes * expansion
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = apply_head(features.astype(self.dtype), head=self.head, num_classes=self.num_classes,
                        linear_name="fc", train=train, dtype=self.dtype,
                        spinal_kw=dict(layer_width=self.spinal_width, num_layers=self.spinal_layers,
                                       dropout=self.spinal_dropout))
    return (logits, features) if return_features else logits


def resnet18(num_classes: int, **kw: Any) -> ResNet:
  """ResNet-18 (He et al. 2016, Table 1; torchvision `resnet18`: 11,689,512 params at 1000)."""
  return ResNet(stage_sizes=(2, 2, 2, 2), bottleneck=False, num_classes=num_classes, **kw)


def resnet50(num_classes: int, **kw: Any) -> ResNet:
  """ResNet-50 v1.5 (He et al. 2016, Table 1; torchvision `resnet50`: 25,557,032 params)."""
  return ResNet(stage_sizes=(3, 4, 6, 3), bottleneck=True, num_classes=num_classes, **kw)
