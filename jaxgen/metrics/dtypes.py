"""The metrics' working precision: float64 when jax_enable_x64 is on, else float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def working_float_dtype() -> jnp.dtype:
  """float64 under `jax_enable_x64` (reference-grade statistics), float32 otherwise."""
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
