"""The paper's studies (paper 001 sec. 4), each a list of runs: named config overrides of one base
config. A study preset (`configs/diffmix.py:s_gamma`, ...) sets `study`; the run then trains (or
reuses) one backbone and runs every listed run as a complete Diff-Mix run in
WORKDIR/study/<run>/ on that backbone, and its report gathers them in the paper's table.

  few_shot           Fig. 6: 1, 5, 10 and all shots (p = 0.5 / 0.3 / 0.2 / 0.1)
  conventional       Table 1: all shots, label smoothing 0.1; CutMix, Mixup, Real-filtering
                     (Real-Gen with the confidence filter), Real-guidance (Real-Aug at s = 0.1),
                     Diff-Mix, Diff-Mix + CutMix
  long_tail          Tables 2-3: imbalance factors 100 / 50 / 10, tail-weighted targets, s = 0.7,
                     gamma = 0.5; cross-entropy, Real-Gen, Real-Mix, Diff-Mix, CMO, CMO + DRW;
                     many / medium / few
  finetune_strategy  Table 5: TI, DB, TI+DB; Diff-Gen FID and Diff-Mix accuracy
  s_gamma            Table 6: fixed s in {0.5, 0.7, 0.9} x gamma in {1.5, 1.0, 0.5, 0.3, 0.1, 0.0}
  size               Fig. 7: multiplier 2 / 5 / 10 and 2 / 5 / all referable classes per target
  background_shift   Table 4: the Waterbirds-like set (training backgrounds follow the class group
                     but for 5%, balanced test backgrounds): no augmentation, CutMix, Da-fusion
                     (TI only, Diff-Aug), Diff-Aug, Diff-Mix; the four groups and the worst group
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxgen.errors import ConfigError

# Paper 001 sec. 4.1: replacement probability p by shots per class (0 = all shots).
REPLACE_PROB_BY_SHOTS = {0: 0.1, 10: 0.2, 5: 0.3, 1: 0.5}
Overrides = dict[str, Any]


def _shots(k: int) -> Overrides:
  out = {"data.shots": k, "classifier.synthetic_replace_prob": REPLACE_PROB_BY_SHOTS[k]}
  if k == 1:  # 10 real images: batches of 8 (a multiple of 8 devices)
    out.update({"finetune.train.batch_size": 8, "classifier.train.batch_size": 8})
  return out


_ALL_SHOTS = {**_shots(0), "classifier.label_smoothing": 0.1}
STUDIES: dict[str, list[tuple[str, Overrides]]] = {
    "few_shot": [(f"shots_{k or 'all'}", _shots(k)) for k in (1, 5, 10, 0)],
    "conventional": [
        ("label_smoothing", {**_ALL_SHOTS, "strategies": ("none", "diff_mix")}),
        ("cutmix", {**_ALL_SHOTS, "classifier.cutmix_alpha": 1.0,
                    "strategies": ("none", "diff_mix")}),
        ("mixup", {**_ALL_SHOTS, "classifier.mixup_alpha": 1.0, "strategies": ("none",)}),
        # He et al. 2023 as paper 001 reproduces them: Real-Gen kept by the confidence filter
        # (there CLIP; here `filter`, as for every strategy) and intra-class translation at low
        # strength s = 0.1, both with the vanilla backbone
        ("real_filtering", {**_ALL_SHOTS, "strategies": ("none", "real_gen")}),
        ("real_guidance", {**_ALL_SHOTS, "synthesis.strengths": (0.1,),
                           "strategies": ("none", "real_aug")}),
    ],
    "long_tail": [(f"imbalance_{f}", {
        **_shots(0), "data.imbalance_factor": float(f), "synthesis.target_sampling": "tail",
        "synthesis.strengths": (0.7,), "synthesis.gamma": 0.5,
        "strategies": ("none", "real_gen", "real_mix", "diff_mix")}) for f in (100, 50, 10)]
    + [(f"imbalance_{f}_cmo", {**_shots(0), "data.imbalance_factor": float(f),
                               "classifier.cmo": True, "classifier.cutmix_alpha": 1.0,
                               "strategies": ("none",)}) for f in (100, 50, 10)]
    + [(f"imbalance_{f}_cmo_drw", {**_shots(0), "data.imbalance_factor": float(f),
                                   "classifier.cmo": True, "classifier.cutmix_alpha": 1.0,
                                   "classifier.drw_start": 0.8, "strategies": ("none",)})
       for f in (100, 50, 10)],
    "finetune_strategy": [(s, {"finetune.strategy": s, "strategies": ("none", "diff_gen", "diff_mix")})
                          for s in ("ti", "db", "ti_db")],
    "s_gamma": [(f"s{s}_gamma{g}", {"synthesis.strengths": (s,), "synthesis.gamma": g,
                                    "strategies": ("none", "diff_mix")})
                for g in (1.5, 1.0, 0.5, 0.3, 0.1, 0.0) for s in (0.5, 0.7, 0.9)],
    "background_shift": [
        ("shift", {"data.target": "background_shift",
                   "strategies": ("none", "diff_aug", "diff_mix")}),
        ("shift_cutmix", {"data.target": "background_shift", "classifier.cutmix_alpha": 1.0,
                          "strategies": ("none",)}),
        # Da-fusion (Trabucco et al. 2024): textual inversion only, s in {0.25, 0.5, 0.75, 1}
        ("shift_dafusion", {"data.target": "background_shift", "finetune.strategy": "ti",
                            "synthesis.strengths": (0.25, 0.5, 0.75, 1.0),
                            "strategies": ("none", "diff_aug")}),
    ],
    "size": [(f"multiplier_{m}", {"synthesis.multiplier": m, "strategies": ("none", "diff_mix")})
             for m in (2, 5, 10)]
            + [(f"referable_{r or 'all'}", {"synthesis.referable_classes": r,
                                            "strategies": ("none", "diff_mix")}) for r in (2, 5, 0)],
}


def study_runs(config: ml_collections.ConfigDict) -> list[tuple[str, Overrides]]:
  """The runs of `config.study`, restricted to `config.study_runs` when that is not empty."""
  if config.study not in STUDIES:
    raise ConfigError("study", config.study, "'' or one of " + ", ".join(STUDIES))
  runs = STUDIES[config.study]
  names = [n for n, _ in runs]
  wanted = tuple(config.study_runs)
  unknown = [n for n in wanted if n not in names]
  if unknown:
    raise ConfigError("study_runs", unknown[0], f"runs of study {config.study!r}: {names}")
  return [(n, o) for n, o in runs if not wanted or n in wanted]


def run_config(config: ml_collections.ConfigDict, overrides: Overrides, t2i_workdir: str
               ) -> ml_collections.ConfigDict:
  """One run of a study: the base config with `overrides`, no study, on the shared backbone."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.study, out.study_runs, out.t2i_workdir = "", (), t2i_workdir
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"study override {key}", value, "a key of the Diff-Mix config")
    node[leaf] = value
  return out
