"""Softlabel-GAN's results.json and report.md: Table 2 (overall and intra-class metrics per variant),
Table 1 (label-augmentation counts), the classifiers behind the labels and the numbers, timings."""

from __future__ import annotations

import ml_collections

from jaxgen.io.report import markdown_table, write_report, write_results
from jaxgen.softlabel_gan.labels import VARIANTS, comparisons

# Paper 003 Table 2, imbalanced CIFAR-10 (InceptionV3 features), for side-by-side reading.
PAPER_CIFAR10 = {"onehot": {"fid": 57.24, "intra_fid_mean": 112.96, "lpips": 0.2090},
                 "smooth": {"fid": 66.75, "intra_fid_mean": 125.31, "lpips": 0.2017},
                 "soft": {"fid": 54.59, "intra_fid_mean": 109.79, "lpips": 0.2058}}
# Paper 003 Table 7, imbalanced Tiny ImageNet (InceptionV3 features): diffusion with CFG.
PAPER_TABLE7 = {"cfg": {"fid": 21.92, "intra_kid": 0.065, "intra_lpips_mean": 0.271,
                        "intra_precision": 0.783, "intra_recall": 0.419, "intra_density": 0.732,
                        "intra_coverage": 0.867},
                "cfg_soft": {"fid": 22.04, "intra_kid": 0.064, "intra_lpips_mean": 0.268,
                             "intra_precision": 0.795, "intra_recall": 0.426, "intra_density": 0.773,
                             "intra_coverage": 0.880}}
COLUMNS = (("fid", "FID (down)"), ("intra_fid", "intra-FID (down)"), ("kid", "KID (down)"),
           ("intra_kid", "intra-KID (down)"), ("lpips", "LPIPS (up)"), ("intra_lpips", "intra-LPIPS (up)"),
           ("precision", "P"), ("recall", "R"), ("density", "D"), ("coverage", "C"),
           ("intra_precision", "intra-P"), ("intra_recall", "intra-R"), ("intra_density", "intra-D"),
           ("intra_coverage", "intra-C"), ("inception_score", "IS"), ("class_consistency", "class consistency"))


def cell(row: dict, key: str, fmt: str = ".4g") -> str:
  """One table cell: 'mean +- std' for the intra-FID / intra-LPIPS pairs, else the value."""
  if key in ("intra_fid", "intra_lpips"):
    return f"{format(row[key + '_mean'], fmt)} +- {format(row[key + '_std'], fmt)}"
  value = row.get(key)
  return "n/a" if value is None else format(value, fmt)


def table2_markdown(table2: dict) -> str:
  rows = [[VARIANTS[name].title + f" (`{name}`)"] + [cell(r, key) for key, _ in COLUMNS]
          for name, r in table2.items()]
  return markdown_table(["variant"] + [title for _, title in COLUMNS], rows)


def table1_markdown(table1: dict, class_names: list[str]) -> str:
  sources = [s for s in ("smooth", "soft", "class_mean") if s in table1]
  rows = [[name, table1["original"][c]] + [table1[s][c] for s in sources]
          for c, name in enumerate(class_names)]
  return markdown_table(["class", "images (one-hot)"] + [f"samples > {table1['count_threshold']} ({s})"
                                                         for s in sources], rows)


def verdict(table2: dict) -> list[str]:
  """Sentences comparing each label-augmented variant (Softlabel-GAN; CFG with soft labels) with
  its baselines (`labels.comparisons`) on FID, intra-FID and intra-KID."""
  out = []
  for mine, other in comparisons(table2):
    for key, label in (("fid", "FID"), ("intra_fid_mean", "intra-FID"), ("intra_kid", "intra-KID")):
      a, b = table2[mine][key], table2[other][key]
      out.append(f"- {label}: {VARIANTS[mine].title} {a:.4g} vs {VARIANTS[other].title} {b:.4g}: "
                 f"{'lower (better)' if a < b else 'not lower'}")
  return out


