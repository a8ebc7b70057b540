"""DIMVIDA's Tables II and III, the reference rows and the paper's claims, from accuracy records.

One helper builds every table from a list of per-seed accuracy records (`eval/accuracy.json`),
so a single run (one seed, std None) and the claims over seeds (`jaxgen.dimvida.claims`) share it.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from jaxgen.io.report import markdown_table, write_report, write_results

ARCHS = ("resnet18", "mobilenet_v3")
TRAIN_SETS = ("single", "augmented")
TEST_SETS = ("single", "augmented")
TABLE_OF_INIT = {"scratch": "table2", "finetuned": "table3"}
NAMES = {"single": "NMR_c", "augmented": "NMR_ca", "real_multiview": "V real views of NMR_c"}
TEST_NAMES = {"single": "NMR_e", "augmented": "NMR_ea"}
ARCH_NAMES = {"resnet18": "ResNet18", "mobilenet_v3": "MobileNetV3"}
# Paper 000 Tables II and III (NMR 64x64, 4 views), accuracy %.
PAPER = {
    "table2": {"resnet18": {"single": {"single": 83.89, "augmented": 87.21},
                            "augmented": {"single": 85.18, "augmented": 88.03}},
               "mobilenet_v3": {"single": {"single": 71.01, "augmented": 79.66},
                                "augmented": {"single": 77.95, "augmented": 85.45}}},
    "table3": {"resnet18": {"single": {"single": 89.98, "augmented": 89.89},
                            "augmented": {"single": 90.83, "augmented": 90.96}},
               "mobilenet_v3": {"single": {"single": 87.14, "augmented": 88.15},
                                "augmented": {"single": 88.08, "augmented": 90.00}}},
}


def _stat(values: Sequence[float], seeds: Sequence[int]) -> dict:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
          "seeds": [int(s) for s in seeds], "values": [float(x) for x in v]}


def _test_value(record: dict, test_set: str, average: str) -> float:
  return record["single"] if test_set == "single" else record["augmented"][average]


def build_tables(records: Sequence[dict], seeds: Sequence[int], archs: Sequence[str],
                 inits: Sequence[str], average: str) -> dict:
  """{table2, table3, average_modes, upper_bound_true_views, true_views, real_multiview, gains,
  claims} with mean / std (ddof 1) / seeds over the records (one per seed)."""

  def over(fn):
    return _stat([fn(r) for r in records], seeds)

  out: dict = {}
  for init in inits:
    table = out.setdefault(TABLE_OF_INIT[init], {})
    modes = out.setdefault("average_modes", {}).setdefault(TABLE_OF_INIT[init], {})
    for arch in archs:
      for t in TRAIN_SETS:
        name = f"{arch}_{init}_{t}"
        table.setdefault(arch, {})[t] = {
            test: over(lambda r, n=name, test=test: _test_value(r[n], test, average))
            for test in TEST_SETS}
        modes.setdefault(arch, {})[t] = {
            a: over(lambda r, n=name, a=a: r[n]["augmented"][a]) for a in ("probabilities", "logits")}
  for arch in archs:
    out.setdefault("upper_bound_true_views", {})[arch] = over(
        lambda r, a=arch: r[f"{a}_scratch_augmented"]["true_views"][average])
    out.setdefault("true_views", {})[arch] = {
        f"{init}_{t}": over(lambda r, n=f"{arch}_{init}_{t}": r[n]["true_views"][average])
        for init in inits for t in TRAIN_SETS}
    out.setdefault("real_multiview", {})[arch] = {
        test: over(lambda r, a=arch, test=test: _test_value(r[f"{a}_scratch_real_multiview"], test,
                                                            average)) for test in TEST_SETS}
    out.setdefault("generated_only", {})[arch] = {
        f"{init}_{t}": over(lambda r, n=f"{arch}_{init}_{t}": r[n]["generated_only"])
        for init in inits for t in TRAIN_SETS}
  out["gains"], out["claims"] = _gains_and_claims(records, seeds, archs, inits, average)
  return out


def _gains_and_claims(records, seeds, archs, inits, average) -> tuple[dict, dict]:
  """Gains in points over Omega_s on NMR_e, paired per seed, and the paper's three claims."""
  gains: dict = {}
  claims: dict = {}
  for init in inits:
    tname = TABLE_OF_INIT[init]
    for arch in archs:
      def acc(r, t, test, arch=arch, init=init):
        return _test_value(r[f"{arch}_{init}_{t}"], test, average)
      base = [acc(r, "single", "single") for r in records]
      diff = {
          "test_time_only": [acc(r, "single", "augmented") - b for r, b in zip(records, base)],
          "train_time_only": [acc(r, "augmented", "single") - b for r, b in zip(records, base)],
          "both": [acc(r, "augmented", "augmented") - b for r, b in zip(records, base)],
      }
      gains.setdefault(tname, {})[arch] = {k: _stat(v, seeds) for k, v in diff.items()}
    per_arch = gains[tname]
    both_best = {}
    for arch in archs:
      cells = {(t, test): _stat([_test_value(r[f"{arch}_{init}_{t}"], test, average) for r in records],
                                seeds)["mean"] for t in TRAIN_SETS for test in TEST_SETS}
      best = cells.pop(("augmented", "augmented"))
      both_best[arch] = best > max(cells.values())  # strictly above the three other cells
    claims[tname] = {
        "augmenting_both_is_best": {"holds": all(both_best.values()), "per_arch": both_best},
        "test_time_augmentation_alone_helps": {
            "holds": all(per_arch[a]["test_time_only"]["mean"] > 0 for a in archs),
            "per_arch": {a: per_arch[a]["test_time_only"]["mean"] > 0 for a in archs},
            "on_every_seed": {a: all(x > 0 for x in per_arch[a]["test_time_only"]["values"])
                              for a in archs}},
    }
    if set(ARCHS) <= set(archs):
      m, r = per_arch["mobilenet_v3"]["train_time_only"], per_arch["resnet18"]["train_time_only"]
      claims[tname]["train_augmentation_helps_mobilenet_more"] = {
          "holds": m["mean"] > r["mean"], "mobilenet_v3_gain": m["mean"], "resnet18_gain": r["mean"]}
  return gains, claims


