"""LR-GMM-NN's results.json and report.md: Table 1, the d_k sweep, memorisation and timings."""

from __future__ import annotations

import ml_collections

from jaxgen.io.report import markdown_table, write_report, write_results

# Paper 004 Table 1 (CelebA-HQ 256x256, VQ-GAN latents, InceptionV3 FID), for side-by-side reading.
PAPER_TABLE1 = {
    "1024": {"lr_gmm": {"fid": 73.8, "precision": 0.47, "recall": 0.03},
             "lr_gmm_nn": {"fid": 58.1, "precision": 0.52, "recall": 0.07}},
    "28000": {"lr_gmm": {"fid": 84.1, "precision": 0.53, "recall": 0.01},
              "lr_gmm_nn": {"fid": 45.0, "precision": 0.68, "recall": 0.06}},
}
METHOD_NAMES = {"lr_gmm": "LR-GMM", "lr_gmm_nn": "LR-GMM-NN", "nn_only": "NN only (random codes, Fig. 6c)",
                "real_target": "real X images (reference)", "p0_reconstruction": "D(P0*(P0(E(x)))) of test images",
                "autoencoder": "D(E(x)) of test images (ceiling)"}
TIMING_KEYS = (("p0_compute_s", "P0 compute"), ("encoding_s", "encoding X"), ("training_s", "training (EM + eigenpairs)"),
               ("setup_total_s", "total set-up"))
GEN_KEYS = (("sampling_per_image_s", "sampling (per image)"), ("refining_per_image_s", "refining (per image)"),
            ("decoding_per_image_s", "decoding (per image)"))


def nn_verdict(table1: dict) -> dict[str, dict]:
  """Per N: does the NN step lower FID / raise precision and recall over LR-GMM alone?"""
  out = {}
  for n, row in table1.items():
    lr, nn = row["lr_gmm"], row["lr_gmm_nn"]
    out[n] = {"fid_improves": nn["fid"] < lr["fid"], "precision_improves": nn["precision"] > lr["precision"],
              "recall_improves": nn["recall"] > lr["recall"], "fid_lr_gmm": lr["fid"], "fid_lr_gmm_nn": nn["fid"]}
  return out


def results_record(ev: dict) -> dict:
  """The results.json payload (without the shared header fields)."""
  timing = {n: {**fit["timing"], **ev["generation"][n]} for n, fit in ev["fits"].items()}
  return {
      "table1": ev["table1"], "timing": timing, "sweep": ev["sweep"], "memorisation": ev["memorisation"],
      "fits": {n: {k: v for k, v in fit.items() if k != "timing"} for n, fit in ev["fits"].items()},
      "nn_improves": nn_verdict(ev["table1"]), "paper_table1_celebahq": PAPER_TABLE1,
      "num_test_images": ev["num_test"],
  }


