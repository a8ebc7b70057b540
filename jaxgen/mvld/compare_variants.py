"""Two MVLD variants over the same seeds: Table I and the sampler study side by side, as markdown.

  python -m jaxgen.mvld.compare_variants --a=ROOT_A --b=ROOT_B --labels=eps,v [--out=FILE]

ROOT/seedS are workdirs of `python -m jaxgen.main --config=configs/mvld.py --config.seed=S`
(e.g. `jaxgen.mvld.claims` roots) run with the two configs; the seeds compared are those with a
finished evaluate stage in both (its marker in stages/), the sampler study where every such seed
has finished it in both. Every cell is mean +- std (ddof 1) over the seeds; the difference
b - a is paired by seed, and a row says "b better beyond one std" only when the paired mean
difference exceeds its own std in the metric's good direction. Numbers come from each workdir's
eval/table1.json and eval/sampler_study.json, so the output is generated, never typed.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import sys

import numpy as np

from jaxgen.errors import ConfigError
from jaxgen.io import paths
from jaxgen.io.files import json_differences, read_json
from jaxgen.mvld.claims import stat_over_seeds
from jaxgen.mvld.evaluate import HIGHER_IS_BETTER, METRICS


def _seeds(root: str) -> dict[int, str]:
  found = {}
  for wd in glob.glob(os.path.join(root, "seed*")):
    match = re.fullmatch(r"seed(\d+)", os.path.basename(wd))
    # the stage marker, not the file: a workdir copied to re-run a stage keeps the old file
    if match and paths.exists(os.path.join(wd, "stages", "evaluate.json")):
      found[int(match.group(1))] = wd
  return found


def _cell(values: np.ndarray) -> str:
  stat = stat_over_seeds(values)
  std = "-" if stat["std"] is None else f"{stat['std']:.3g}"
  return f"{stat['mean']:.4g} +- {std}"


def _verdict(diff: np.ndarray, metric: str, label_b: str) -> str:
  if not np.any(diff):
    return "identical"
  if len(diff) < 2:
    return "one seed"
  gain = diff.mean() if HIGHER_IS_BETTER[metric] else -diff.mean()
  if abs(diff.mean()) <= diff.std(ddof=1):
    return "within one std"
  return f"{label_b} better beyond one std" if gain > 0 else f"{label_b} worse beyond one std"


def _rows(name: str, per_seed_a: list[dict], per_seed_b: list[dict], label_b: str) -> list[str]:
  rows = []
  for metric in METRICS:
    a = np.asarray([r[metric] for r in per_seed_a], np.float64)
    b = np.asarray([r[metric] for r in per_seed_b], np.float64)
    rows.append(f"| {name} | {metric} | {_cell(a)} | {_cell(b)} | {_cell(b - a)} | "
                f"{_verdict(b - a, metric, label_b)} |")
  return rows


_ABSENT = object()


def config_differences(config_a: dict, config_b: dict) -> list[str]:
  """`key: a -> b` for every config leaf that differs ('absent' where a run predates the key)."""
  show = lambda v: "absent" if v is _ABSENT else repr(v)  # noqa: E731
  return [f"{key}: {show(a)} -> {show(b)}"
          for key, a, b in json_differences(config_a, config_b, missing=_ABSENT)
          if key not in ("seed", "workdir")]


def compare(root_a: str, root_b: str, labels: tuple[str, str], sampler_study: bool = True) -> str:
  """The markdown comparison of the seeds both roots have evaluated (Table I, and the sampler
  study where both ran it and `sampler_study`)."""
  seeds_a, seeds_b = _seeds(root_a), _seeds(root_b)
  seeds = sorted(set(seeds_a) & set(seeds_b))
  if not seeds:
    raise ConfigError("(flag --a/--b)", f"{root_a}, {root_b}",
                      "two roots whose seed<S> workdirs finished the evaluate stage for at least "
                      "one common seed")
  la, lb = labels
  header = [f"| rows | metric | {la} | {lb} | {lb} - {la} (paired) | verdict |",
            "| --- | --- | --- | --- | --- | --- |"]
  def eval_json(wd: str, name: str) -> dict:
    return read_json(os.path.join(wd, "eval", name))

  first = eval_json(seeds_a[seeds[0]], "table1.json")
  t1 = {s: (eval_json(seeds_a[s], "table1.json")["table1"],
            eval_json(seeds_b[s], "table1.json")["table1"]) for s in seeds}
  counts = [k for k in first["table1"] if k.isdigit()]
  config_a = read_json(os.path.join(seeds_a[seeds[0]], "config.json"))
  config_b = read_json(os.path.join(seeds_b[seeds[0]], "config.json"))
  differences = config_differences(config_a, config_b) or ["nothing"]
  data = config_a["data"]
  data_text = ", ".join(f"{k}={data[k]}" for k in sorted(data) if data[k] not in ("", None))
  lines = [f"Seeds {', '.join(map(str, seeds))}; {la}: `{root_a}`, {lb}: `{root_b}`.", "",
           f"- config of {lb} against {la} (seed {seeds[0]}): " + "; ".join(
               f"`{d}`" for d in differences),
           f"- data: {data_text} (seed S renders with seed S)",
           f"- feature network (FID, coherence): {first['feature_network']}",
           f"- LPIPS: {first['lpips_network']}",
           "- cells: mean +- std (ddof 1) over the seeds; the difference is paired by seed", "",
           "Table I (every test object, each conditioning set of the size):", ""] + header
  for k in counts:
    lines += _rows(f"{k} observed", [t1[s][0][k] for s in seeds], [t1[s][1][k] for s in seeds], lb)
  study = {}
  for s in seeds if sampler_study else ():
    if all(paths.exists(os.path.join(wd, "stages", "sampler_study.json"))
           for wd in (seeds_a[s], seeds_b[s])):
      study[s] = tuple(eval_json(wd, "sampler_study.json") for wd in (seeds_a[s], seeds_b[s]))
  if study and len(study) == len(seeds):
    num_objects = study[seeds[0]][0]["num_objects"]
    study = {s: (a["study"], b["study"]) for s, (a, b) in study.items()}
    first_study = study[seeds[0]][0]
    lines += ["", f"Sampler study (the first {num_objects} test objects, "
              "each metric the mean over the observed counts, as `sampler_study` of the run):",
              ""] + header
    for sampler, by_nfe in first_study.items():
      for nfe in by_nfe:
        if all(nfe in study[s][1].get(sampler, {}) for s in seeds):
          lines += _rows(f"{sampler} NFE {nfe}", [study[s][0][sampler][nfe] for s in seeds],
                         [study[s][1][sampler][nfe] for s in seeds], lb)
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--a", required=True, help="root of the first variant's seed<S> workdirs")
  parser.add_argument("--b", required=True, help="root of the second variant's seed<S> workdirs")
  parser.add_argument("--labels", default="a,b", help="two names, comma-separated")
  parser.add_argument("--out", default="", help="write the markdown here instead of stdout")
  parser.add_argument("--no-sampler-study", action="store_true",
                      help="Table I only (e.g. when the variants differ in the default sampler, "
                      "which the study does not use)")
  args = parser.parse_args(argv)
  labels = tuple(args.labels.split(","))
  if len(labels) != 2:
    raise ConfigError("(flag --labels)", args.labels, "two names separated by a comma")
  text = compare(args.a, args.b, labels, sampler_study=not args.no_sampler_study)
  if args.out:
    # shlex.quote: labels with spaces still paste back into a shell
    command = " ".join(["python -m jaxgen.mvld.compare_variants"] +
                       [shlex.quote(a) for a in (argv or sys.argv[1:])])
    text = (f"# MVLD: {labels[0]} against {labels[1]} over seeds\n\nGenerated by `{command}`; do "
            "not edit by hand.\n\n" + text)
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
  else:
    sys.stdout.write(text)


if __name__ == "__main__":
  try:
    main()
  except ConfigError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