def fmt_stat(stat: dict) -> str:
  """mean (+- std when there are several seeds), two decimals."""
  if stat["std"] is None:
    return f"{stat['mean']:.2f}"
  return f"{stat['mean']:.2f} +- {stat['std']:.2f}"


def table_rows(tables: dict, tname: str, archs: Sequence[str]) -> list[list[str]]:
  rows = []
  for arch in archs:
    for t in TRAIN_SETS:
      cell = tables[tname][arch][t]
      paper = PAPER[tname][arch][t]
      rows.append([ARCH_NAMES[arch], f"Omega_{'s' if t == 'single' else 'm'} - {NAMES[t]}",
                   fmt_stat(cell["single"]), fmt_stat(cell["augmented"]),
                   f"{paper['single']:.2f} / {paper['augmented']:.2f}"])
  return rows


def markdown_sections(tables: dict, archs: Sequence[str], inits: Sequence[str], average: str,
                      num_generated: int) -> list[tuple[str, str]]:
  """Report sections shared by report.md and the results page."""
  headers = ["architecture", "model - training set", "NMR_e", "NMR_ea", "paper NMR_e / NMR_ea"]
  sections = []
  titles = {"table2": "Table II: accuracy (%), training from scratch",
            "table3": "Table III: accuracy (%), fine-tuning"}
  for init in inits:
    tname = TABLE_OF_INIT[init]
    sections.append((titles[tname], markdown_table(headers, table_rows(tables, tname, archs)) +
                     f"\n\nNMR_ea: the real view plus {num_generated} generated views, "
                     f"{average} averaged."))
  rows = []
  for init in inits:
    tname = TABLE_OF_INIT[init]
    for arch in archs:
      g = tables["gains"][tname][arch]
      rows.append([tname, ARCH_NAMES[arch], fmt_stat(g["test_time_only"]), fmt_stat(g["train_time_only"]),
                   fmt_stat(g["both"])])
  sections.append(("Gains over Omega_s on NMR_e (points)", markdown_table(
      ["table", "architecture", "test-time only", "train-time only", "both"], rows)))
  rows = []
  for arch in archs:
    rm = tables["real_multiview"][arch]
    rows.append([ARCH_NAMES[arch], "Omega_m on NMR_ca, given the V true views of each NMR_e object",
                 fmt_stat(tables["upper_bound_true_views"][arch])])
    rows.append([ARCH_NAMES[arch], "trained on the V real views of NMR_c, tested on NMR_e",
                 fmt_stat(rm["single"])])
    rows.append([ARCH_NAMES[arch], "trained on the V real views of NMR_c, tested on NMR_ea",
                 fmt_stat(rm["augmented"])])
    rows.append([ARCH_NAMES[arch], "Omega_m on NMR_ca, tested on the generated views of NMR_e only",
                 fmt_stat(tables["generated_only"][arch]["scratch_augmented"])])
  sections.append(("Reference rows (from scratch, accuracy %)", markdown_table(
      ["architecture", "reference", "accuracy"], rows)))
  rows = []
  for init in inits:
    tname = TABLE_OF_INIT[init]
    for arch in archs:
      for t in TRAIN_SETS:
        m = tables["average_modes"][tname][arch][t]
        rows.append([tname, ARCH_NAMES[arch], NAMES[t], fmt_stat(m["probabilities"]), fmt_stat(m["logits"])])
  sections.append(("NMR_ea: averaging probabilities or logits", markdown_table(
      ["table", "architecture", "training set", "mean of softmax", "softmax of mean logits"], rows)))
  return sections


