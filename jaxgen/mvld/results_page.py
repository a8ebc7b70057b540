"""Writes docs/results_mvld.md from the seeds' claims.json and seed 0's results.json; never by hand.

  python -m jaxgen.mvld.results_page --root=workdirs/mvld-claims --out=docs/results_mvld.md
  python -m jaxgen.mvld.results_page --root=workdirs/mvld-64 --out=docs/results_mvld_64.md
      # claims of another preset (`python -m jaxgen.mvld.claims --config=configs/mvld.py:64`)
  python -m jaxgen.mvld.results_page --root=workdirs/mvld-claims \
      --baseline-root=workdirs/mvld-claims-l1
      # adds the comparison with the same seeds run with eq. 1's loss alone
      # (`python -m jaxgen.mvld.claims --root=workdirs/mvld-claims-l1 -- \
      #  --config.autoencoder.perceptual_weight=0`)

Every number in the page's tables and claim lines is formatted from the JSON files and checked
against them before writing (`jaxgen.io.report.unlisted_numbers`). The example figures of the
first seed are copied next to the page (docs/img/).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from jaxgen.io.files import atomic_write_text, read_json
from jaxgen.io.report import (MIN_SEEDS, compare_over_seeds, json_numbers, markdown_table,
                              reproduction_scope, unlisted_numbers)
from jaxgen.mvld.evaluate import EXTRA_METRICS, METRICS
from jaxgen.mvld.report import BASELINES_NOTE, HIGHER_IS_BETTER, PAPER_TABLE1
from jaxgen.mvld.sampler_study import tolerance_text
from jaxgen.io import paths

EQUAL_PSNR_NOTE_PAGE = (
    "Each cell: bytes the scheme needs for the PSNR of that point of MVLD's rate-distortion front, "
    "divided by MVLD's bytes (mean +- std over seeds; above 1 means MVLD is cheaper), interpolated "
    "linearly in log bytes along the scheme's own front; 'at most' when even its cheapest setting "
    "is better (an upper bound); 'not reached' when no setting of it reaches that PSNR.")

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")
FIGURES = {"samples/table1_examples.png": "table1_examples.png",
           "eval/transmission.png": "transmission.png",
           "eval/sampler_study.png": "sampler_study.png"}


def figure_prefix(preset: str) -> str:
  """docs/img/ names of a preset's figures: mvld_<figure> for the default, mvld_<preset>_<figure>."""
  return "mvld_" if preset == "default" else f"mvld_{preset}_"


def fmt(value) -> str:
  return str(value) if isinstance(value, int) else format(float(value), ".4g")


def fmt_stat(stat: dict) -> str:
  return fmt(stat["mean"]) if stat["std"] is None else f"{fmt(stat['mean'])} +- {fmt(stat['std'])}"


def _formats(value) -> set[str]:
  out = {fmt(value)}
  if isinstance(value, float) and value.is_integer():
    out.add(str(int(value)))
  return out


def check_numbers(markdown: str, sources: list) -> list[str]:
  known: set[str] = set()
  for s in sources:
    known |= json_numbers(s, _formats, key_pattern=_NUMBER)
  return unlisted_numbers(markdown, known, _NUMBER, ("|", "- "))


def _autoencoder_line(ae: dict) -> str:
  """Its loss: eq. 1 alone, or with the feature term (whose network shares the judge's
  architecture, which matters for reading FID and LPIPS)."""
  line = f"- autoencoder: {ae['kind']}, {ae['latent_dim']} numbers per view, trained on "
  weight = ae.get("perceptual_weight", 0.0)
  if not weight:
    return line + "eq. 1's L1 alone"
  net = ae["perceptual"]
  return (line + f"L1 + {weight} x the in-domain LPIPS distance in the "
          f"{', '.join(ae['perceptual_layers'])} features of a {net['arch']} trained on the "
          "training views first, not the judge (docs/mvld.md, 'Autoencoder loss'); FID and "
          "LPIPS below use the judge's features, a network of that same architecture, so part "
          "of their gain over eq. 1 alone is that loss's own objective")


def sampler_line(sampler: dict, diffusion: dict) -> str:
  """The sampler as run: DDIM's eta (1 is the stochastic, DDPM-like one), the final denoising
  step (one more network evaluation) and what the score network predicts."""
  name = sampler["name"] + (f" (eta {fmt(sampler['eta'])})" if sampler["name"] == "ddim" else "")
  denoise = " + a final denoising step" if sampler.get("denoise") else ""
  prediction = diffusion.get("prediction", "eps")  # runs written before the option predicted eps
  return (f"- sampler: {name}, {sampler['num_steps']} steps{denoise}, SDE {diffusion['sde']}, "
          f"score network predicting {prediction}")


COMPARED_METRICS = ("coherence", "psnr", "ssim", "fid")


