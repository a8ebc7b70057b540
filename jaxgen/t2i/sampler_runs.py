"""Host-side batching of the compiled text-to-image / SDEdit calls over many prompts.

Prompts are tokenised on the host, cut into fixed-size batches (the last one padded, so one
compiled shape serves every call) and sampled with a per-batch key `fold_in(key, batch index)`;
outputs come back as uint8. The guidance scale and strengths are traced: one compilation per
(backbone, sampler, batch size). With a `mesh` whose data axis divides the batch size, each batch
is split over that axis (over every host's devices, each host computing its rows; the outputs
are gathered so every host holds all images) and the parameters replicated, so the devices
sample in parallel; the images do not depend on the device or process count (per-example math;
JAX's partitionable random bits).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nets.common import to_model_range, to_uint8
from jaxgen.parallel.mesh import data_parallel_size, place_full_batch, replicate, to_host
from jaxgen.t2i import backbone as bb
from jaxgen.t2i.sampling import image_to_image, text_to_image
from jaxgen.t2i.schedules import SamplerSpec


def padded_batches(*arrays: np.ndarray, batch_size: int):
  """Yields (n_valid, batch of each array) with exactly `batch_size` rows; the last batch is
  padded by repeating its final row (any dtype and rank)."""
  total = len(arrays[0])
  for start in range(0, total, batch_size):
    rows = np.minimum(np.arange(start, start + batch_size), total - 1)
    yield min(batch_size, total - start), tuple(np.asarray(a)[rows] for a in arrays)


@dataclasses.dataclass
class SamplerRuns:
  config: bb.BackboneConfig
  params: dict
  spec: SamplerSpec
  batch_size: int
  mesh: Any = None  # a jax Mesh: batches split over its data axis

  @functools.cached_property
  def _sharded(self) -> bool:
    return self.mesh is not None and self.batch_size % data_parallel_size(self.mesh) == 0

  @functools.cached_property
  def _params(self) -> dict:
    return replicate(self.params, self.mesh) if self._sharded else self.params

  def _place(self, x: np.ndarray) -> jax.Array:
    return place_full_batch(np.asarray(x), self.mesh) if self._sharded else jnp.asarray(x)

  def _ids(self, tokenizer, prompts: Sequence[str]) -> np.ndarray:
    return tokenizer.encode(list(prompts), self.config.text.max_length)

  def generate(self, tokenizer, prompts: Sequence[str], guidance_scale: float,
               key: jax.Array) -> np.ndarray:
    """uint8 [len(prompts), H, W, 3]; the unconditional branch is the empty prompt."""
    ids = self._ids(tokenizer, prompts)
    empty = np.repeat(self._ids(tokenizer, [""]), self.batch_size, axis=0)
    scale = jnp.float32(guidance_scale)
    out = []
    for i, (n, (batch,)) in enumerate(padded_batches(ids, batch_size=self.batch_size)):
      images = text_to_image(self._params, self.config, self.spec, jax.random.fold_in(key, i),
                             self._place(batch), self._place(empty), scale)
      out.append(to_host(to_uint8(images))[:n])
    return np.concatenate(out) if out else np.zeros((0,) + (self.config.image_size,) * 2 + (3,),
                                                    np.uint8)

  def translate(self, tokenizer, images: np.ndarray, prompts: Sequence[str],
                strengths: np.ndarray, guidance_scale: float, key: jax.Array) -> np.ndarray:
    """SDEdit of uint8 `images` toward `prompts` with per-image `strengths`; uint8 out."""
    ids = self._ids(tokenizer, prompts)
    empty = np.repeat(self._ids(tokenizer, [""]), self.batch_size, axis=0)
    scale = jnp.float32(guidance_scale)
    strengths = np.asarray(strengths, np.float32)
    out = []
    batches = padded_batches(np.asarray(images), ids, strengths, batch_size=self.batch_size)
    for i, (n, (x, tok, s)) in enumerate(batches):
      edited = image_to_image(self._params, self.config, self.spec, jax.random.fold_in(key, i),
                              self._place(np.asarray(to_model_range(x))), self._place(s),
                              self._place(tok), self._place(empty), scale)
      out.append(to_host(to_uint8(edited))[:n])
    return np.concatenate(out)
