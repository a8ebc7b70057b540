"""Matmuls in a low-precision dtype with float32 accumulation, for dense score networks.

`dense_in(jnp.bfloat16)` is a Dense layer (flax.linen.Dense's parameters and names) that rounds
both matmul operands to bfloat16 and accumulates in float32 (`preferred_element_type`): on CPUs with AMX-BF16
or AVX512-BF16 and on GPUs/TPUs the dot runs 2-4x faster than in float32, while everything around
it (biases, GroupNorm, activations, the SDE update) stays float32. Parameters stay float32 for
training; `cast_kernels` rounds the matrices once before a sampling loop so that each network
evaluation reads half the weight bytes. Per evaluation the output moves by ~0.5% relative
(bfloat16 has an 8-bit mantissa); whether sampling quality holds is measured, not assumed
(docs/mvld.md, "Compute dtype").
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Dense(nn.Module):
  """`flax.linen.Dense` (same parameters, same auto-name 'Dense_<i>') whose matmul takes its
  operands in `dot_dtype` and accumulates in float32, adding the float32 bias after.

  flax's own Dense promotes input, kernel and bias to one dtype first: with float32 inputs a kernel
  rounded to bfloat16 by `cast_kernels` would be widened back to float32 on every call (and then
  narrowed again by a casting `dot_general`), which costs more than it saves inside a sampling loop.
  """

  features: int
  dot_dtype: Any = jnp.bfloat16
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    y = lax.dot_general(inputs.astype(self.dot_dtype), kernel.astype(self.dot_dtype),
                        (((inputs.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return y + bias.astype(jnp.float32)


def dense_in(dtype: Any) -> Callable[..., nn.Module]:
  """The Dense class for matmuls in `dtype`: flax's own for float32 (unchanged numbers), else the
  one above."""
  if jnp.dtype(dtype) == jnp.float32:
    return nn.Dense
  return functools.partial(Dense, dot_dtype=jnp.dtype(dtype))


def cast_kernels(params: Any, dtype: Any) -> Any:
  """Every float matrix of a parameter tree (Dense kernels) in `dtype`; vectors stay as they are."""
  if jnp.dtype(dtype) == jnp.float32:
    return params
  return jax.tree.map(lambda p: p.astype(dtype) if p.ndim >= 2 and jnp.issubdtype(p.dtype, jnp.floating)
                      else p, params)