def _per_arch(flags: dict) -> str:
  return ", ".join(f"{ARCH_NAMES[a]} {'yes' if v else 'no'}" for a, v in flags.items())


def claims_text(claims: dict, gains: dict | None = None) -> str:
  """One line per claim and table: holds / does not hold, with the numbers behind it."""
  lines = []
  for tname, c in claims.items():
    both = c["augmenting_both_is_best"]
    tta = c["test_time_augmentation_alone_helps"]
    lines.append(f"- {tname}: augmenting both sets is best (Omega_m on NMR_ea the highest cell): "
                 f"**{'holds' if both['holds'] else 'does not hold'}** ({_per_arch(both['per_arch'])}).")
    detail = ""
    if gains is not None:
      detail = "; gains " + ", ".join(f"{ARCH_NAMES[a]} {fmt_stat(g['test_time_only'])}"
                                      for a, g in gains[tname].items())
    lines.append(f"- {tname}: test-time augmentation alone helps (Omega_s, NMR_ea over NMR_e): "
                 f"**{'holds' if tta['holds'] else 'does not hold'}** (mean gain > 0: "
                 f"{_per_arch(tta['per_arch'])}; on every seed: {_per_arch(tta['on_every_seed'])}"
                 f"{detail}).")
    if "train_augmentation_helps_mobilenet_more" in c:
      m = c["train_augmentation_helps_mobilenet_more"]
      lines.append(f"- {tname}: train-time augmentation (Omega_m over Omega_s on NMR_e) helps "
                   f"MobileNetV3 more than ResNet18: **{'holds' if m['holds'] else 'does not hold'}** "
                   f"({m['mobilenet_v3_gain']:+.2f} vs {m['resnet18_gain']:+.2f} points, means).")
  return "\n".join(lines)


def write(config: ml_collections.ConfigDict, workdir: str, data_description: str, accuracy: dict, *,
          num_generated: int) -> None:
  inits = ("scratch", "finetuned") if config.finetune.enabled else ("scratch",)
  archs = tuple(config.archs)
  average = config.evaluate.average
  tables = build_tables([accuracy["accuracy"]], [config.seed], archs, inits, average)
  record = {**tables, "average": average, "num_generated": num_generated,
            "num_eval_objects": accuracy["num_objects"], "paper": PAPER,
            "pretrained_from": {a: (config.finetune.torchvision_paths[a] or "scikit-learn digits (jaxgen)")
                                for a in archs}}
  write_results(workdir, config, record, data=data_description,
                feature_network="none (accuracies only)")
  sections = markdown_sections(tables, archs, inits, average, num_generated)
  sections.append(("The paper's claims on this run (one seed; claims need 3: jaxgen.dimvida.claims)",
                   claims_text(tables["claims"], tables["gains"])))
  sections.append(("Example", "![NMR_ea](samples/nmr_ea_examples.png)\n\nPer row: the V view slots "
                   f"(the real NMR_e view at its own slot, its {num_generated} generated views at theirs), "
                   "then the object's V true views."))
  write_report(workdir, "DIMVIDA: multi-view augmentation with MVLD (paper 000, Tables II-III)",
               config=config, data=data_description, feature_network="none (accuracies only)",
               sections=sections)
