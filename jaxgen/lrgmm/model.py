"""LR-GMM-NN's generative model, as the algorithm of paper 004 (Fig. 2):

  fit:       y_i = P0(E(x_i))                      (eqs. 1-2, PCA of the latent pixels of E(X))
             GMM (pi_k, c_k, Sigma_k) on the y_i    (EM, sklearn semantics: jaxgen.gmm.fit_gmm)
             V_k, s_k: leading eigenpairs           (low rank, eq. 4)
  generate:  k ~ pi, z = V_k^T diag(sqrt(s_k)) eps + c_k            (LR-GMM, eqs. 3-4)
             z(p) <- y_j(p), j = NN of z's patch at p in cluster k  (NN, eqs. 5-6)
             x = D(P0*(z))

Everything here is the method's own math on top of `jaxgen.gmm`; encoders and decoders come in as
functions, so the embedded spatial autoencoder and the VQ-GAN are interchangeable.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.gmm import fit_gmm
from jaxgen.gmm import lowrank as lr_lib
from jaxgen.gmm import pca
from jaxgen.gmm.nn_projection import NNProjection, nn_project
from jaxgen.io.files import atomic_save_npz
from jaxgen.io import paths

LatentFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class FittedModel:
  """One LR-GMM-NN fitted on a limited set X of N images."""

  projector: pca.Projector
  lowrank: lr_lib.LowRankMixture  # eigenpairs up to the largest d_k any sweep asks for
  codes: np.ndarray  # [N, h, w, q] training codes P0(E(x_i)), the NN step's memory
  labels: np.ndarray  # [N] cluster of each training image (final E-step)
  log_likelihood: np.ndarray  # mean log-likelihood per EM iteration
  converged: bool
  num_iters: int

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return tuple(self.codes.shape[1:])

  @property
  def dim(self) -> int:
    return int(np.prod(self.codes.shape[1:]))

  def save(self, path: str) -> None:
    atomic_save_npz(path, mean=np.asarray(self.projector.mean),
                    components=np.asarray(self.projector.components),
                    variances=np.asarray(self.projector.variances),
                    weights=np.asarray(self.lowrank.weights), means=np.asarray(self.lowrank.means),
                    bases=np.asarray(self.lowrank.bases), scales=np.asarray(self.lowrank.scales),
                    dims=np.asarray(self.lowrank.dims), codes=self.codes, labels=self.labels,
                    log_likelihood=self.log_likelihood, converged=np.asarray(self.converged),
                    num_iters=np.asarray(self.num_iters))

  @classmethod
  def load(cls, path: str) -> "FittedModel":
    with paths.load_npz(path) as f:
      projector = pca.Projector(mean=jnp.asarray(f["mean"]), components=jnp.asarray(f["components"]),
                                variances=jnp.asarray(f["variances"]))
      lowrank = lr_lib.LowRankMixture(weights=jnp.asarray(f["weights"]), means=jnp.asarray(f["means"]),
                                      bases=jnp.asarray(f["bases"]), scales=jnp.asarray(f["scales"]),
                                      dims=jnp.asarray(f["dims"]))
      return cls(projector, lowrank, f["codes"], f["labels"], f["log_likelihood"],
                 bool(f["converged"]), int(f["num_iters"]))


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return out, time.perf_counter() - start


def fit(encode: LatentFn, images: np.ndarray, *, num_channels: int, num_components: int,
        gmm_cfg, temperature: float, fixed_dim: int, max_rank: int, key: jax.Array, mesh=None
        ) -> tuple[FittedModel, dict[str, float]]:
  """Fit P0, the GMM and its eigenpairs on X (uint8 [N, H, W, 3]); returns the model and timings.

  `max_rank` is the largest d_k to keep eigenpairs for (so d_k sweeps need no refit); the
  default temperature's d_k are `model.lowrank.dims`.
  """
  latents, t_encode = _timed(lambda: jnp.asarray(encode(images)))
  projector, t_p0 = _timed(lambda: pca.fit_projector(latents, num_channels))
  codes = np.asarray(pca.project(projector, latents))
  n = codes.shape[0]
  flat = codes.reshape((n, -1))

  def train():
    mixture = fit_gmm(flat, num_components, init=gmm_cfg.init, max_iter=gmm_cfg.max_iter,
                      tol=gmm_cfg.tol, reg_covar=gmm_cfg.reg_covar, key=key, mesh=mesh)
    limit = flat.shape[1] if mixture.form == "full" else min(flat.shape[1], n)
    dims = lr_lib.component_dims(np.asarray(mixture.weights), flat.shape[1], temperature=temperature,
                                 fixed=fixed_dim or None, max_rank=limit)
    rank = np.maximum(dims, min(max_rank, limit))
    low = lr_lib.low_rank(mixture, rank)
    return mixture, low.replace(dims=jnp.asarray(dims))

  (mixture, low), t_train = _timed(train)
  model = FittedModel(projector, low, codes, np.asarray(mixture.labels),
                      np.asarray(mixture.log_likelihood)[:int(mixture.num_iters)],
                      bool(mixture.converged), int(mixture.num_iters))
  return model, {"p0_compute_s": t_p0, "encoding_s": t_encode, "training_s": t_train,
                 "setup_total_s": t_p0 + t_encode + t_train}


def with_dims(model: FittedModel, dims: np.ndarray) -> lr_lib.LowRankMixture:
  """The low-rank sampler restricted to d_k = dims (at most the kept rank)."""
  dims = np.minimum(np.asarray(dims, np.int32), model.lowrank.bases.shape[2])
  keep = jnp.arange(model.lowrank.bases.shape[2])[None] < jnp.asarray(dims)[:, None]
  return model.lowrank.replace(scales=model.lowrank.scales * keep, dims=jnp.asarray(dims))


def sample_codes(model: FittedModel, key: jax.Array, num_samples: int,
                 sampler: lr_lib.LowRankMixture | None = None) -> tuple[np.ndarray, np.ndarray]:
  """LR-GMM (eqs. 3-4): codes [n, h, w, q] and the component of each."""
  flat, comps = lr_lib.sample_low_rank(sampler or with_dims(model, model.lowrank.dims), key,
                                       num_samples)
  return np.asarray(flat).reshape((num_samples,) + model.latent_shape), np.asarray(comps)


def random_codes(model: FittedModel, key: jax.Array, num_samples: int) -> np.ndarray:
  """Fig. 6c's prior: every latent pixel copied from a uniformly drawn training image, same position."""
  n, h, w, _ = model.codes.shape
  idx = jax.random.randint(key, (num_samples, h, w), 0, n)
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return model.codes[np.asarray(idx), rows[None], cols[None]]


def refine(model: FittedModel, codes: np.ndarray, components: np.ndarray | None, nn_cfg
           ) -> NNProjection:
  """NN projection (eqs. 5-6) onto the training codes; clusters used when `components` is given."""
  use_clusters = nn_cfg.same_cluster and components is not None
  return nn_project(jnp.asarray(codes), jnp.asarray(model.codes),
                    z_clusters=jnp.asarray(components) if use_clusters else None,
                    y_clusters=jnp.asarray(model.labels) if use_clusters else None,
                    patch_size=nn_cfg.patch_size, num_iters=nn_cfg.num_iters,
                    same_position=nn_cfg.same_position, same_cluster=use_clusters,
                    chunk_size=nn_cfg.chunk_size)


def decode_codes(decode: LatentFn, projector: pca.Projector, codes: np.ndarray) -> np.ndarray:
  """x = D(P0*(z)) as uint8 [n, H, W, 3]."""
  return decode(np.asarray(pca.unproject(projector, jnp.asarray(codes))))
