"""Small helpers shared by jaxgen's Flax modules."""

import jax
import jax.numpy as jnp


def group_count(channels: int, preferred: int = 8) -> int:
  """The largest number of GroupNorm groups <= `preferred` that divides `channels`."""
  groups = min(preferred, channels)
  while channels % groups:
    groups -= 1
  return groups


def to_model_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], the range every jaxgen model works in."""
  return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
  """float [-1, 1] -> uint8 [0, 255], rounded and clipped (on device)."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