def _verdict(v: dict, same_seeds: bool) -> str:
  """`compare_over_seeds` in words only (the page's numbers all come from the JSON files)."""
  if v["num_seeds"] < MIN_SEEDS or not same_seeds:
    return f"not claimed (needs the same {MIN_SEEDS}+ seeds on both sides)"
  if v["beats_beyond_one_std"]:
    return "better, beyond one std of either"
  if v["loses_beyond_one_std"]:
    return "worse, beyond one std of either"
  if v["beats_paired"]:
    return "better when paired by seed; within one std unpaired"
  if v["loses_paired"]:
    return "worse when paired by seed; within one std unpaired"
  return "not shown (within one std)"


def _differs_only_in_autoencoder_loss(a: dict, b: dict) -> bool:
  strip = lambda c: {**c, "autoencoder": {k: v for k, v in c["autoencoder"].items()  # noqa: E731
                                          if not k.startswith("perceptual")}}
  return strip(a) == strip(b)


def loss_comparison(claims: dict, first: dict, baseline: dict, baseline_first: dict) -> list[str]:
  """Markdown lines: Table I's metrics of the generated views and of the autoencoder ceiling, the
  default against the same seeds trained with eq. 1's loss alone."""
  if not _differs_only_in_autoencoder_loss(first["config"], baseline_first["config"]):
    raise ValueError("the baseline claims differ from these in more than autoencoder.perceptual*")
  if baseline_first["config"]["autoencoder"].get("perceptual_weight", 0.0):
    raise ValueError("the baseline claims were trained with the feature loss too")
  seeds, b_seeds = claims["seeds"], baseline["seeds"]
  rows = []
  for metric in COMPARED_METRICS:
    for k in [*claims["observed_counts"], "autoencoder"]:
      ours, base = claims["table1"][k][metric], baseline["table1"][k][metric]
      sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
      v = compare_over_seeds([sign * x for x in ours["values"]],
                             [sign * x for x in base["values"]], seeds, b_seeds)
      where = "autoencoder ceiling" if k == "autoencoder" else f"{k} observed"
      arrow = " (up)" if HIGHER_IS_BETTER[metric] else " (down)"
      rows.append([metric + arrow, where, fmt_stat(base), fmt_stat(ours),
                   _verdict(v, list(seeds) == list(b_seeds))])
  weight = first["config"]["autoencoder"]["perceptual_weight"]
  gap, b_gap = claims["ceiling_coherence_gap"], baseline["ceiling_coherence_gap"]
  return ["## Autoencoder loss: eq. 1 alone against the default", "",
          f"The same seeds ({', '.join(map(str, b_seeds))}) and config trained with eq. 1's L1 "
          f"alone (`--config.autoencoder.perceptual_weight=0`) and with the default's feature loss "
          f"(weight {weight}; docs/mvld.md, 'Autoencoder loss'). 'better' / 'worse': "
          "`jaxgen.io.report.compare_over_seeds` (the mean - std of one above the mean + std of "
          "the other, or the per-seed differences' mean - std above 0 when paired by seed).", "",
          markdown_table(["metric", "views", "eq. 1 alone", "with the feature loss", "verdict"],
                         rows), "",
          f"- the autoencoder caps coherence {fmt_stat(b_gap)} below the real views with eq. 1 "
          f"alone and {fmt_stat(gap)} with the feature loss.", ""]


