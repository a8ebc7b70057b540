"""LR-GMM-NN's claims over seeds: the default run for several seeds, mean and std of Table 1.

  python -m jaxgen.lrgmm.claims                       # seeds 0, 1, 2 of configs/lrgmm.py
  python -m jaxgen.lrgmm.claims --seeds=0,1,2,3 --root=workdirs/lrgmm-claims -- --config.nn.num_iters=2

Each seed runs `python -m jaxgen.main --config=CONFIG --config.seed=S --workdir=ROOT/seedS` (the
data seed stays fixed, so seeds vary the autoencoder, the classifier, EM's initialisation and the
sampling); finished stages are skipped, so a rerun only recomputes the summary. Writes
ROOT/claims.json: per N and method, the mean and std (ddof = 1) over seeds of FID, precision and
recall, and the claim "the NN step lowers FID" as the per-seed differences with their mean / std.
"""

from __future__ import annotations

import sys

import numpy as np

from jaxgen.seeds import run_claims

METRICS = ("fid", "precision", "recall")


def summarise(results: dict[int, dict]) -> dict:
  """Mean / std over seeds of every Table 1 entry, and the NN-vs-LR-GMM FID differences."""
  seeds = sorted(results)
  first = results[seeds[0]]
  table, claims = {}, {}
  for n, methods in first["table1"].items():
    table[n] = {}
    for method in methods:
      table[n][method] = {}
      for metric in METRICS:
        vals = np.array([results[s]["table1"][n][method][metric] for s in seeds], np.float64)
        table[n][method][metric] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                                    "values": vals.tolist()}
    diff = np.array([results[s]["table1"][n]["lr_gmm_nn"]["fid"] - results[s]["table1"][n]["lr_gmm"]["fid"]
                     for s in seeds])
    claims[n] = {"fid_difference_nn_minus_lr_gmm": {"mean": float(diff.mean()),
                                                    "std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
                                                    "values": diff.tolist()},
                 "seeds_where_nn_lowers_fid": int(np.sum(diff < 0)), "num_seeds": len(seeds)}
  return {"seeds": seeds, "table1": table, "nn_lowers_fid": claims, "data": first["data"],
          "feature_network": first["feature_network"], "preset": first["preset"]}


def main(argv: list[str] | None = None) -> int:
  code, summary = run_claims(sys.argv[1:] if argv is None else argv, __doc__.split("\n")[0],
                             "configs/lrgmm.py", "workdirs/lrgmm-claims", summarise)
  if code:
    return code
  for n, c in summary["nn_lowers_fid"].items():
    d = c["fid_difference_nn_minus_lr_gmm"]
    print(f"[claims] N={n}: FID(LR-GMM-NN) - FID(LR-GMM) = {d['mean']:.3f} +- {d['std']:.3f} over "
          f"{c['num_seeds']} seeds; NN lowers FID for {c['seeds_where_nn_lowers_fid']} of them", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
