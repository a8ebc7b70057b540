"""Feature-extractor protocol and batched (optionally data-sharded) feature extraction.

A feature extractor is any callable mapping a uint8 NHWC batch to a (B, d) float array; the
ones shipped by jaxgen (InceptionV3 pool3, the in-domain classifiers) also carry `name` and
`feature_dim` so that every report can say which network produced its numbers.

Extraction always runs on fixed-size batches (the last one zero-padded, the padding dropped
afterwards), so the feature function compiles once. With a `jax.sharding.Mesh`, each batch is
placed with `NamedSharding(mesh, PartitionSpec('data'))`, i.e. split over the mesh's `data`
axis; the results do not depend on the number of devices. This is single-process placement:
every process must see the whole batch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxgen.errors import ConfigError, DataError
from jaxgen.metrics.frechet import FeatureStats, init_stats, update_stats
from jaxgen.parallel.mesh import place_full_batch, to_host

ImageSource = Any  # an (N, H, W, C) array, or an iterable of such arrays / of {'image': array}


@runtime_checkable
class FeatureExtractor(Protocol):
  """What the metric pipeline expects of a feature network.

  Attributes:
    name: identifies network and weights in reports, e.g. "inception_v3_pool3 (FID weights)"
      or "jaxgen classifier mnist_lt (ckpt step 20000)".
    feature_dim: d, the width of the returned features.
  """

  name: str
  feature_dim: int

  def __call__(self, images: jax.Array) -> jax.Array:
    """uint8 NHWC images in [0, 255] -> (B, feature_dim) float features."""
    ...


def _as_images(item: Any) -> np.ndarray:
  if isinstance(item, dict):
    if "image" not in item:
      raise DataError(f"image batch dict has keys {sorted(item)}; expected an 'image' key")
    item = item["image"]
  arr = np.asarray(item)
  if arr.ndim != 4:
    raise DataError(f"image batch of shape {arr.shape}; expected NHWC (4 dims)")
  return arr


def fixed_batches(source: ImageSource, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Re-batches an array or an iterator of arrays into (batch, n_valid) pairs of exactly
  `batch_size` rows; only the last batch is zero-padded (n_valid < batch_size)."""
  if batch_size < 1:
    raise ConfigError("batch_size", batch_size, "an integer >= 1")
  if hasattr(source, "shape") and hasattr(source, "ndim"):
    source = [source]
  buf: list[np.ndarray] = []
  held = 0
  for item in source:
    arr = _as_images(item)
    buf.append(arr)
    held += arr.shape[0]
    while held >= batch_size:
      allrows = np.concatenate(buf) if len(buf) > 1 else buf[0]
      yield allrows[:batch_size], batch_size
      rest = allrows[batch_size:]
      buf, held = ([rest] if rest.shape[0] else []), rest.shape[0]
  if held:
    rows = np.concatenate(buf) if len(buf) > 1 else buf[0]
    pad = np.zeros((batch_size - held,) + rows.shape[1:], rows.dtype)
    yield np.concatenate([rows, pad]), held


def _placer(mesh: Mesh | None, batch_size: int) -> Callable[[np.ndarray], jax.Array]:
  if mesh is None:
    return jnp.asarray
  if "data" not in mesh.axis_names:
    raise ConfigError("mesh", tuple(mesh.axis_names), "a mesh with a 'data' axis")
  n = mesh.shape["data"]
  if batch_size % n:
    raise ConfigError("batch_size", batch_size, f"a multiple of the mesh 'data' axis size {n}")
  return lambda b: place_full_batch(b, mesh)  # every host its devices' rows


def _device_outputs(fn: Callable, source: ImageSource, batch_size: int,
                    mesh: Mesh | None) -> Iterator[tuple[jax.Array, int]]:
  """Runs `fn` (jitted) on each fixed batch; yields (padded device output, n_valid)."""
  place = _placer(mesh, batch_size)
  jfn = jax.jit(fn)
  any_batch = False
  for batch, n_valid in fixed_batches(source, batch_size):
    any_batch = True
    yield jfn(place(batch)), n_valid
  if not any_batch:
    raise DataError("feature extraction got no images; expected at least one NHWC batch")


def iter_features(feature_fn: Callable[[jax.Array], jax.Array], images_or_iterator: ImageSource,
                  batch_size: int, mesh: Mesh | None = None) -> Iterator[np.ndarray]:
  """Yields host (numpy) features batch by batch, padding rows removed. One batch is kept in
  flight so the device computes batch i+1 while batch i is copied to the host."""
  pending = None
  for out, n_valid in _device_outputs(feature_fn, images_or_iterator, batch_size, mesh):
    if pending is not None:
      yield to_host(pending[0])[: pending[1]]
    pending = (out, n_valid)
  if pending is not None:
    yield to_host(pending[0])[: pending[1]]


def extract_features(feature_fn: Callable[[jax.Array], jax.Array],
                     images_or_iterator: ImageSource, batch_size: int,
                     mesh: Mesh | None = None) -> np.ndarray:
  """Applies `feature_fn` (uint8 NHWC batch -> (B, d)) to all images, `batch_size` at a time,
  optionally sharded over the `data` axis of `mesh`; returns the (N, d) features on the host.

  Args:
    feature_fn: a `FeatureExtractor` or any jittable callable.
    images_or_iterator: an (N, H, W, C) array, or an iterable of NHWC arrays (any sizes) or of
      dicts with an 'image' entry.
    batch_size: rows per call; a multiple of the mesh `data` axis size when `mesh` is given.
    mesh: optional mesh with a `data` axis.
  """
  return np.concatenate(list(iter_features(feature_fn, images_or_iterator, batch_size, mesh)))


def feature_statistics(feature_fn: Callable[[jax.Array], jax.Array],
                       images_or_iterator: ImageSource, batch_size: int,
                       mesh: Mesh | None = None) -> FeatureStats:
  """Streams the images through `feature_fn` into a mean/covariance accumulator without
  keeping the features (50k images never sit in memory); finish with `finalize_stats` or pass
  the result to `fid_from_stats`. Same arguments as `extract_features`."""
  stats = None
  for out, n_valid in _device_outputs(feature_fn, images_or_iterator, batch_size, mesh):
    if out.ndim != 2:
      raise DataError(f"feature function returned shape {out.shape}; expected (batch, d)")
    if stats is None:
      stats = init_stats(out.shape[1])
    stats = update_stats(stats, out, jnp.arange(out.shape[0]) < n_valid)
  return stats
