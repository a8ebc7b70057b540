"""jaxgen.mvld.compare_variants: paired mean +- std over seeds and the one-std verdict."""

import json
import os

import pytest

from jaxgen.mvld import compare_variants

METRICS = ("psnr", "ssim", "lpips", "fid", "coherence")


def _write(root, seed, psnr, fid, study_psnr, prediction="eps"):
  ev = os.path.join(root, f"seed{seed}", "eval")
  os.makedirs(ev)
  with open(os.path.join(root, f"seed{seed}", "config.json"), "w") as fh:
    json.dump({"data": {"name": "multiview", "image_size": 32, "data_dir": ""}, "seed": seed,
               "diffusion": {"prediction": prediction, "widths": [8, 4]}}, fh)
  os.makedirs(os.path.join(root, f"seed{seed}", "stages"))
  for stage in ("evaluate", "sampler_study"):
    with open(os.path.join(root, f"seed{seed}", "stages", f"{stage}.json"), "w") as fh:
      json.dump({"stage": stage}, fh)
  row = lambda p, f: {"psnr": p, "ssim": 0.5, "lpips": 1.0, "fid": f, "coherence": 0.4}
  with open(os.path.join(ev, "table1.json"), "w") as fh:
    json.dump({"table1": {"1": row(psnr, fid), "autoencoder": row(30.0, 1.0)},
               "feature_network": "in-domain net", "lpips_network": "domain-LPIPS"}, fh)
  with open(os.path.join(ev, "sampler_study.json"), "w") as fh:
    json.dump({"num_objects": 5, "study": {"ddim": {"10": row(study_psnr, fid)}}}, fh)


def test_paired_differences_and_verdicts(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  for seed, (pa, pb) in enumerate([(18.0, 19.0), (18.5, 19.4), (17.5, 18.6)]):
    _write(a, seed, pa, 20.0 + seed, 16.0)
    _write(b, seed, pb, 20.0 + seed + (1 if seed == 1 else -1), 16.3 + 0.1 * seed, "v")
  text = compare_variants.compare(a, b, ("eps", "v"))
  assert "- data: image_size=32, name=multiview" in text and "in-domain net" in text
  # the config keys that differ, read from the first seed's config.json (the seed itself is not one)
  assert "- config of v against eps (seed 0): `diffusion.prediction: 'eps' -> 'v'`\n" in text
  assert "Sampler study" in text and "Sampler study" not in compare_variants.compare(
      a, b, ("eps", "v"), sampler_study=False)
  lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines()
           if line.startswith("| ")}
  psnr = lines[("1 observed", "psnr")]
  assert "18 +- 0.5" in psnr and "19 +- 0.4" in psnr  # means and ddof-1 stds of each variant
  assert "1 +- 0.1" in psnr and "v better beyond one std" in psnr  # diffs 1.0, 0.9, 1.1
  assert "within one std" in lines[("1 observed", "fid")]  # diffs -1, +1, -1: mean -1/3, std 1.15
  assert "identical" in lines[("1 observed", "ssim")]
  assert ("autoencoder", "psnr") not in lines  # only the observed-count rows
  assert "v better beyond one std" in lines[("ddim NFE 10", "psnr")]  # diffs 0.3, 0.4, 0.5
  out = str(tmp_path / "page.md")
  compare_variants.main([f"--a={a}", f"--b={b}", "--labels=eps,v", f"--out={out}"])
  page = open(out).read()
  assert page.startswith("# MVLD: eps against v") and "do not edit by hand" in page
  assert page.endswith(text)
  # labels with spaces: the page's command is quoted so that it pastes back into a shell
  compare_variants.main([f"--a={a}", f"--b={b}", "--labels=eps + EM,v + DDIM", f"--out={out}"])
  assert "compare_variants --a=" in open(out).read()
  assert "'--labels=eps + EM,v + DDIM'" in open(out).read()


def test_a_workdir_without_the_evaluate_marker_is_left_out(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  for seed in (0, 1):
    _write(a, seed, 18.0, 20.0, 16.0)
    _write(b, seed, 19.0, 20.0, 16.0)
  os.remove(os.path.join(b, "seed1", "stages", "evaluate.json"))  # copied, not yet re-evaluated
  assert compare_variants.compare(a, b, ("a", "b")).startswith("Seeds 0;")


def test_no_common_seed_is_a_config_error(tmp_path):
  with pytest.raises(compare_variants.ConfigError, match="--a/--b"):
    compare_variants.compare(str(tmp_path / "x"), str(tmp_path / "y"), ("a", "b"))
