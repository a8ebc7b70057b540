"""Softlabel-GAN's claims over seeds: the default run for several seeds, Table 2 as mean and std.

  python -m jaxgen.softlabel_gan.claims                     # seeds 0, 1, 2 of configs/softlabel_gan.py
  python -m jaxgen.softlabel_gan.claims --seeds=0,1,2 --root=workdirs/softlabel_gan-claims -- --config.gan.d_steps=4

Each seed runs `python -m jaxgen.main --config=CONFIG --config.seed=S --workdir=ROOT/seedS` (the
data seed stays fixed, so seeds vary the classifiers, the GANs and the sampling). Writes
ROOT/claims.json: per variant and metric the mean and std (ddof = 1) over seeds, and the paper's
claim "Softlabel-GAN lowers FID and intra-FID against DiffAug-GAN and Smooth-GAN" (with the
`table7` preset: CFG with label augmentation against CFG) as per-seed differences with their mean
/ std and the number of seeds where it holds.

  python -m jaxgen.softlabel_gan.claims --config=configs/softlabel_gan.py:table7 \
      --root=workdirs/softlabel_gan-table7                # Table 7's diffusion models
"""

from __future__ import annotations

import sys

import numpy as np

from jaxgen.seeds import run_claims
from jaxgen.softlabel_gan.evaluate import TABLE2_METRICS
from jaxgen.softlabel_gan.labels import comparisons

# Lower is better for these; the claim compares Softlabel-GAN with each baseline on them.
CLAIM_METRICS = ("fid", "intra_fid_mean", "kid", "intra_kid")
HIGHER_BETTER = ("lpips", "intra_lpips_mean", "recall", "coverage", "intra_precision", "intra_recall",
                 "intra_density", "intra_coverage")


def _stat(values) -> dict:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "values": v.tolist()}


def summarise(results: dict[int, dict]) -> dict:
  """Mean / std over seeds of every Table 2 entry; the label-augmented variant minus each of its
  baselines per seed (`labels.comparisons`: keyed by the baseline, `against` names the pairs)."""
  seeds = sorted(results)
  first = results[seeds[0]]
  variants = list(first["table2"])
  table2 = {}
  for v in variants:
    table2[v] = {}
    for m in TABLE2_METRICS:
      vals = [results[s]["table2"][v][m] for s in seeds]
      if all(x is not None for x in vals):
        table2[v][m] = _stat(vals)
  claims = {}
  pairs = comparisons(variants)
  for mine, other in pairs:
    claims[other] = {}
    for m in CLAIM_METRICS + HIGHER_BETTER:
      diff = [results[s]["table2"][mine][m] - results[s]["table2"][other][m] for s in seeds]
      better = sum((d > 0) if m in HIGHER_BETTER else (d < 0) for d in diff)
      claims[other][m] = {**_stat(diff), "seeds_where_softlabel_better": int(better),
                          "higher_is_better": m in HIGHER_BETTER}
  return {"seeds": seeds, "variants": variants, "table2": table2, "softlabel_minus": claims,
          "against": {other: mine for mine, other in pairs},
          "num_seeds": len(seeds), "data": first["data"], "feature_network": first["feature_network"],
          "networks": first["networks"], "preset": first["preset"],
          "classifier_accuracy": _stat([results[s]["classifiers"]["classifier"]["reference_accuracy"]
                                        for s in seeds]) if "classifier" in first["classifiers"] else None,
          "judge_accuracy": _stat([results[s]["classifiers"]["judge"]["reference_accuracy"] for s in seeds])
          if "judge" in first["classifiers"] else None}


def main(argv: list[str] | None = None) -> int:
  code, summary = run_claims(sys.argv[1:] if argv is None else argv, __doc__.split("\n")[0],
                             "configs/softlabel_gan.py", "workdirs/softlabel_gan-claims", summarise)
  if code:
    return code
  for other, c in summary["softlabel_minus"].items():
    mine = summary["against"][other]
    for m in ("fid", "intra_fid_mean"):
      d = c[m]
      print(f"[claims] {m}({mine}) - {m}({other}) = {d['mean']:.3f} +- {d['std']:.3f}; lower on "
            f"{d['seeds_where_softlabel_better']} of {summary['num_seeds']} seeds", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