def write(config: ml_collections.ConfigDict, workdir: str, data_description: str, ev: dict) -> None:
  record = results_record(ev)
  write_results(workdir, config, record, data=data_description, feature_network=ev["feature_network"])
  sizes = list(ev["table1"])
  k_of = {str(n): k for n, k in zip(config.table1.sizes, config.table1.components)}
  rows = []
  for n in sizes:
    for m in ("lr_gmm", "lr_gmm_nn", "nn_only", "real_target", "p0_reconstruction", "autoencoder"):
      r = ev["table1"][n][m]
      rows.append([f"N = {n}, K = {k_of[n]}", METHOD_NAMES[m], r["fid"], r["precision"], r["recall"]])
  t1 = markdown_table(["data size", "method", "FID (down)", "precision (up)", "recall (up)"], rows)
  verdict = record["nn_improves"]
  lines = []
  for n in sizes:
    v = verdict[n]
    lines.append(f"N = {n}: the NN step {'lowers' if v['fid_improves'] else 'does not lower'} FID "
                 f"({v['fid_lr_gmm']:.2f} -> {v['fid_lr_gmm_nn']:.2f}); precision "
                 f"{'rises' if v['precision_improves'] else 'does not rise'}, recall "
                 f"{'rises' if v['recall_improves'] else 'does not rise'}.")
  paper = markdown_table(["N", "method", "FID", "precision", "recall"],
                         [[n, METHOD_NAMES[m], r["fid"], r["precision"], r["recall"]]
                          for n, methods in PAPER_TABLE1.items() for m, r in methods.items()])
  summary = (
      f"{ev['num_test']} real test images against {config.evaluate.num_samples} generated images per "
      f"row; precision/recall with k = {config.evaluate.pr_k} nearest neighbours; one seed "
      f"({config.seed}). Reference rows: real X images (a sample of the real distribution, at most N "
      "of them), the P0 reconstruction and the autoencoder reconstruction of the test images.\n\n" +
      "\n".join(f"- {line}" for line in lines) +
      "\n\nPaper 004 Table 1 (CelebA-HQ, VQ-GAN latents, InceptionV3), for trends only:\n\n" + paper)
  sw_rows = [[s["temperature"], str(s["dims"]), s["lr_gmm"]["fid"], s["lr_gmm"]["precision"], s["lr_gmm"]["recall"],
              s["lr_gmm_nn"]["fid"], s["lr_gmm_nn"]["precision"], s["lr_gmm_nn"]["recall"]] for s in ev["sweep"]]
  sweep = markdown_table(["lambda", "d_k", "LR-GMM FID", "prec.", "rec.", "LR-GMM-NN FID", "prec.", "rec."], sw_rows)
  memo_rows = []
  for n, stats in ev["memorisation"].items():
    memo_rows.append([n, "real test images", stats["test"]["median"], 0.01])
    for m in ("lr_gmm", "lr_gmm_nn", "nn_only"):
      memo_rows.append([n, METHOD_NAMES[m], stats[m]["median"], stats[m]["frac_below_test_p01"]])
  memo = markdown_table(["N", "images", "median distance to nearest X image",
                         "fraction nearer than the test set's 1st percentile"], memo_rows)
  n_time = str(config.evaluate.sweep_size)
  timing = record["timing"][n_time]
  time_rows = [[label, timing[k]] for k, label in TIMING_KEYS + GEN_KEYS]
  fits = record["fits"]
  fit_rows = [[n, f["K"], f["d0"], f["form"], f["em_iterations"], f["em_converged"], str(f["dims"]), f["num_parameters"]]
              for n, f in fits.items()]
  sections = [
      ("Table 1: FID, precision, recall (paper 004 Table 1)", t1 + "\n\n" + summary +
       "\n\n![methods](samples/N{0}_methods.png)\n\nRows: LR-GMM, LR-GMM-NN, NN only (N = {0}).".format(n_time)),
      ("Fitted models", markdown_table(["N", "K", "d0", "EM form", "EM iterations", "converged", "d_k",
                                        "parameters (P0 + LR-GMM)"], fit_rows)),
      (f"Low-rank dimension sweep (paper Fig. 8), N = {n_time}",
       sweep + "\n\nSame noise for every lambda. ![sweep](samples/sweep_lowrank.png)"),
      ("Memorisation check", memo + "\n\nPixel L2 distance on the [0, 1] scale. A copying generator puts "
       "many samples nearer to X than real unseen images are (last column well above 0.01). "
       "![histogram](eval/memorisation.png)"),
      (f"Timing (paper supp. Table 1), N = {n_time}", markdown_table(["operation", "seconds"], time_rows) +
       "\n\nMeasured on the device named above, on a second (compiled) run of each step; set-up for N "
       "images, generation per image over evaluate.num_samples images."),
      ("Figures", "Decoded centroids D(P0*(c_k)) (Fig. 7): ![centroids](samples/centroids.png)\n\n"
       "LR-GMM-NN samples and their latent maps (Fig. 1; colour = training image copied at each latent "
       f"pixel): ![maps](samples/N{config.table1.sizes[0]}_latent_maps.png)"),
  ]
  write_report(workdir, "LR-GMM-NN: low-rank Gaussian mixture latent model", config=config,
               data=data_description, feature_network=ev["feature_network"], sections=sections)
