"""Paper 000 Table I: quality of generated views given 1, 2 or 3 observed views.

For every conditioning set C of each size k (all C(V, k) subsets, averaged), the missing views of
each test object are generated and compared with the true views: PSNR, SSIM and LPIPS per image
pair, FID between generated and true missing views, and coherence (eq. 7: the classifier's label
of each generated view equals the object's class). The autoencoder's reconstruction of all views
is the ceiling any generated view can reach.

FID is biased by sample size, and the number of generated views differs per k (e.g. 4x3, 6x2 and
4x1 per object for V = 4); every k's FID is therefore computed on the same number of images, a
seeded subsample of the smallest set, so the column compares like with like.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxgen.metrics.frechet import fid
from jaxgen.metrics.image import psnr, ssim
from jaxgen.metrics.inception_score import inception_score
from jaxgen.metrics.intra import intra_class
from jaxgen.metrics.kernel import kid
from jaxgen.metrics.lpips import lpips_diversity
from jaxgen.metrics.prdc import prdc
from jaxgen.mvld import masking
from jaxgen.mvld import model as mvld_model
from jaxgen.parallel.batching import batched_apply
from jaxgen.parallel.mesh import place_if_divisible, to_host
from jaxgen.train.xla_cpu import sampling_compiler_options

METRICS = ("psnr", "ssim", "lpips", "fid", "coherence")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "coherence": True, "lpips": False, "fid": False}
# Beyond Table I, on the same equal-size subsamples as FID: KID (unbiased, less size-biased than
# FID) and its intra-class mean (per object class, as intra-FID), precision / recall / density /
# coverage (fidelity vs diversity), the Inception Score of the judge's logits (in-domain IS) and
# the mean pairwise LPIPS of the set (diversity; compare with the real views').
EXTRA_METRICS = ("kid", "intra_kid", "precision", "recall", "density", "coverage",
                 "inception_score", "lpips_diversity")
_DIVERSITY_PAIRS = 1000


@dataclasses.dataclass
class Judges:
  """The networks behind the feature-based numbers, with the names reports print."""

  logits: Callable[[np.ndarray], np.ndarray]  # uint8 NHWC -> [N, C]
  features: Callable[[np.ndarray], np.ndarray]  # uint8 NHWC -> [N, D] for FID
  lpips: Callable[[np.ndarray, np.ndarray], np.ndarray]  # paired uint8 -> [N]
  feature_network: str
  lpips_network: str


def make_generator(spec: mvld_model.MVLDSpec, ae_params: Any, score_params: Any,
                   stats: mvld_model.LatentStats, sampler) -> Callable:
  """jit(generate_views) with the parameters closed over: (key, images, observed) -> images,
  compiled with the sampling options of the XLA:CPU route (jaxgen/train/xla_cpu.py)."""
  return jax.jit(functools.partial(mvld_model.generate_views, spec, ae_params, score_params, stats,
                                   sampler=sampler), compiler_options=sampling_compiler_options())


def _batched(fn: Callable, arrays: tuple[np.ndarray, ...], batch_size: int,
             mesh: Mesh | None = None) -> np.ndarray:
  return batched_apply(fn, arrays, batch_size, pad="edge", mesh=mesh)


def per_image_metrics(generated: np.ndarray, true: np.ndarray, labels: np.ndarray, judges: Judges,
                      batch_size: int, mesh: Mesh | None = None) -> dict[str, np.ndarray]:
  """Per uint8 image pair: psnr, mse (float64), ssim, lpips, and correct (1 where the judge's label
  of the generated image is `labels`); `pair_metrics` averages them."""
  psnr_fn = jax.jit(psnr)
  ssim_fn = jax.jit(ssim)
  logits = np.asarray(judges.logits(generated))
  diff = generated.astype(np.float64) - true.astype(np.float64)
  return {
      "psnr": np.asarray(_batched(psnr_fn, (generated, true), batch_size, mesh)),
      "mse": np.mean(diff.reshape((len(diff), -1)) ** 2, axis=1),
      "ssim": np.asarray(_batched(ssim_fn, (generated, true), batch_size, mesh)),
      "lpips": np.asarray(judges.lpips(generated, true)),
      "correct": (np.argmax(logits, axis=-1) == np.asarray(labels)).astype(np.float32),
  }


def pair_metrics(generated: np.ndarray, true: np.ndarray, labels: np.ndarray, judges: Judges,
                 batch_size: int, mesh: Mesh | None = None) -> dict[str, float]:
  """Mean PSNR/SSIM/LPIPS of image pairs and coherence (paper 000 eq. 7) of `generated` with `labels`."""
  m = per_image_metrics(generated, true, labels, judges, batch_size, mesh)
  return {"psnr": float(np.mean(m["psnr"])), "ssim": float(np.mean(m["ssim"])),
          "lpips": float(np.mean(m["lpips"])), "coherence": float(np.mean(m["correct"]))}


def generate_missing(generate: Callable, key: jax.Array, images: np.ndarray, subset: tuple[int, ...],
                     batch_size: int, mesh: Mesh | None = None) -> np.ndarray:
  """All V views generated from the views in `subset`, for every object: [N, V, H, W, 3].

  With a mesh, each batch whose size the data axis divides is split over it (every host its
  rows); a batch it does not divide (the last one) runs whole on one device per host. Batches are
  never padded: the sampler's noise has the batch's shape, so padding would change the samples.
  """
  num_views = images.shape[1]
  observed = np.asarray(masking.observed_mask_for(subset, num_views))
  out = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    obs = np.broadcast_to(observed, (len(chunk), num_views))
    chunk, obs = place_if_divisible((chunk, np.ascontiguousarray(obs)), mesh)
    out.append(to_host(generate(jax.random.fold_in(key, i), chunk, obs)))
  return np.concatenate(out)


def generated_pools(generate: Callable, images: np.ndarray, labels: np.ndarray, observed_counts, *,
                    key: jax.Array, batch_size: int, mesh: Mesh | None = None) -> tuple[dict, dict]:
  """For each k: (generated missing views, true missing views, their labels) over every subset of
  k observed views, and examples[k] = (first subset, its generated views of every object)."""
  num_views = images.shape[1]
  pools, examples = {}, {}
  for k in observed_counts:
    gen_views, true_views, view_labels = [], [], []
    for j, subset in enumerate(masking.subsets_of_size(num_views, k)):
      out = generate_missing(generate, jax.random.fold_in(key, 1000 * k + j), images, subset, batch_size,
                             mesh)
      if j == 0:
        examples[k] = (subset, out)
      missing = [v for v in range(num_views) if v not in subset]
      gen_views.append(out[:, missing].reshape((-1,) + images.shape[2:]))
      true_views.append(images[:, missing].reshape((-1,) + images.shape[2:]))
      view_labels.append(np.repeat(labels, len(missing)))
    pools[k] = tuple(np.concatenate(x) for x in (gen_views, true_views, view_labels))
  return pools, examples


def fid_subsamples(pools: dict, seed: int) -> tuple[int, dict]:
  """Equal-size seeded subsamples of every k's pool (see the module docstring): (size, {k: idx})."""
  n_fid = min(len(g) for g, _, _ in pools.values())
  rng = np.random.default_rng(seed)
  return n_fid, {k: rng.choice(len(gen), n_fid, replace=False) for k, (gen, _, _) in pools.items()}


