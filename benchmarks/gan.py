"""Softlabel-GAN training throughput: jaxgen's G+D step vs the same step in PyTorch.

  .venv/bin/python benchmarks/gan.py                             # jaxgen only
  .venv-torch/bin/python benchmarks/gan.py [--ch 8,64] [--steps 8] [--rounds 4] [--warmup 3]
  .venv-torch/bin/python benchmarks/gan.py --torch_threads 1   # CPU shared with another job

One step = `d_steps` (here 1) D updates on 64 real images and 64 fakes (real and fake through D in
one call, hinge loss, DiffAugment 'color,translation,cutout' on both), one G update through D
with its stored spectral vectors, Adam(0, 0.999, eps 1e-6) for both, then G's EMA of parameters
and buffers: `jaxgen.softlabel_gan.train.make_step_fn` for the 'soft' variant against
`benchmarks.torch_biggan.SoftlabelGANStep`, BigGAN at 32x32 with 12 classes, G and D of width
`ch` (8: the CPU default of configs/softlabel_gan.py, 64: the paper's BigGAN CIFAR width). Both
start from jaxgen's initial weights and train on the same random uint8 images and soft labels,
put on the device once. jaxgen runs as its training loop does (`jaxgen.train.loop`: one jitted
call per step on CPU, `steps_per_call` steps fused in one lax.scan on GPU/TPU). Every contender
of a width (jaxgen per XLA:CPU convolution route, `--routes`, and per resampling, `--resample`:
'plain' upsample / pool around the convolutions as written, 'fused' the same function as one
cheaper convolution each, `gan.fused_resample`; torch eager; torch.compile, whose network is always
the plain one) is compiled and warmed up first (timed apart), then they take turns for
`--rounds` rounds of `--steps` steps; steps/s = the median over rounds of steps / wall time,
waiting for the last result. GPU when jax / torch see one (torch on
CUDA when available), else CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import devices  # noqa: E402
# Both frameworks share one GPU: JAX must not preallocate most of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

GOAL = 1.5  # jaxgen steps/s over the best PyTorch steps/s


def gan_config(args: argparse.Namespace, ch: int, fused_resample: bool = False):
  """The `gan` section of configs/softlabel_gan.py with the benchmark's width, batch, d_steps."""
  from configs.softlabel_gan import get_config  # pylint: disable=import-outside-toplevel

  cfg = get_config().gan
  cfg.update(g_ch=ch, d_ch=ch, d_steps=args.d_steps, fused_resample=fused_resample)
  cfg.train.batch_size = args.batch_size
  return cfg


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
  """Random uint8 images [d_steps * B, H, W, 3] and soft labels (softmax rows) [d_steps * B, K]."""
  rng = np.random.default_rng(0)
  n = args.batch_size * args.d_steps
  images = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), np.uint8)
  logits = 3.0 * rng.normal(size=(n, args.num_classes))
  probs = np.exp(logits - logits.max(1, keepdims=True))
  return images, (probs / probs.sum(1, keepdims=True)).astype(np.float32)


def bench_jax(args: argparse.Namespace, ch: int, images: np.ndarray, labels: np.ndarray,
              fused_resample: bool = False) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel

  from jaxgen.configlib import mesh_config  # pylint: disable=import-outside-toplevel
  from jaxgen.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from jaxgen.softlabel_gan import train as T  # pylint: disable=import-outside-toplevel
  from jaxgen.softlabel_gan.labels import VARIANTS  # pylint: disable=import-outside-toplevel
  from jaxgen.train import loop  # pylint: disable=import-outside-toplevel

  cfg = gan_config(args, ch, fused_resample)
  g, d = T.build_networks(cfg, args.num_classes, args.image_size)
  state = T.init_state(g, d, cfg, jax.random.key(0))
  # Host copies for the PyTorch side, taken before the jitted step donates the state.
  init = {"g": jax.device_get({"params": state.g_params, **state.g_stats}),
          "d": jax.device_get({"params": state.d_params, **state.d_stats})}
  mesh = mesh_lib.make_mesh(mesh_config(), devices=jax.devices()[:1])
  step_fn = T.make_step_fn(g, d, cfg, VARIANTS["soft"], 1.0)
  block = args.block or (cfg.train.steps_per_call if loop.use_scan("auto") else 1)
  batch = {"image": images, "label": labels}
  if block > 1:
    run = loop.make_multi_step(step_fn, jax.random.key(1), mesh)
    batch = jax.tree.map(lambda x: np.stack([x] * block), batch)
    batch = mesh_lib.shard_batch(batch, mesh, leading_axes=1)
  else:
    run = loop.make_single_step(step_fn, jax.random.key(1), mesh)
    batch = mesh_lib.shard_batch(batch, mesh)
  state = jax.device_put(state, mesh_lib.replicated(mesh))

  def steps(n_calls: int) -> float:
    nonlocal state
    t0 = time.perf_counter()
    for _ in range(n_calls):
      state, metrics = run(state, batch)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - t0

  warm_calls, timed_calls = max(1, math.ceil(args.warmup / block)), math.ceil(args.steps / block)
  warm_s = steps(warm_calls)
  return {"rate": lambda: timed_calls * block / steps(timed_calls), "warmup_s": warm_s,
          "warmup_steps": warm_calls * block, "block": block, "init": init, "cfg": cfg}


