"""The P0 projector of LR-GMM-NN (paper 004 eqs. 1-2): whitened PCA over latent pixels.

Every latent pixel y(p) in R^c of the encoded target set E(X) is one sample; the q leading
eigenvectors V0 [q, c] of their covariance and eigenvalues s0 [q] give

  P0(y)(p)  = diag(s0)^{-1/2} V0 (y(p) - y_bar)        (eq. 1, c -> q channels)
  P0*(z)(p) = V0^T diag(s0)^{1/2} z(p) + y_bar          (eq. 2, the adjoint used for decoding)

The covariance uses the unbiased (n - 1) normalisation, so P0 equals scikit-learn's
`PCA(n_components=q, whiten=True).transform` up to the sign of each component; signs are fixed
so that each eigenvector's largest-magnitude entry is positive (deterministic across runs).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError


@flax.struct.dataclass
class Projector:
  mean: jax.Array  # [c]
  components: jax.Array  # V0 [q, c], orthonormal rows
  variances: jax.Array  # s0 [q]

  @property
  def num_channels(self) -> int:
    return int(self.components.shape[0])


def fit_projector(latents: jax.Array, num_channels: int) -> Projector:
  """PCA of the c-channel pixels of latent maps [N, h, w, c] (or [M, c]) down to q channels."""
  feats = jnp.asarray(latents).reshape((-1, latents.shape[-1]))
  c = feats.shape[1]
  if not (isinstance(num_channels, int) and 1 <= num_channels <= c):
    raise ConfigError("gmm.num_channels", num_channels, f"an integer in [1, c={c}]")
  return _fit(feats, num_channels)


@jax.jit
def _eigh_desc(cov):
  evals, evecs = jnp.linalg.eigh(cov)
  return evals[::-1], evecs[:, ::-1].T


def _fit(feats: jax.Array, q: int) -> Projector:
  mean = jnp.mean(feats, axis=0)
  centred = feats - mean
  cov = centred.T @ centred / (feats.shape[0] - 1)
  evals, evecs = _eigh_desc(cov)
  evals, evecs = evals[:q], evecs[:q]
  pivot = jnp.take_along_axis(evecs, jnp.argmax(jnp.abs(evecs), axis=1)[:, None], axis=1)
  evecs = evecs * jnp.sign(pivot)
  # A channel with zero variance would divide by zero: floor it at float eps of the largest.
  floor = jnp.finfo(feats.dtype).eps * jnp.maximum(evals[0], jnp.finfo(feats.dtype).tiny)
  return Projector(mean=mean, components=evecs, variances=jnp.maximum(evals, floor))


def project(projector: Projector, latents: jax.Array) -> jax.Array:
  """P0 (eq. 1): [..., c] -> [..., q], per latent pixel."""
  return ((latents - projector.mean) @ projector.components.T) * jax.lax.rsqrt(projector.variances)


def unproject(projector: Projector, codes: jax.Array) -> jax.Array:
  """P0* (eq. 2): [..., q] -> [..., c], per latent pixel."""
  return (codes * jnp.sqrt(projector.variances)) @ projector.components + projector.mean