def build(claims: dict, first: dict, baseline: tuple[dict, dict] | None = None) -> str:
  cfg = first["config"]
  counts = claims["observed_counts"]
  seeds = claims["seeds"]
  t1 = claims["table1"]
  sampler = cfg["sampler"]
  preset = cfg.get("preset", "default")
  img = "img/" + figure_prefix(preset)
  config = "configs/mvld.py" + ("" if preset == "default" else f":{preset}")
  run = "the default run" if preset == "default" else f"the `{preset}` preset's run"
  lines = [
      "# MVLD on the embedded multi-view renders: results over seeds" +
      ("" if preset == "default" else f" (preset `{preset}`)"),
      "",
      "Generated by `python -m jaxgen.mvld.results_page` from `claims.json` of "
      f"`python -m jaxgen.mvld.claims{'' if preset == 'default' else ' --config=' + config}` "
      f"(seed {seeds[0]} is {run} `python -m jaxgen.main --config={config}`); do not edit by hand.",
      "",
      f"- data: {claims['data']} (the render seed is the run's seed)",
      f"- seeds: {', '.join(map(str, seeds))}; each changes the data render, initialisation, "
      "batches and sampling; cells are mean +- std (ddof 1) over them",
      f"- feature network: {claims['feature_network']}",
      f"- LPIPS: {claims['lpips_network']}",
      sampler_line(sampler, cfg["diffusion"]),
      _autoencoder_line(cfg["autoencoder"]),
      *([f"- run on: {first['environment']['backend']} x{first['environment']['device_count']} "
         f"(jax {first['environment']['jax']}). Same config and seed give the same numbers on the "
         "same machine type and library versions, on 1 or 8 devices to float tolerance.", ""]
        if (scope := reproduction_scope(first["environment"])) is None else
        ["", scope + " On 8 devices: the same to float tolerance.", ""]),
      "## Table I (paper 000 protocol)",
      "",
      "For every conditioning set of size k, the missing views of every test object are generated "
      "and compared with the true views. KID is the raw (unscaled) kernel estimate.",
      "",
  ]
  rows = []
  for metric in list(HIGHER_IS_BETTER) + list(EXTRA_METRICS):
    if metric not in t1[counts[0]]:
      continue
    arrow = "" if metric not in HIGHER_IS_BETTER else (" (up)" if HIGHER_IS_BETTER[metric] else " (down)")
    paper = " / ".join(fmt(PAPER_TABLE1[k][metric]) for k in counts
                       if metric in PAPER_TABLE1.get(k, {})) or "-"
    ceiling = t1["autoencoder"].get(metric)
    rows.append([metric + arrow] + [fmt_stat(t1[k][metric]) for k in counts] +
                [fmt_stat(ceiling) if ceiling else "-", paper])
  lines += [markdown_table(["metric"] + [f"{k} observed" for k in counts] +
                           ["autoencoder ceiling", "paper (NMR)"], rows), ""]
  lines += ["**The paper's trend (quality improves with every added observed view):**", ""]
  for metric, t in claims["trend"].items():
    lines.append(f"- {metric}: {'holds' if t['on_every_seed'] else 'does not hold'} on every seed "
                 f"({t['seeds_holding']} of {len(seeds)}); on the means: "
                 f"{'holds' if t['on_the_means'] else 'does not hold'}.")
  lines += ["", f"Chance coherence is {fmt(claims['chance_coherence'])} "
            f"({claims['num_classes']} classes)."]
  if "ceiling_coherence_gap" in claims:
    lines += ["", f"- the judge labels real test views correctly "
              f"{fmt_stat(t1['real_views']['coherence'])} of the time and their reconstructions "
              f"{fmt_stat(t1['autoencoder']['coherence'])}: the autoencoder caps coherence "
              f"{fmt_stat(claims['ceiling_coherence_gap'])} below the real views."]
  lines += ["",
            f"![Table I examples]({img}table1_examples.png)", ""]
  if baseline is not None:
    lines += loss_comparison(claims, first, *baseline)
  if "transmission" in claims:
    lines += ["## Transmission study (paper 002 Fig. 1)", "",
              "k of the V views' latents are sent at b bits per number; the receiver decodes them "
              "and generates the others; quality over all V views (PSNR per object, MSE pooled over its "
              "views), mean over every subset of size k. "
              "The PNG columns are the bytes of sending the k views losslessly instead (no "
              "generation: unsent views are missing).", ""]
    rows = [[r["views_sent"], r["bits"], r["bytes"], fmt_stat(r["psnr"]), fmt_stat(r["ssim"]),
             fmt_stat(r["coherence"]), r["raw_bytes"], fmt(r["png_bytes"])]
            for r in claims["transmission"]]
    lines += [markdown_table(["views sent", "bits", "bytes/object", "PSNR dB (all views)", "SSIM",
                              "coherence", "k raw views (bytes)", "k PNG views (bytes)"], rows), ""]
    if claims.get("byte_budget"):
      lines += ["**Under a byte budget (equal bytes), more views at fewer bits vs fewer views at "
                "more bits:**", ""]
      for b in claims["byte_budget"]:
        lines.append(f"- {b['bytes']} bytes: {b['more_views'][0]} views at {b['more_views'][1]} bits "
                     f"vs {b['fewer_views'][0]} at {b['fewer_views'][1]} bits: "
                     f"{fmt_stat(b['psnr_gain_db'])} dB PSNR, "
                     f"{'better on every seed' if b['holds_on_every_seed'] else 'not better on every seed'}.")
      lines.append("")
    lines += [f"![trade-off]({img}transmission.png)", ""]
  if "sampler_study" in claims:
    lines += _sampler_section(claims, first, seeds, img)
  if "transmission_baselines" in claims:
    lines += _baselines_section(claims, seeds)
  return "\n".join(lines)


