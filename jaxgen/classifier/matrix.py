"""The classifier architecture matrix: every `<arch>_multiview` / `<arch>_digits` preset of
configs/classifier.py, then the `finetune` preset continued from `resnet18_multiview`, one after
another, each as its own command (so a run's wall time is the whole command: start, data from the
shared render cache, compilation, training, evaluation, report).

  python -m jaxgen.classifier.matrix --root=workdirs/classifier-matrix [--presets=resnet18_digits,...]
  python -m jaxgen.classifier.results_page --root=workdirs/classifier-matrix   # docs/classifier_results.md

Each run is `python -m jaxgen.main --config=configs/classifier.py:<preset> --workdir=ROOT/<preset>`
(multi-view presets with `--config.data.data_dir=ROOT/render_cache`, rendered once before the
timed runs). Writes ROOT/matrix.json: the presets in order with their workdir, command and wall
seconds; the numbers themselves stay in each run's results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Sequence

from jaxgen.io import paths
from jaxgen.io.files import atomic_write_json

FINETUNE_FROM = "resnet18_multiview"


def matrix_presets() -> tuple[str, ...]:
  from configs import classifier as classifier_config  # pylint: disable=import-outside-toplevel
  return classifier_config.MATRIX + ("finetune",)


def command(root: str, preset: str) -> list[str]:
  """The jaxgen.main arguments of one run of the matrix."""
  args = [f"--config=configs/classifier.py:{preset}", f"--workdir={os.path.join(root, preset)}"]
  if preset.endswith("_multiview") or preset == "finetune":
    args.append(f"--config.data.data_dir={os.path.join(root, 'render_cache')}")
  if preset == "finetune":
    args.append(f"--config.init_from.workdir={os.path.join(root, FINETUNE_FROM)}")
  return args


def render_cache(root: str) -> None:
  """Render the multi-view data once (untimed), so every timed run reads the same cache."""
  from configs import classifier as classifier_config  # pylint: disable=import-outside-toplevel
  from jaxgen.classifier.main import load_data  # pylint: disable=import-outside-toplevel
  config = classifier_config.get_config(FINETUNE_FROM)
  config.data.data_dir = os.path.join(root, "render_cache")
  load_data(config, os.path.join(root, "render_cache"))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="workdirs/classifier-matrix")
  parser.add_argument("--presets", default="", help="comma-separated subset (default: all)")
  args = parser.parse_args(argv)
  every = matrix_presets()
  presets = tuple(p for p in args.presets.split(",") if p) or every
  unknown = [p for p in presets if p not in every]
  if unknown:
    print(f"--presets: unknown {','.join(unknown)}; expected among {','.join(every)}",
          file=sys.stderr)
    return 2
  if "finetune" in presets and FINETUNE_FROM not in presets and not paths.exists(
      os.path.join(args.root, FINETUNE_FROM, "results.json")):
    print(f"--presets: finetune continues from {FINETUNE_FROM}, which is neither listed nor "
          f"finished in {args.root}", file=sys.stderr)
    return 2
  paths.makedirs(args.root)
  render_cache(args.root)
  record_path = os.path.join(args.root, "matrix.json")
  runs = {}  # a subset rerun keeps the other presets' records
  if paths.exists(record_path):
    with paths.open(record_path) as f:
      runs = json.load(f)["runs"]
  for preset in presets:
    argv_run = command(args.root, preset)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jaxgen.main", *argv_run], check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
      print(f"[matrix] {preset} failed with exit code {done.returncode}", file=sys.stderr)
      return done.returncode
    runs[preset] = {"workdir": os.path.join(args.root, preset), "wall_seconds": round(seconds, 1),
                    "command": "python -m jaxgen.main " + " ".join(argv_run)}
    atomic_write_json(record_path, {"runs": runs})  # each finished run kept
    print(f"[matrix] {preset}: {seconds:.1f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
