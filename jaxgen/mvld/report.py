"""MVLD's results.json and report.md: paper 000 Table I and the transmission study."""

from __future__ import annotations

import ml_collections

from jaxgen.io.report import markdown_table, write_report, write_results
from jaxgen.mvld.evaluate import EXTRA_METRICS

# Paper 000 Table I (NMR, 4 views, InceptionV3 FID, SqueezeNet LPIPS), for side-by-side reading.
PAPER_TABLE1 = {
    "1": {"fid": 16.43, "lpips": 0.074, "ssim": 0.832, "psnr": 24.028, "coherence": 0.8549},
    "2": {"fid": 15.14, "lpips": 0.056, "ssim": 0.884, "psnr": 26.776, "coherence": 0.8833},
    "3": {"fid": 14.51, "lpips": 0.048, "ssim": 0.912, "psnr": 28.491, "coherence": 0.8914},
}
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "coherence": True, "lpips": False, "fid": False}


def trend_verdict(table: dict, counts: list[str]) -> dict[str, bool]:
  """Per metric: does quality improve monotonically from the fewest to the most observed views?"""
  verdict = {}
  for metric, higher in HIGHER_IS_BETTER.items():
    values = [table[k][metric] for k in counts]
    pairs = zip(values, values[1:])
    verdict[metric] = all((b > a) if higher else (b < a) for a, b in pairs)
  return verdict


def write(config: ml_collections.ConfigDict, workdir: str, data: dict, table1_record: dict,
          transmission: dict | None) -> None:
  table = table1_record["table1"]
  counts = [str(k) for k in config.evaluate.observed_counts]
  verdict = trend_verdict(table, counts)
  chance = 1.0 / data["num_classes"]
  results = {
      "table1": table,
      "num_classes": data["num_classes"],
      "chance_coherence": chance,
      "trend_improves_with_views": verdict,
      "lpips_network": table1_record["lpips_network"],
      "paper_table1_nmr": PAPER_TABLE1,
  }
  if transmission is not None:
    results["transmission"] = transmission["rows"]
  write_results(workdir, config, results, data=data["description"],
                feature_network=table1_record["feature_network"])

  rows = []
  for metric in ("fid", "lpips", "ssim", "psnr", "coherence"):
    arrow = "up" if HIGHER_IS_BETTER[metric] else "down"
    row = [f"{metric.upper()} ({arrow})"] + [table[k][metric] for k in counts]
    row += [table["autoencoder"].get(metric, float("nan"))]
    row += [" / ".join(f"{PAPER_TABLE1[k][metric]:.4g}" for k in counts if k in PAPER_TABLE1)]
    rows.append(row)
  for metric in EXTRA_METRICS:
    rows.append([f"{metric} (extra)"] + [table[k].get(metric, float("nan")) for k in counts] +
                [table["autoencoder"].get(metric, float("nan")), "-"])
  t1 = markdown_table(["metric"] + [f"{k} observed" for k in counts] +
                      ["autoencoder ceiling", "paper 000 (NMR)"], rows)
  improving = [m for m, ok in verdict.items() if ok]
  not_improving = [m for m, ok in verdict.items() if not ok]
  coh = table[counts[-1]]["coherence"]
  summary = [
      f"Quality improves monotonically with more observed views for: {', '.join(improving) or 'none'}.",
      (f"Not monotone for: {', '.join(not_improving)}." if not_improving else
       "Every metric follows the paper's trend."),
      f"Coherence with {counts[-1]} observed views is {coh:.3f} against chance {chance:.3f} "
      f"({data['num_classes']} classes); the judge classifier labels real test views correctly "
      f"{table['real_views']['coherence']:.3f} of the time.",
      f"Real test views, for the extra rows: in-domain IS "
      f"{table['real_views'].get('inception_score', float('nan')):.3f}, LPIPS diversity "
      f"{table['real_views'].get('lpips_diversity', float('nan')):.3f} (mean pairwise LPIPS; "
      "generated views close to it are as varied as real ones). IS and diversity use the judge "
      "networks named below; intra_kid is KID per object class, averaged.",
      f"FID uses {table1_record['feature_network']}; computed on "
      f"{table[counts[0]]['fid_num_images']} images per column (equal sizes so columns compare).",
      f"LPIPS column: {table1_record['lpips_network']}.",
      "The autoencoder column reconstructs all views of the same test objects (the ceiling).",
      "Paper numbers are on NMR at 64x64 with InceptionV3/SqueezeNet; ours are on the data "
      "named above, so compare trends, not values.",
  ]
  sections = [("Table I: generated views vs observed views (paper 000 Table I)",
               t1 + "\n\n" + "\n".join(f"- {s}" for s in summary) +
               "\n\n![examples](samples/table1_examples.png)\n\nRows per object: observed views "
               "(greyed views were not given), generated, true.")]
  if transmission is not None:
    trows = [[r["views_sent"], r["bits"], r["bytes"], r["raw_bytes"], round(r["png_bytes"]),
              r["psnr"], r["ssim"], r["lpips"], r["coherence"]] for r in transmission["rows"]]
    tt = markdown_table(["views sent", "bits", "bytes sent", "raw bytes", "PNG bytes",
                         "PSNR (all views)", "SSIM", "LPIPS", "coherence"], trows)
    tcfg = config.transmission
    sections.append(("Transmission study (paper 002 Fig. 1)",
                     f"Channel: bit error rate {tcfg.bit_error_rate}, view loss probability "
                     f"{tcfg.view_loss_prob}, {tcfg.num_objects} test objects; quality over all "
                     f"{config.data.num_views} views at the receiver (sent views decoded, the rest "
                     "generated). Bytes include a 1-byte view mask.\n\n" + tt +
                     "\n\n![trade-off](eval/transmission.png)"))
  write_report(workdir, "MVLD: multi-view latent diffusion", config=config,
               data=data["description"], feature_network=table1_record["feature_network"],
               sections=sections)