def write(config: ml_collections.ConfigDict, workdir: str, data: dict, table1: dict | None,
          evaluation: dict, classifiers: dict, timing: dict) -> None:
  table2 = evaluation["table2"]
  nets = evaluation["networks"]
  record = {"table2": table2, "table1": table1, "real_reference": evaluation["real_reference"],
            "train_counts": data["train_counts"], "class_names": data["class_names"],
            "classifiers": classifiers, "networks": nets, "timing_s": timing,
            "variants": {n: VARIANTS[n].title for n in table2}, "paper_table2_cifar10": PAPER_CIFAR10}
  write_results(workdir, config, record, data=data["description"], feature_network=nets["features"])
  ref = evaluation["real_reference"]
  diffusion = [n for n in table2 if VARIANTS[n].model == "diffusion"]
  d = config.diffusion
  sources = (["each EMA generator in eval mode"] if len(diffusion) < len(table2) else []) + (
      [f"each diffusion model's EMA ({d.sampler}, {d.num_steps} steps, guidance scale "
       f"{d.guidance_scale})"] if diffusion else [])
  sampled = f"{config.evaluate.samples_per_class} samples per class from " + " and ".join(sources)
  title = "Table 2" + (" / Table 7 (diffusion with CFG)" if diffusion else "")
  sections = [
      (f"{title}: generated vs real reference images",
       table2_markdown(table2) + "\n\n" + "\n".join(verdict(table2)) + "\n\n"
       f"{sampled}; "
       f"intra metrics are mean (+- std) over the {len(data['train_counts'])} classes; LPIPS "
       f"diversity on {config.evaluate.lpips_pairs} sampled pairs per class of "
       f"{config.evaluate.lpips_per_class} samples. Real reference images: IS "
       f"{ref['inception_score']:.4g}, LPIPS {ref['lpips']:.4g}, class consistency "
       f"{cell(ref, 'class_consistency')}.\n\n"
       f"- features (FID, KID, PRDC): {nets['features']}\n- LPIPS: {nets['lpips']}\n"
       f"- IS: {nets['logits']}\n- class consistency: {nets.get('classify', 'the judge')}\n\n"
       "Paper (imbalanced CIFAR-10, InceptionV3): FID 57.24 / 66.75 / 54.59 and intra-FID "
       "112.96 / 125.31 / 109.79 for DiffAug-GAN / Smooth-GAN / Softlabel-GAN. Paper Table 7 "
       f"(imbalanced Tiny ImageNet, diffusion with CFG): FID {PAPER_TABLE7['cfg']['fid']} / "
       f"{PAPER_TABLE7['cfg_soft']['fid']}, intra-KID {PAPER_TABLE7['cfg']['intra_kid']} / "
       f"{PAPER_TABLE7['cfg_soft']['intra_kid']} without / with the label augmentation."),
  ]
  if table1 is not None:
    sections.append(("Table 1: label augmentation per class", table1_markdown(table1, data["class_names"])
                     + "\n\nA sample counts for a class when its label vector gives that class more than "
                     f"{table1['count_threshold']}." + (
                         f" Classifier C on the training set: accuracy {table1['train_accuracy']:.4g}, mean "
                         f"entropy {table1['mean_entropy']:.4g} nats, mean true-class probability "
                         f"{table1['mean_true_class_probability']:.4g}." if "train_accuracy" in table1 else "")))
  lines = []
  if "classifier" in classifiers:
    c = classifiers["classifier"]
    lines.append(f"- label classifier C: {c['arch']} with a {c['head']} head, entropy weight "
                 f"{c['entropy_weight']}, accuracy {c['reference_accuracy']:.4g} on the reference set")
  if "judge" in classifiers:
    lines.append(f"- in-domain judge: accuracy {classifiers['judge']['reference_accuracy']:.4g} on the "
                 "reference set")
  lines.append("- stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
  sections.append(("Networks and timing", "\n".join(lines)))
  write_report(workdir, "Softlabel-GAN (paper 003)", config=config, data=data["description"],
               feature_network=nets["features"], sections=sections)
