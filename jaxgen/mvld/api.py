"""Python API: load a trained MVLD from its workdir and generate any views from any views.

    from jaxgen.mvld.api import MVLD
    model = MVLD.from_workdir("workdirs/mvld")
    views = model.generate(images, observed_mask, jax.random.key(0))   # uint8 [B, V, H, W, 3]
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.files import read_json
from jaxgen.io.params import load_params
from jaxgen.mvld import model as mvld_model
from jaxgen.mvld.evaluate import make_generator
from jaxgen.io import paths


class MVLD:
  """A trained autoencoder + score network + latent statistics, with jitted generation."""

  def __init__(self, config: ml_collections.ConfigDict, ae_params, score_params,
               stats: mvld_model.LatentStats):
    self.config = config
    self.spec = mvld_model.build_spec(config)
    self.ae_params, self.score_params, self.stats = ae_params, score_params, stats
    self._generate = {}

  @classmethod
  def from_workdir(cls, workdir: str) -> "MVLD":
    """Load what the train stages of `python -m jaxgen.main --config=configs/mvld.py` wrote."""
    path = os.path.join(workdir, "config.json")
    if not paths.exists(path):
      raise DataError(f"{path}: not found; expected the workdir of an MVLD run")
    config = ml_collections.ConfigDict(read_json(path))
    models = os.path.join(workdir, "models")
    stats_path = os.path.join(models, "latent_stats.npz")
    if not paths.exists(stats_path):  # written with the score network by train_diffusion
      raise DataError(f"{stats_path}: not found; expected the workdir of an MVLD run whose "
                      "train_diffusion stage has finished")
    with paths.load_npz(stats_path) as f:
      stats = mvld_model.LatentStats(mean=f["mean"], std=f["std"])
    return cls(config, load_params(os.path.join(models, "autoencoder.msgpack")),
               load_params(os.path.join(models, "score_net.msgpack")), stats)

  def encode(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, V, H, W, 3] -> raw latents [B, V, L]."""
    return np.asarray(mvld_model.encode_views(self.spec, self.ae_params, images))

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Raw latents [B, V, L] -> uint8 [B, V, H, W, 3]."""
    return np.asarray(mvld_model.decode_views(self.spec, self.ae_params, latents))

  def generate(self, observed_images: np.ndarray, observed_mask: np.ndarray, key: jax.Array,
               sampler: ml_collections.ConfigDict | None = None) -> np.ndarray:
    """Generate the views where `observed_mask` [B, V] is False from those where it is True.

    Pixels of unobserved views are ignored (pass zeros). An all-False row generates all V views
    jointly. Observed views come back as their autoencoder reconstructions.
    """
    images = np.asarray(observed_images)
    mask = np.asarray(observed_mask, np.float32)
    expected = (self.spec.num_views, self.spec.image_size, self.spec.image_size, 3)
    if images.dtype != np.uint8 or images.shape[1:] != expected:
      raise DataError(f"observed_images has shape {images.shape} and dtype {images.dtype}; "
                      f"expected uint8 [B, {', '.join(map(str, expected))}]")
    if mask.shape != images.shape[:2] or mask.all(axis=1).any():
      raise DataError(f"observed_mask has shape {mask.shape}; expected {images.shape[:2]} with at "
                      "least one unobserved view per row")
    sampler = sampler or self.config.sampler
    cache_key = str(sampler)
    if cache_key not in self._generate:
      self._generate[cache_key] = make_generator(self.spec, self.ae_params, self.score_params,
                                                 self.stats, sampler)
    return np.asarray(self._generate[cache_key](key, images, mask))
