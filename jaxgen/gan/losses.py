"""GAN losses as pure functions of discriminator logits.

Logits are float arrays of shape [B] (any shape is accepted and averaged over all elements); every
loss is computed in float32 so a bfloat16 discriminator does not lose the small terms of the mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

LOSSES = ("hinge", "nonsaturating", "wasserstein")


def _check(kind: str) -> None:
  if kind not in LOSSES:
    raise ValueError(f"unknown GAN loss {kind!r}: expected one of {LOSSES}")


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def discriminator_loss(kind: str, real_logits: Array, fake_logits: Array
                       ) -> tuple[Array, dict[str, Array]]:
  """Discriminator loss L_D = d_loss_real + d_loss_fake for `kind` in `LOSSES`.

  'hinge' is paper 003 eq. 1 with f_D(u) = max(0, 1 + u):
      L_D = mean(relu(1 - D(real))) + mean(relu(1 + D(fake))).
  Paper 003 eq. 3 (Softlabel-GAN) prints the fake term as plain E[D(fake)], without the hinge;
  we read that as a typo and keep the hinge of eq. 1 (as BigGAN, on which the paper builds).
  'nonsaturating': L_D = mean(softplus(-D(real))) + mean(softplus(D(fake))) (Goodfellow et al.
  2014). 'wasserstein': L_D = mean(D(fake)) - mean(D(real)) (Arjovsky et al. 2017; no gradient
  penalty here).

  Returns (loss, aux) with aux = {'d_loss_real', 'd_loss_fake', 'd_real' (mean real logit),
  'd_fake' (mean fake logit)}, all float32 scalars. Raises ValueError for an unknown kind.
  """
  _check(kind)
  real, fake = _f32(real_logits), _f32(fake_logits)
  if kind == "hinge":
    loss_real = jnp.mean(jax.nn.relu(1.0 - real))
    loss_fake = jnp.mean(jax.nn.relu(1.0 + fake))
  elif kind == "nonsaturating":
    loss_real = jnp.mean(jax.nn.softplus(-real))
    loss_fake = jnp.mean(jax.nn.softplus(fake))
  else:  # wasserstein
    loss_real = -jnp.mean(real)
    loss_fake = jnp.mean(fake)
  aux = {"d_loss_real": loss_real, "d_loss_fake": loss_fake,
         "d_real": jnp.mean(real), "d_fake": jnp.mean(fake)}
  return loss_real + loss_fake, aux


def generator_loss(kind: str, fake_logits: Array) -> Array:
  """Generator loss for `kind` in `LOSSES`, a float32 scalar.

  'hinge' and 'wasserstein': L_G = -mean(D(fake)) (paper 003 eq. 2); 'nonsaturating':
  L_G = mean(softplus(-D(fake))) = -mean(log sigmoid(D(fake))). Raises ValueError for an unknown
  kind.
  """
  _check(kind)
  fake = _f32(fake_logits)
  if kind == "nonsaturating":
    return jnp.mean(jax.nn.softplus(-fake))
  return -jnp.mean(fake)