def evaluate_table1(generate: Callable, reconstruct: Callable, images: np.ndarray, labels: np.ndarray,
                    judges: Judges, *, observed_counts, key: jax.Array, batch_size: int,
                    seed: int, mesh: Mesh | None = None) -> tuple[dict, dict]:
  """Returns (table1, examples): table1[str(k)][metric] and table1['autoencoder'] (the ceiling).

  `examples[k]` keeps the generated views of the first objects for the first subset of size k.
  With a mesh, generation and the per-image metrics are split over its data axis.
  """
  num_views = images.shape[1]
  pools, examples = generated_pools(generate, images, labels, observed_counts, key=key,
                                    batch_size=batch_size, mesh=mesh)
  table: dict[str, Any] = {}
  for k, (gen, true, lab) in pools.items():
    table[str(k)] = pair_metrics(gen, true, lab, judges, batch_size, mesh)
    table[str(k)]["num_generated_views"] = int(len(gen))
  n_fid, subsamples = fid_subsamples(pools, seed)
  for k, (gen, true, lab) in pools.items():
    idx = subsamples[k]
    table[str(k)].update(set_metrics(gen[idx], true[idx], lab[idx], judges, seed))
    table[str(k)]["fid_num_images"] = int(n_fid)
  recon = _batched(reconstruct, (images,), batch_size, mesh)
  flat_recon = recon.reshape((-1,) + images.shape[2:])
  flat_true = images.reshape((-1,) + images.shape[2:])
  table["autoencoder"] = pair_metrics(flat_recon, flat_true, np.repeat(labels, num_views), judges,
                                      batch_size, mesh)
  flat_labels = np.repeat(labels, num_views)
  idx = np.random.default_rng(seed).choice(len(flat_recon), min(n_fid, len(flat_recon)), replace=False)
  table["autoencoder"].update(set_metrics(flat_recon[idx], flat_true[idx], flat_labels[idx],
                                          judges, seed))
  real_logits = judges.logits(flat_true[idx])
  table["real_views"] = {
      "coherence": float(np.mean(np.argmax(judges.logits(flat_true), -1) == flat_labels)),
      "inception_score": _inception_score(real_logits),
      "lpips_diversity": _diversity(flat_true[idx], judges, seed),
  }
  return table, examples


