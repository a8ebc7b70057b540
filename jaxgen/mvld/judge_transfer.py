"""The autoencoder ceiling under a judge of another architecture, to tell a sharper autoencoder
from one that only matches the features of the judge's own architecture.

The feature loss of `autoencoder.perceptual_weight` compares views in a ResNet-18's features, and
the judge behind coherence is a ResNet-18 too (another network: its own initialisation and
training). If the loss only taught the decoder what ResNet-18s respond to, a judge of another
architecture would not see the gain. This trains such a judge (MobileNetV3-small by default) on
each seed's training views and reports its accuracy on the real test views and on their
reconstructions by each run's autoencoder:

  python -m jaxgen.mvld.judge_transfer --runs l1=workdirs/a/seed{S} perceptual=workdirs/b/seed{S} \\
      --seeds 0,1,2 --out workdirs/judge_transfer

`{S}` is replaced by each seed; the runs of one seed must share their data (same config.data and
seed), which is checked. Writes OUT/judge_transfer.json (per seed and mean / std over seeds).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import ml_collections
import numpy as np

from jaxgen.classifier.config import classifier_config
from jaxgen.classifier.train import fit_classifier
from jaxgen.io.files import atomic_write_json, read_json
from jaxgen.io.params import load_params
from jaxgen.mvld import model as mvld_model
from jaxgen.mvld.claims import stat_over_seeds
from jaxgen.mvld.data import load_views
from jaxgen.mvld.evaluate import reconstruct_fn
from jaxgen.parallel.batching import batched_apply
from jaxgen.parallel.mesh import make_mesh

ARCHS = {  # the 2-core CPU recipe of DIMVIDA's MobileNetV3 (configs/dimvida.py), 2x the steps
    "mobilenet_v3_small": dict(num_steps=400, batch_size=64, lr=2e-3, small_input=False,
                               bn_momentum=0.9),
}


def judge_config(arch: str, num_steps: int | None = None) -> ml_collections.ConfigDict:
  kw = dict(ARCHS[arch])
  steps = kw.pop("num_steps")
  cfg = classifier_config(arch, num_steps=num_steps or steps, batch_size=kw.pop("batch_size"),
                          lr=kw.pop("lr"), **kw)
  cfg.train.optim.schedule = "cosine"
  cfg.train.checkpoint_every = cfg.train.num_steps
  return cfg


def accuracies(runs: dict[str, str], arch: str, workdir: str, seed: int,
               num_steps: int | None = None) -> dict[str, float]:
  """{'real': acc on real test views, label: acc on that run's reconstructions} for one seed."""
  configs = {label: ml_collections.ConfigDict(read_json(os.path.join(wd, "config.json")))
             for label, wd in runs.items()}
  first = next(iter(configs.values()))
  for label, cfg in configs.items():
    if cfg.data.to_dict() != first.data.to_dict() or cfg.seed != first.seed:
      raise SystemExit(f"judge_transfer: run {label!r} has other data or seed than "
                       f"{next(iter(configs))!r}; expected runs of the same data")
  data = load_views(first, runs[next(iter(runs))])  # read only: the runs are not written to
  views, labels = data["train_views"], data["train_labels"]
  judge = fit_classifier(judge_config(arch, num_steps), views, np.repeat(labels, len(views) // len(labels)),
                         data["num_classes"], workdir=workdir, name=f"{arch}_seed{seed}",
                         mesh=make_mesh(first.mesh), key=jax.random.key(seed), writer=None, verbose=False)
  test = data["test_images"]
  flat = test.reshape((-1,) + test.shape[2:])
  truth = np.repeat(data["test_labels"], test.shape[1])
  acc = lambda images: float(np.mean(judge.predict(images) == truth))  # noqa: E731
  out = {"real": acc(flat)}
  for label, wd in runs.items():
    rec = reconstruct_fn(mvld_model.build_spec(configs[label]),
                         load_params(os.path.join(wd, "models", "autoencoder.msgpack")))
    out[label] = acc(batched_apply(rec, test, 50, pad="edge").reshape(flat.shape))
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", nargs="+", required=True, help="label=WORKDIR with {S} for the seed")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--arch", default="mobilenet_v3_small", choices=sorted(ARCHS))
  parser.add_argument("--out", default="workdirs/judge_transfer")
  parser.add_argument("--judge-steps", type=int, default=None, help="default: the arch's recipe")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  runs = dict(r.split("=", 1) for r in args.runs)
  seeds = [int(s) for s in args.seeds.split(",")]
  per_seed = {}
  for seed in seeds:
    per_seed[seed] = accuracies({k: v.replace("{S}", str(seed)) for k, v in runs.items()},
                                args.arch, args.out, seed, args.judge_steps)
    print(f"[judge_transfer] seed {seed}: {per_seed[seed]}", flush=True)
  keys = list(per_seed[seeds[0]])
  summary = {key: stat_over_seeds([per_seed[s][key] for s in seeds]) for key in keys}
  gaps = {k: summary["real"]["mean"] - summary[k]["mean"] for k in keys if k != "real"}
  record = {"judge": args.arch, "judge_steps": judge_config(args.arch, args.judge_steps).train.num_steps,
            "seeds": seeds, "runs": runs, "per_seed": per_seed,
            "summary": summary, "gap_to_real_of_the_means": gaps}
  atomic_write_json(os.path.join(args.out, "judge_transfer.json"), record)
  for key in keys:
    s = summary[key]
    print(f"{args.arch} judge, {key:>12}: {s['mean']:.4f} +- {s['std'] or 0:.4f} over seeds {seeds}"
          + (f" (gap to real {gaps[key]:.4f})" if key in gaps else ""), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
