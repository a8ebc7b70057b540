"""Classifier training throughput: jaxgen's jitted train step vs an equivalent PyTorch step.

  .venv/bin/python benchmarks/classifier.py                        # JAX only
  PYTHONPATH=. .venv-torch/bin/python benchmarks/classifier.py     # and PyTorch eager + compiled

Both sides train torchvision's ResNet-18 layout (7x7 stride-2 stem + max-pool unless
--small_input) from scratch with Adam, softmax cross-entropy and a random horizontal flip, on
uint8 batches already in memory; images/s is measured after warm-up steps (compilation excluded)
as batch * steps / wall time, each step waiting for its result. jaxgen's step is timed once per
XLA:CPU convolution route (`--routes`, see `jaxgen/train/xla_cpu.py`), PyTorch's eagerly and
under `torch.compile`; every jaxgen figure is printed as a ratio to both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import devices  # noqa: E402


def jax_trainer(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray,
                route: str) -> Callable[[int], None]:
  """jaxgen's classifier step compiled with convolution route `route`; returns run(n_steps)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from jaxgen.classifier.config import build_model, classifier_config  # pylint: disable=import-outside-toplevel
  from jaxgen.classifier.train import initial_variables, make_step_fn  # pylint: disable=import-outside-toplevel
  from jaxgen.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from jaxgen.train.state import TrainState  # pylint: disable=import-outside-toplevel
  from jaxgen.train.xla_cpu import step_compiler_options, use_conv_route  # pylint: disable=import-outside-toplevel

  cfg = classifier_config(args.arch, num_steps=1000, batch_size=args.batch_size, lr=1e-3,
                          small_input=args.small_input, dtype=args.dtype)
  model = build_model(cfg, args.num_classes, image_size=args.image_size)
  variables = initial_variables(model, cfg, args.num_classes, images.shape[1:], jax.random.key(0))
  state = [TrainState.create(variables["params"], make_optimizer(cfg.train.optim, 1000),
                             batch_stats=variables.get("batch_stats"))]
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels),
           "weight": jnp.ones(len(labels), jnp.float32)}
  key = jax.random.key(1)
  # Traced and compiled now, with the route also in the environment: the im2col threshold of
  # jaxgen.nets.conv is read from it at trace time, as in a run started with that setting.
  with use_conv_route(route):
    step = jax.jit(make_step_fn(model, cfg, args.num_classes), donate_argnums=(0,),
                   compiler_options=step_compiler_options(route)).lower(
                       state[0], batch, jax.random.fold_in(key, 0)).compile()
  count = [0]

  def run(n: int) -> None:
    for _ in range(n):
      state[0], metrics = step(state[0], batch, jax.random.fold_in(key, count[0]))
      count[0] += 1
      jax.block_until_ready(metrics)

  return run


def torch_trainer(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray,
                  compiled: bool) -> Callable[[int], None]:
  """The same step in PyTorch (eager, or its model under torch.compile); returns run(n_steps)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  model = getattr(torchvision.models, args.arch)(num_classes=args.num_classes)
  if args.small_input:  # the 3x3 stride-1 stem without max-pool of jaxgen's small_input
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  model.train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  x_u8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NCHW, torch's native layout
  y = torch.from_numpy(labels.astype(np.int64))
  gen = torch.Generator().manual_seed(0)
  net = torch.compile(model) if compiled else model

  def run(n: int) -> None:
    for _ in range(n):
      x = x_u8.float() / 127.5 - 1.0
      flip = torch.rand(len(x), generator=gen) < 0.5
      x = torch.where(flip[:, None, None, None], x.flip(3), x)
      loss = torch.nn.functional.cross_entropy(net(x), y)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      float(loss.detach())

  return run


def images_per_s(run: Callable[[int], None], steps: int, batch_size: int) -> Callable[[], float]:
  """A measure for devices.interleaved_rates: images/s of `steps` steps of `run`."""
  def measure() -> float:
    start = time.perf_counter()
    run(steps)
    return batch_size * steps / (time.perf_counter() - start)
  return measure


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_classes", type=int, default=12)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--small_input", action="store_true")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--routes", default="xla,eigen",
                      help="XLA:CPU convolution routes to time (jaxgen/train/xla_cpu.py)")
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), np.uint8)
  labels = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
  print(f"{args.arch} {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"small_input={args.small_input}, {args.dtype}; {devices.jax_line()}; {args.rounds} "
        f"interleaved rounds of {args.steps} timed steps after {args.warmup} warm-up steps")
  runners: dict[str, Callable[[int], None]] = {}
  for route in args.routes.split(","):
    runners[f"jaxgen ({route})"] = jax_trainer(args, images, labels, route)
  theirs = []
  if not args.no_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      for compiled in (False, True):
        name = f"PyTorch {torch.__version__} {'torch.compile' if compiled else 'eager'}"
        runners[name] = torch_trainer(args, images, labels, compiled)
        theirs.append(name)
    except ImportError:
      print("torch not importable: run with .venv-torch/bin/python for the PyTorch comparison")
  for name, run in runners.items():  # compile and warm up every contender before any timing
    start = time.perf_counter()
    run(args.warmup)
    print(f"{name}: warm-up {args.warmup} steps {time.perf_counter() - start:.1f} s", flush=True)
  rates = devices.interleaved_rates(
      {name: images_per_s(run, args.steps, args.batch_size) for name, run in runners.items()},
      args.rounds)
  median = {name: float(np.median(r)) for name, r in rates.items()}
  for name, r in rates.items():
    print(f"{name}: median {median[name]:7.1f} images/s over {args.rounds} rounds "
          f"(each {args.steps} steps: {', '.join(f'{v:.1f}' for v in r)})")
  if not theirs:
    return
  best = max(theirs, key=median.get)
  for name in runners:
    if name in theirs:
      continue
    ratios = ", ".join(f"{median[name] / median[t]:.2f} vs {t.split()[-1]}" for t in theirs)
    print(f"ratio {name} / PyTorch: {ratios}; {median[name] / median[best]:.2f} vs the best "
          f"({best.split()[-1]}; goal >= 1.0)")


if __name__ == "__main__":
  main()
