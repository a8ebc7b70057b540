"""Classifier heads shared by every backbone: the plain linear head and the SpinalNet head.

SpinalNet (Kabir et al. 2020, arXiv:2007.03347, used as the pretrained classifier of paper 003
sec. 4.3): the backbone feature vector is split into two halves; spinal layer k receives one half
(alternating first/second) concatenated with the output of layer k-1, and the classifier reads the
concatenation of all spinal layer outputs. Each spinal layer is Dropout -> Linear -> BatchNorm1d ->
ReLU, the output layer is Dropout -> Linear, as in the authors' transfer-learning scripts.

Also holds the PyTorch-default initialisers the torchvision ports share, so that networks trained
from scratch start from the same distribution as their torchvision counterparts.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out).
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear default: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """torch.nn.Linear default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(max(fan_in, 1))

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, name: str, dtype: Dtype) -> nn.Dense:
  """A Dense layer initialised like torch.nn.Linear(fan_in, features)."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=torch_linear_kernel_init, bias_init=torch_linear_bias_init(fan_in))


class SpinalHead(nn.Module):
  """SpinalNet fully-connected head (Kabir et al. 2020, sec. 3; paper 003 sec. 4.3).

  Attributes:
    num_classes: number of output logits.
    layer_width: neurons per spinal layer.
    num_layers: number of spinal layers (the paper's transfer-learning head uses 4).
    dropout: dropout rate before every Linear (0.5 in the authors' scripts).
    use_batch_norm: BatchNorm1d after each spinal Linear (as in the authors' scripts).
    dtype: compute dtype; parameters stay float32.
  """

  num_classes: int
  layer_width: int = 512
  num_layers: int = 4
  dropout: float = 0.5
  use_batch_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps backbone features (N, F) to float32 logits (N, num_classes).

    The halves are x[:, :F//2] and x[:, F//2:2*(F//2)] (an odd last feature is unused, as with the
    authors' `half_in_size` slicing).
    """
    half = x.shape[-1] // 2
    halves = (x[:, :half], x[:, half:2 * half])
    outputs: list[jax.Array] = []
    prev = None
    for k in range(self.num_layers):
      inp = halves[k % 2] if prev is None else jnp.concatenate([halves[k % 2], prev], axis=-1)
      inp = nn.Dropout(self.dropout, deterministic=not train)(inp)
      y = torch_dense(self.layer_width, inp.shape[-1], f"layer{k + 1}", self.dtype)(inp)
      if self.use_batch_norm:
        # BatchNorm1d defaults: momentum 0.1 (flax 0.9), eps 1e-5.
        y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name=f"bn{k + 1}")(y)
      y = nn.relu(y)
      outputs.append(y)
      prev = y
    z = jnp.concatenate(outputs, axis=-1)
    z = nn.Dropout(self.dropout, deterministic=not train)(z)
    logits = torch_dense(self.num_classes, z.shape[-1], "fc_out", self.dtype)(z)
    return logits.astype(jnp.float32)


def apply_head(features: jax.Array, *, head: str, num_classes: int, linear_name: str,
               train: bool, dtype: Dtype, spinal_kw: dict[str, Any],
               kernel_init: nn.initializers.Initializer | None = None,
               bias_init: nn.initializers.Initializer | None = None) -> jax.Array:
  """Applies the linear head (named like torchvision's last layer) or a SpinalHead named 'spinal'.

  Call it from inside a network's compact `__call__`: linen binds the submodules created here to
  that calling module. Returns float32 logits.
  """
  if head == "spinal":
    return SpinalHead(num_classes=num_classes, dtype=dtype, name="spinal", **spinal_kw)(
        features, train=train)
  fan_in = features.shape[-1]
  dense = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, name=linear_name,
                   kernel_init=kernel_init or torch_linear_kernel_init,
                   bias_init=bias_init or torch_linear_bias_init(fan_in))
  return dense(features).astype(jnp.float32)