def _sampler_section(claims: dict, first: dict, seeds: list, img: str) -> list[str]:
  cfg = first["config"]["sampler_study"]
  lines = ["## Quality per network evaluation", "",
           f"Table I of each sampler on the same trained model ({cfg['num_objects']} test objects, every "
           "conditioning set; metrics are means over the numbers of observed views), the same random "
           "keys for every sampler; NFE counts score-network evaluations, the final denoising step "
           "included. RePaint runs the authors' schedule (N = 250, jumps of 10, 10 resamplings).", ""]
  rows = []
  for name, runs in claims["sampler_study"].items():
    for r in sorted(runs.values(), key=lambda r: r["nfe"]):
      rows.append([name, r["nfe"]] + [fmt_stat(r[m]) for m in METRICS])
  lines += [markdown_table(["sampler", "NFE"] + list(METRICS), rows), ""]
  ref = cfg["reference"]
  lines += [f"**Reaching {ref[0]} at NFE {ref[1]} with at most {cfg['reach_max_nfe']} evaluations** "
            f"(every metric no worse than the reference's beyond {tolerance_text()}, on each seed):", ""]
  for name, verdict in claims["sampler_study_reaches"].items():
    per_seed = ", ".join("no" if n is None else f"NFE {n}" for n in verdict["per_seed"])
    lines.append(f"- {name}: {'on every seed' if verdict['on_every_seed'] else 'not on every seed'} "
                 f"(per seed: {per_seed}).")
  lines += ["", f"![quality per NFE]({img}sampler_study.png)", ""]
  return lines


def _baselines_section(claims: dict, seeds: list) -> list[str]:
  lines = ["## Lossy codec baselines at equal PSNR", "", BASELINES_NOTE, "", EQUAL_PSNR_NOTE_PAGE, ""]
  table = claims["equal_psnr"]
  names = sorted({n for r in table for n in r["baselines"]})

  def cell(need: dict) -> str:
    if need["ratio"] is None:
      return "not reached"
    text = fmt_stat(need["ratio"])
    if need.get("seeds_upper_bound"):  # its cheapest setting already beats MVLD's PSNR
      text = ("at most " + text if need["seeds_upper_bound"] == need["seeds_reached"] else
              f"{text} (an upper bound on {need['seeds_upper_bound']} of {len(seeds)} seeds)")
    return text if need["seeds_reached"] == len(seeds) else f"{text} (reached on {need['seeds_reached']})"

  rows = [[f"{r['views_sent']} views, {r['bits']}-bit", fmt(r["bytes"]), fmt_stat(r["psnr"])] +
          [cell(r["baselines"][n]) if n in r["baselines"] else "-" for n in names] for r in table]
  lines += [markdown_table(["MVLD point", "MVLD bytes", "PSNR dB"] + names, rows), ""]
  lines += ["**MVLD needs fewer bytes than the baseline for the same PSNR, on every seed:**", ""]
  for n in names:
    count = claims["equal_psnr_summary"][n]
    lines.append(f"- {n}: at {count['mvld_cheaper_on_every_seed']} of {count['points']} points of "
                 "MVLD's front.")
  lines += ["", "All baseline rows (bytes per object and quality over all views):", ""]
  rows = [[r["codec"], r["param"], r["fill"], r["views_sent"], fmt(r["bytes"]["mean"]),
           fmt_stat(r["psnr"]), fmt_stat(r["ssim"]), fmt_stat(r["lpips"]), fmt_stat(r["coherence"])]
          for r in claims["transmission_baselines"]]
  lines += [markdown_table(["codec", "setting", "unsent views", "views sent", "bytes/object",
                            "PSNR dB", "SSIM", "LPIPS", "coherence"], rows), ""]
  return lines


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="workdirs/mvld-claims")
  parser.add_argument("--out", default="docs/results_mvld.md")
  parser.add_argument("--baseline-root", default="",
                      help="claims of the same config with autoencoder.perceptual_weight=0")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  claims = read_json(os.path.join(args.root, "claims.json"))
  first_dir = os.path.join(args.root, f"seed{claims['seeds'][0]}")
  first = read_json(os.path.join(first_dir, "results.json"))
  baseline = None
  if args.baseline_root:
    b_claims = read_json(os.path.join(args.baseline_root, "claims.json"))
    baseline = (b_claims, read_json(os.path.join(args.baseline_root,
                                                 f"seed{b_claims['seeds'][0]}", "results.json")))
  page = build(claims, first, baseline)
  bad = check_numbers(page, [claims, first, PAPER_TABLE1, *(baseline or ())])
  if bad:
    print(f"results_page: numbers not in the JSON files: {bad[:10]}", file=sys.stderr)
    return 1
  image_dir = os.path.join(os.path.dirname(args.out), "img")
  paths.makedirs(image_dir)
  prefix = figure_prefix(first["config"].get("preset", "default"))
  for src, dst in FIGURES.items():
    if paths.exists(os.path.join(first_dir, src)):
      paths.copy(os.path.join(first_dir, src), os.path.join(image_dir, prefix + dst))
  atomic_write_text(args.out, page)
  print(f"wrote {args.out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
