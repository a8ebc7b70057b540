"""What the t2i report measures, on the run's samples (all images uint8 NHWC).

* Autoencoder: PSNR of test reconstructions, and the judges' accuracies on the reconstructions of
  real test images (pre-training and target): what a sample decoded by this autoencoder can be
  recognised as at best (its decoder draws every sample), next to the real images' accuracies.
* Vanilla backbone (paper 001's "vanilla SD" role): for the 72 pre-training prompts, the
  pre-training judge's accuracy on the samples (full class, solid = metaclass, colour word) and
  the FID of the samples against the real test split in the judge's features, with and without
  classifier-free guidance; the judge's accuracy on real test images is the ceiling.
* SDEdit: references translated toward the opposite colour word of the same solid at strengths
  s in `SDEDIT_STRENGTHS`, all in one call: the judge's rate of the target colour, of the kept
  solid, and the PSNR to the reference, per s (larger s: more edit, less fidelity).
* Fine-tuning (paper 001 Fig. 3 / Table 5): per fine-tuning seed, the target judge's accuracy on
  samples of "a photo of a <v_i> cube" (Diff-Gen) against the class i they were asked for, and
  the same for the vanilla backbone, which cannot name the classes ("a photo of a cube" for
  every i: chance level); FID of both against the real target test split; mean and std over seeds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxgen.metrics.frechet import fid
from jaxgen.metrics.image import psnr
from jaxgen.nets.kl_autoencoder import decode_latents, encode_latents
from jaxgen.nets.common import to_model_range, to_uint8
from jaxgen.io.images import image_grid
from jaxgen.t2i import backbone as bb
from jaxgen.t2i import data as data_lib
from jaxgen.io import paths

SDEDIT_STRENGTHS = (0.3, 0.5, 0.7, 0.9)


def sdedit_plan(d: dict) -> tuple[np.ndarray, dict, np.ndarray]:
  """References (one test image per solid x colour class, first occurrence), their targets (the
  same solid in the colour three steps round the colour list) and every strength per reference."""
  labels = d["pretrain_test_labels"]
  classes = np.unique(labels)
  refs = np.array([np.flatnonzero(labels == c)[0] for c in classes])
  n_col = len(d["colour_names"])
  target = (classes // n_col) * n_col + (classes % n_col + n_col // 2) % n_col
  k = len(SDEDIT_STRENGTHS)
  refs, target = np.repeat(refs, k), np.repeat(target, k)
  strengths = np.tile(np.asarray(SDEDIT_STRENGTHS, np.float32), len(classes))
  prompts = [data_lib.prompt(d["class_names"][c]) for c in target]
  return refs, {"labels": target, "prompts": prompts}, strengths


def sdedit_figure(d: dict, edited: np.ndarray, refs: np.ndarray) -> np.ndarray:
  """Columns: 12 references (one per solid); rows: the reference, then each strength."""
  k = len(SDEDIT_STRENGTHS)
  n_col = len(d["colour_names"])
  pick = np.arange(0, len(refs) // k, n_col)[:12]  # one colour class per solid
  rows = [d["pretrain_test_images"][refs[pick * k]]]
  rows += [edited[pick * k + j] for j in range(k)]
  return image_grid(np.stack(rows))


def fid_features(inception_path: str, judge, judge_name: str, config_key: str
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
  """(features(uint8 images) -> [N, D], what they are): InceptionV3 pool3 when `inception_path`
  is given (the file named by `config_key`; split over the judge's mesh), else the in-domain
  judge's penultimate layer."""
  if inception_path:
    from jaxgen.metrics.inception import inception_feature_fn, load_fid_inception
    fn = inception_feature_fn(load_fid_inception(inception_path, config_key),
                              mesh=getattr(judge, "mesh", None))
    return (lambda x: fn(x)[0]), "InceptionV3 pool3 (FID weights from " + inception_path + ")"
  return judge.features, judge_name


def _accuracy(pred: np.ndarray, target: np.ndarray) -> float:
  return float(np.mean(np.asarray(pred) == np.asarray(target)))


def _mean_std(values: list[float]) -> dict:
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def evaluate(config, d: dict, cfg: bb.BackboneConfig, params: dict, judge_pre, judge_tgt,
             sample_dir: str) -> dict:
  e = config.evaluate
  n_col = len(d["colour_names"])
  test = d["pretrain_test_images"]

  def reconstruct(images: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(images), e.batch_size):
      x = to_model_range(images[i:i + e.batch_size])
      out.append(np.asarray(to_uint8(decode_latents(params["vae"], encode_latents(
          params["vae"], x, cfg.vae), cfg.vae))))
    return np.concatenate(out)

  def pretrain_accuracies(pred: np.ndarray, labels: np.ndarray) -> dict:
    return {"class_accuracy": _accuracy(pred, labels),
            "solid_accuracy": _accuracy(pred // n_col, labels // n_col),
            "colour_accuracy": _accuracy(pred % n_col, labels % n_col)}

  recon = reconstruct(test)
  out = {"autoencoder": {"psnr_db": float(np.mean(np.asarray(psnr(test, recon)))),
                         "latent_shape": list(cfg.latent_shape),
                         "scaling_factor": cfg.vae.scaling_factor}}
  in_domain = (f"in-domain {config.judge.arch} judges trained by jaxgen (penultimate features): "
               "72-class on the pre-training renders, K-class on the target's judge split; not "
               "InceptionV3, not comparable with published FIDs")
  pre_features, network = fid_features(e.inception_path, judge_pre, in_domain,
                                       "evaluate.inception_path")
  tgt_features, _ = fid_features(e.inception_path, judge_tgt, in_domain, "evaluate.inception_path")
  real_feats = pre_features(test)
  real_pred = judge_pre.predict(test)
  labels = d["pretrain_test_labels"]
  out["real_test"] = pretrain_accuracies(real_pred, labels)
  out["real_test_reconstructed"] = pretrain_accuracies(judge_pre.predict(recon), labels)
  with paths.load_npz(f"{sample_dir}/vanilla.npz") as f:
    van = {k: f[k] for k in f.files}
  out["vanilla"] = {}
  for name in ("guided", "unguided"):
    pred = judge_pre.predict(van[name])
    out["vanilla"][name] = {
        **pretrain_accuracies(pred, van["labels"]),
        "fid": float(fid(real_feats, pre_features(van[name]))),
        "num_samples": int(len(pred))}
  out["vanilla"]["guidance_scale"] = float(config.sampler.guidance_scale)
  pred = judge_pre.predict(van["sdedit"])
  ref_labels = labels[van["sdedit_refs"]]
  sd = {}
  for s in SDEDIT_STRENGTHS:
    m = np.isclose(van["sdedit_strengths"], s)
    sd[f"{s:.1f}"] = {
        "target_colour_rate": _accuracy(pred[m] % n_col, van["sdedit_targets"][m] % n_col),
        "solid_kept_rate": _accuracy(pred[m] // n_col, ref_labels[m] // n_col),
        "psnr_to_reference_db": float(np.mean(np.asarray(psnr(
            test[van["sdedit_refs"][m]], van["sdedit"][m])))),
        "num_images": int(m.sum())}
  out["sdedit"] = sd
  # fine-grained target
  tgt_test = d["target_test_images"]
  tgt_feats = tgt_features(tgt_test)
  out["target_real_test"] = {
      "class_accuracy": _accuracy(judge_tgt.predict(tgt_test), d["target_test_labels"]),
      "reconstructed_class_accuracy": _accuracy(judge_tgt.predict(reconstruct(tgt_test)),
                                                d["target_test_labels"])}
  per_seed = {"diff_gen": {"accuracy": [], "fid": []}, "real_gen": {"accuracy": [], "fid": []}}
  for seed in config.finetune.seeds:
    with paths.load_npz(f"{sample_dir}/target_seed{seed}.npz") as f:
      for name in per_seed:
        per_seed[name]["accuracy"].append(_accuracy(judge_tgt.predict(f[name]), f["labels"]))
        per_seed[name]["fid"].append(float(fid(tgt_feats, tgt_features(f[name]))))
  out["finetune"] = {name: {k: _mean_std(v) for k, v in m.items()} for name, m in per_seed.items()}
  out["finetune"]["seeds"] = list(config.finetune.seeds)
  out["finetune"]["strategy"] = config.finetune.strategy
  out["finetune"]["chance"] = 1.0 / d["num_target_classes"]
  out["feature_network"] = network
  return out