def bench_torch(args: argparse.Namespace, jax_result: dict[str, Any], images: np.ndarray,
                labels: np.ndarray, compiled: bool) -> dict[str, Any]:
  import torch  # pylint: disable=import-outside-toplevel

  from benchmarks import torch_biggan as tb  # pylint: disable=import-outside-toplevel

  cfg = jax_result["cfg"]
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  g = tb.Generator(args.num_classes, args.image_size, cfg.g_ch, cfg.dim_z, cfg.shared_dim,
                   cfg.hierarchical, cfg.g_attention)
  d = tb.Discriminator(args.num_classes, args.image_size, cfg.d_ch, cfg.d_attention,
                       pool_first=True)  # jaxgen's shortcut order: the same FLOPs
  tb.load_flax_variables(g, jax_result["init"]["g"])
  tb.load_flax_variables(d, jax_result["init"]["d"])
  step = tb.SoftlabelGANStep(
      g.to(device), d.to(device), num_classes=args.num_classes, dim_z=cfg.dim_z,
      d_steps=cfg.d_steps, policy=cfg.diffaugment, loss=cfg.loss, g_lr=cfg.train.optim.lr,
      d_lr=cfg.d_optim.lr, betas=(cfg.d_optim.b1, cfg.d_optim.b2), eps=cfg.d_optim.eps,
      ema_decay=cfg.train.ema_decay, ema_start=cfg.ema_start, compile=compiled,
      compile_mode=args.compile_mode if compiled else None)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)  # NCHW, once
  y = torch.from_numpy(labels).to(device)

  def steps(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      out = step(x, y)
    float(out["g_loss"])  # waits for the device
    return time.perf_counter() - t0

  warm_s = steps(max(1, args.warmup))
  return {"rate": lambda: args.steps / steps(args.steps), "warmup_s": warm_s,
          "warmup_steps": max(1, args.warmup)}


def _fmt(v: float | None, spec: str = "10.2f") -> str:
  return format(v, spec) if v is not None else format("n/a", ">" + spec.split(".")[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ch", type=lambda s: tuple(int(c) for c in s.split(",")), default=(8, 64),
                      help="comma-separated G/D widths")
  parser.add_argument("--steps", type=int, default=8, help="timed steps per contender and round")
  parser.add_argument("--rounds", type=int, default=4,
                      help="interleaved rounds; steps/s is the median over rounds")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
  parser.add_argument("--batch_size", type=int, default=64, help="real images per D step")
  parser.add_argument("--d_steps", type=int, default=1)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--num_classes", type=int, default=12)
  parser.add_argument("--block", type=int, default=0,
                      help="jaxgen steps per jitted call (0: as the training loop, "
                           "steps_per_call fused on GPU/TPU, 1 on CPU)")
  parser.add_argument("--compile_mode", default=None,
                      help="torch.compile mode (default, reduce-overhead, max-autotune)")
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="PyTorch CPU threads (0: all cores; 1 avoids OpenMP spin-waits on "
                           "cores another job holds)")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--routes", default="xla,eigen",
                      help="XLA:CPU convolution routes to time jaxgen with (jaxgen/train/xla_cpu.py)")
  parser.add_argument("--resample", default="plain,fused",
                      help="jaxgen's G upsample + conv and D conv + avg-pool: 'plain' as written, "
                           "'fused' as one cheaper conv each (gan.fused_resample; PyTorch: plain)")
  args = parser.parse_args()

  from jaxgen.train.xla_cpu import use_conv_route  # pylint: disable=import-outside-toplevel
  torch = None
  if not args.no_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      torch = None
  print(f"Softlabel-GAN step (BigGAN {args.image_size}x{args.image_size}, {args.num_classes} "
        f"classes, batch {args.batch_size} per D step, d_steps={args.d_steps}, DiffAugment, "
        f"hinge, Adam, G EMA); {args.steps} timed steps after {args.warmup} warm-up")
  print(f"jaxgen: {devices.jax_line()}")
  if torch is not None:
    where = devices.setup_torch(torch, args.torch_threads)
    print(f"PyTorch {torch.__version__} on {where}")
  else:
    why = "--no_torch" if args.no_torch else "torch not importable; run with .venv-torch/bin/python"
    print(f"PyTorch reference unavailable ({why})")

  images, labels = make_data(args)
  resample = args.resample.split(",")
  if set(resample) - {"plain", "fused"}:
    parser.error(f"--resample {args.resample!r}: expected 'plain', 'fused' or both")
  # A jaxgen contender per convolution route and resampling ('eigen+fused': both options).
  variants = {route + ("+fused" if r == "fused" else ""): (route, r == "fused")
              for route in args.routes.split(",") for r in resample}
  rows = []
  for ch in args.ch:
    contenders = {}  # every jaxgen variant and torch kind of this width, compiled and warmed up first
    for name, (route, fused) in variants.items():
      with use_conv_route(route):  # read when the step is jitted and traced (jaxgen/train/xla_cpu.py)
        ours = bench_jax(args, ch, images, labels, fused)
      contenders[name] = ours
      print(f"ch={ch}: jaxgen [{name}] warm-up {ours['warmup_steps']} steps "
            f"{ours['warmup_s']:.1f}s (block {ours['block']})", flush=True)
    if torch is not None:
      for kind in ("eager", "compile"):
        try:
          contenders[kind] = bench_torch(args, ours, images, labels, compiled=kind == "compile")
        except Exception as e:  # pylint: disable=broad-except
          # torch.compile needs a working toolchain (C++ compiler / Triton); report, go on.
          print(f"ch={ch}: torch {kind} failed: {type(e).__name__}: {str(e).splitlines()[0]}")
          continue
        print(f"ch={ch}: torch {kind} warm-up {contenders[kind]['warmup_steps']} steps "
              f"{contenders[kind]['warmup_s']:.1f}s", flush=True)
    rates = devices.interleaved_rates({name: c["rate"] for name, c in contenders.items()},
                                      args.rounds)
    for name, c in contenders.items():
      c["rates"], c["steps_per_s"] = rates[name], float(np.median(rates[name]))
      label = f"jaxgen [{name}]" if name in variants else f"torch {name}"
      print(f"ch={ch}: {label} median {c['steps_per_s']:.2f} steps/s over {args.rounds} rounds "
            f"of {args.steps} steps ({', '.join(f'{r:.2f}' for r in c['rates'])})", flush=True)
    for name in variants:
      rows.append({"ch": ch, "route": name, "jax": contenders[name],
                   "eager": contenders.get("eager"), "compile": contenders.get("compile")})

  rate = lambda r: r["steps_per_s"] if r else None  # noqa: E731
  ratio = lambda a, b: a / b if a and b else None  # noqa: E731
  print()
  print(f"{'width':>5} {'variant':>12} {'jaxgen':>10} {'eager':>10} {'compile':>10} {'/eager':>8} "
        f"{'/compile':>9}   (steps/s; ratio = jaxgen / torch; variant: JAXGEN_XLA_CPU_CONV route, "
        f"+fused: gan.fused_resample)")
  for row in rows:
    j, e, c = rate(row["jax"]), rate(row["eager"]), rate(row["compile"])
    print(f"{row['ch']:>5} {row['route']:>12} {_fmt(j)} {_fmt(e)} {_fmt(c)} "
          f"{_fmt(ratio(j, e), '8.2f')} {_fmt(ratio(j, c), '9.2f')}")
  print("warm-up / compile seconds (excluded above):")
  for row in rows:
    parts = [f"jaxgen [{row['route']}] {row['jax']['warmup_s']:.1f}"]
    parts += [f"torch {k} {row[k]['warmup_s']:.1f}" for k in ("eager", "compile") if row[k]]
    print(f"  width {row['ch']}: " + ", ".join(parts))
  print(f"goal >= {GOAL}x the best PyTorch")
  if torch is None:
    print("  PyTorch reference unavailable: no ratio in this run")
    return
  for row in rows:
    best = max((rate(row[k]) for k in ("eager", "compile") if row[k]), default=None)
    if best is None:
      print(f"  width {row['ch']}: no PyTorch number")
      continue
    r = rate(row["jax"]) / best
    print(f"  width {row['ch']} [{row['route']}]: {r:.2f}x the best PyTorch ({best:.2f} steps/s): "
          f"{'met' if r >= GOAL else 'not met'}")


if __name__ == "__main__":
  main()