def _inception_score(logits: np.ndarray) -> float:
  return float(inception_score(logits, num_splits=min(10, len(logits)))[0])


def _diversity(images: np.ndarray, judges: Judges, seed: int) -> float:
  n = len(images)
  return float(lpips_diversity(images, max_pairs=min(_DIVERSITY_PAIRS, n * (n - 1) // 2),
                               key=jax.random.key(seed), distance_fn=judges.lpips))


def _intra_kid(fake: np.ndarray, real: np.ndarray, labels: np.ndarray) -> float:
  """Mean over classes of KID between the class's fake and real features (paired rows, so both
  sets have the same labels); classes with fewer than 2 rows are left out."""
  values, counts = np.unique(labels, return_counts=True)
  classes = [int(c) for c, n in zip(values, counts) if n >= 2]
  if not classes:
    return float("nan")
  per_class = lambda a, b: kid(a, b, num_subsets=10, subset_size=min(len(a), len(b), 100))[0]  # noqa: E731
  return float(intra_class(per_class, fake, labels, real, labels, classes=classes)["mean"])


def set_metrics(fake_images: np.ndarray, real_images: np.ndarray, labels: np.ndarray,
                judges: Judges, seed: int) -> dict[str, float]:
  """The set-level metrics of a column: FID, KID, PRDC and intra-KID on the judge's features,
  in-domain IS of the judge's logits and LPIPS diversity of `fake_images`."""
  fake, real = judges.features(fake_images), judges.features(real_images)
  out = distribution_metrics(fake, real)
  out["intra_kid"] = _intra_kid(np.asarray(fake), np.asarray(real), labels)
  out["inception_score"] = _inception_score(judges.logits(fake_images))
  out["lpips_diversity"] = _diversity(fake_images, judges, seed)
  return out


def distribution_metrics(fake: np.ndarray, real: np.ndarray) -> dict[str, float]:
  """FID, KID and PRDC (k = 5) of fake against real features."""
  out = {"fid": float(fid(fake, real))}
  out["kid"] = float(kid(fake, real, num_subsets=50, subset_size=min(1000, len(fake), len(real)))[0])
  out.update({name: float(v) for name, v in prdc(real, fake, k=5).items()})
  return out


def example_grid(images: np.ndarray, examples: dict, num_objects: int) -> np.ndarray:
  """Rows per object and k: observed views (missing ones greyed), generated views, true views."""
  from jaxgen.io.images import image_grid
  rows = []
  for k, (subset, out) in sorted(examples.items()):
    for i in range(min(num_objects, len(images))):
      shown = images[i].copy()
      for v in range(images.shape[1]):
        if v not in subset:
          shown[v] = (shown[v] // 4 + 96).astype(np.uint8)  # greyed: not given to the model
      rows += [shown, out[i], images[i]]
  return image_grid(np.stack(rows))


def reconstruct_fn(spec: mvld_model.MVLDSpec, ae_params: Any) -> Callable:
  @jax.jit
  def reconstruct(images):
    return mvld_model.decode_views(spec, ae_params, mvld_model.encode_views(spec, ae_params, images))

  return reconstruct


def as_float(x: Any) -> float:
  return float(jnp.asarray(x))
