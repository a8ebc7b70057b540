"""Classifier training throughput: jaxgen's jitted train step vs an equivalent PyTorch step.

  .venv/bin/python benchmarks/classifier.py                    # JAX only
  /work/torchvenv/bin/python benchmarks/classifier.py          # JAX and PyTorch, with the ratio

Both sides train torchvision's ResNet-18 layout (7x7 stride-2 stem + max-pool unless
--small_input) from scratch with Adam, softmax cross-entropy and a random horizontal flip, on
uint8 batches already in memory; images/s is measured after warm-up steps (compilation excluded)
as batch * steps / wall time, each step waiting for its result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def jax_images_per_second(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> float:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from jaxgen.classifier.config import build_model, classifier_config  # pylint: disable=import-outside-toplevel
  from jaxgen.classifier.train import initial_variables, make_step_fn  # pylint: disable=import-outside-toplevel
  from jaxgen.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from jaxgen.train.state import TrainState  # pylint: disable=import-outside-toplevel

  cfg = classifier_config(args.arch, num_steps=1000, batch_size=args.batch_size, lr=1e-3,
                          small_input=args.small_input, dtype=args.dtype)
  model = build_model(cfg, args.num_classes, image_size=args.image_size)
  variables = initial_variables(model, cfg, args.num_classes, images.shape[1:], jax.random.key(0))
  state = TrainState.create(variables["params"], make_optimizer(cfg.train.optim, 1000),
                            batch_stats=variables.get("batch_stats"))
  step = jax.jit(make_step_fn(model, cfg, args.num_classes), donate_argnums=(0,))
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels),
           "weight": jnp.ones(len(labels), jnp.float32)}
  key = jax.random.key(1)
  for i in range(args.warmup):
    state, metrics = step(state, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(args.steps):
    state, metrics = step(state, batch, jax.random.fold_in(key, 1000 + i))
    jax.block_until_ready(metrics)
  return args.batch_size * args.steps / (time.perf_counter() - start)


def torch_images_per_second(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> float:
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

  def step():
    x = x_u8.float() / 127.5 - 1.0
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())

  for _ in range(args.warmup):
    step()
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  return args.batch_size * args.steps / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_classes", type=int, default=12)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--small_input", action="store_true")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), np.uint8)
  labels = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
  import jax  # pylint: disable=import-outside-toplevel
  print(f"{args.arch} {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"small_input={args.small_input}, {args.dtype}; {jax.default_backend()} "
        f"({os.cpu_count()} CPU cores visible), {args.steps} timed steps after {args.warmup} warm-up")
  jax_rate = jax_images_per_second(args, images, labels)
  print(f"jaxgen (JAX {jax.__version__}):   {jax_rate:8.1f} images/s")
  if args.no_torch:
    return
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("torch not importable: run with /work/torchvenv/bin/python for the PyTorch comparison")
    return
  torch_rate = torch_images_per_second(args, images, labels)
  print(f"PyTorch ({torch.__version__}): {torch_rate:8.1f} images/s")
  print(f"ratio jaxgen / PyTorch: {jax_rate / torch_rate:.2f}")


if __name__ == "__main__":
  main()
