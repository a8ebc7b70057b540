"""Quality per network evaluation: Table I of each sampler at several NFE on one trained model.

Every sampler of jaxgen.sde generates the missing views of the same test objects for every
conditioning set (paper 000's protocol, `evaluate.generated_pools`), with the same keys; the five
Table I metrics are measured per number of observed views and averaged over them. NFE counts
score-network evaluations, the final Tweedie denoising step included:

  euler_maruyama, ddim, dpmpp_2m   NFE = num_steps + 1       (so num_steps = NFE - 1)
  ddpm                             DDIM with eta = 1 (ancestral: DDIM paper's sigma = DDPM's)
  ode (Heun), dpmpp_2s             NFE = 2 num_steps + 1     (num_steps = round((NFE - 1) / 2))
  pc                               NFE = num_steps (1 + n_corrector_steps) + 1
  repaint                          NFE = downward steps of the jump schedule + 1
                                   (the authors' N = 250, jump 10, 10 resamplings: 2,411)

`reaches_reference` says whether a sampler at a small NFE is as good as the reference
(Euler-Maruyama at 200 steps by default) on every metric within stated tolerances.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxgen.metrics.frechet import fid
from jaxgen.mvld.evaluate import (HIGHER_IS_BETTER, METRICS, Judges, fid_subsamples, generated_pools,
                                  pair_metrics)
from jaxgen.sde.repaint import repaint_schedule

STUDY_SAMPLERS = ("euler_maruyama", "ddpm", "ddim", "dpmpp_2m", "dpmpp_2s", "ode", "pc")
VP_ONLY = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2s")
# How much worse than the reference a sampler may be and still "reach" its quality: absolute for
# PSNR (dB), SSIM and coherence; relative for LPIPS and FID.
TOLERANCE = {"psnr": ("abs", 0.1), "ssim": ("abs", 0.005), "coherence": ("abs", 0.01),
             "lpips": ("rel", 0.02), "fid": ("rel", 0.05)}


def evaluations_per_step(sampler: ml_collections.ConfigDict) -> int:
  """Score-network evaluations per step of a step-based sampler (RePaint's come from its schedule)."""
  if sampler.name in ("euler_maruyama", "ddim", "dpmpp_2m"):
    return 1
  if sampler.name == "ode":
    return 2 if sampler.ode_method == "heun" else 1
  if sampler.name == "dpmpp_2s":
    return 2
  if sampler.name == "pc":
    return 1 + sampler.n_corrector_steps
  raise ValueError(f"sampler {sampler.name!r}: no NFE formula")


def network_evaluations(sampler: ml_collections.ConfigDict) -> int:
  """Score-network evaluations of one sampling run with this sampler section."""
  d = int(bool(sampler.denoise))
  if sampler.name == "repaint":
    sched = repaint_schedule(sampler.num_steps, sampler.jump_length, sampler.num_repeats)
    return int(np.sum(np.diff(sched) < 0)) + d
  return evaluations_per_step(sampler) * sampler.num_steps + d


def sampler_at_nfe(base: ml_collections.ConfigDict, name: str, nfe: int) -> ml_collections.ConfigDict:
  """`base` with sampler `name` and the number of steps whose NFE is closest to `nfe`."""
  cfg = base.copy_and_resolve_references()
  cfg.name = name
  if name == "ddpm":  # a study name, not a sampler of its own: stochastic DDIM
    cfg.update(name="ddim", eta=1.0)
  elif name == "ddim":
    cfg.eta = 0.0
  cfg.num_steps = max(1, round((nfe - int(bool(cfg.denoise))) / evaluations_per_step(cfg)))
  return cfg


def authors_repaint(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The MLD authors' conditional sampler: RePaint, N = 250, jumps of 10, 10 resamplings."""
  cfg = base.copy_and_resolve_references()
  cfg.update(name="repaint", num_steps=250, jump_length=10, num_repeats=10, predictor="euler_maruyama")
  return cfg


def table1_quality(generate: Callable, images: np.ndarray, labels: np.ndarray, judges: Judges, *,
                   observed_counts: Sequence[int], key: jax.Array, batch_size: int, seed: int,
                   mesh: Mesh | None = None) -> dict:
  """{str(k): {metric}} for the five Table I metrics, plus their mean over k at the top level."""
  pools, _ = generated_pools(generate, images, labels, observed_counts, key=key, batch_size=batch_size,
                             mesh=mesh)
  _, subsamples = fid_subsamples(pools, seed)
  by_count = {}
  for k, (gen, true, lab) in pools.items():
    row = pair_metrics(gen, true, lab, judges, batch_size, mesh)
    idx = subsamples[k]
    row["fid"] = float(fid(judges.features(gen[idx]), judges.features(true[idx])))
    by_count[str(k)] = {m: row[m] for m in METRICS}
  mean = {m: float(np.mean([by_count[k][m] for k in by_count])) for m in METRICS}
  return {**mean, "by_count": by_count}


def run_study(make_generate: Callable[[ml_collections.ConfigDict], Callable], images: np.ndarray,
              labels: np.ndarray, judges: Judges, *, base_sampler: ml_collections.ConfigDict,
              samplers: Sequence[str], nfes: Sequence[int], repaint: bool,
              observed_counts: Sequence[int], key: jax.Array, batch_size: int, seed: int,
              mesh: Mesh | None = None, log: Callable[[str], None] = print) -> dict:
  """results[sampler][str(nfe)] = {metric: mean over k, 'by_count': ..., 'nfe': actual NFE}.

  `make_generate(sampler_section)` returns generate(key, images, observed) -> uint8 views; every
  run uses the same `key`, so samplers differ only in how they integrate.
  """
  runs = [(name, nfe, sampler_at_nfe(base_sampler, name, nfe)) for name in samplers for nfe in nfes]
  if repaint:
    cfg = authors_repaint(base_sampler)
    runs.append(("repaint", network_evaluations(cfg), cfg))
  results: dict[str, dict] = {}
  for name, nfe, cfg in runs:
    quality = table1_quality(make_generate(cfg), images, labels, judges,
                             observed_counts=observed_counts, key=key, batch_size=batch_size,
                             seed=seed, mesh=mesh)
    quality["nfe"] = network_evaluations(cfg)
    quality["num_steps"] = int(cfg.num_steps)
    results.setdefault(name, {})[str(nfe)] = quality
    log(f"[sampler_study] {name} NFE {quality['nfe']}: " +
        ", ".join(f"{m} {quality[m]:.4g}" for m in METRICS))
  return results


def tolerance_text(tolerance: dict = TOLERANCE) -> str:
  """'psnr 0.1, ..., lpips 0.02 relative': the tolerances as reports print them."""
  return ", ".join(f"{m} {v:g}" + (" relative" if kind == "rel" else "")
                   for m, (kind, v) in tolerance.items())


def no_worse(value: float, reference: float, metric: str) -> bool:
  """Is `value` at most the tolerated amount worse than `reference` on `metric`?"""
  kind, tol = TOLERANCE[metric]
  slack = tol if kind == "abs" else tol * abs(reference)
  return value >= reference - slack if HIGHER_IS_BETTER[metric] else value <= reference + slack


def reaches_reference(study: dict, reference: tuple[str, str], max_nfe: int) -> dict:
  """Per sampler: the smallest NFE <= max_nfe whose every metric is no worse than the reference
  run's (within TOLERANCE), or None."""
  ref = study[reference[0]][reference[1]]
  out = {}
  for name, runs in study.items():
    ok = [int(r["nfe"]) for r in runs.values()
          if r["nfe"] <= max_nfe and all(no_worse(r[m], ref[m], m) for m in METRICS)]
    out[name] = min(ok) if ok else None
  return out
