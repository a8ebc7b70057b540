"""MVLD throughput: conditional generation (objects/s) and score-network training (steps/s).

Times jaxgen's jitted sampler (one lax.scan over N Euler-Maruyama steps, then the Tweedie
denoising step; 4 views x 64 latents, 1 observed) and training step (a scan over 20 steps of the
multi-time masked loss with Adam) against a straightforward PyTorch implementation of the same
score network, sampler loop and loss, measured in the same run when torch is importable, twice:
eager, and with the network compiled by `torch.compile(net)` (default mode; the sampler stays a
Python loop of compiled-network calls, and loss, backward and Adam run eagerly around the
compiled network, as a PyTorch user would write it; dynamo is reset per batch, so every batch
gets static-shape kernels, as XLA does). On a GPU both sides run there (TF32 matmuls on both,
XLA's default precision); otherwise PyTorch runs on the CPU.

Networks (--net):
  mlp       jaxgen.nets.score_nets.ResidualMLPScoreNet(widths=--widths), the default, against a
            PyTorch transcription in this file (PyTorch's own random init).
  unet_mlp  jaxgen.nets.unet_mlp.UnetMLP, the MLD authors' MLP U-Net, against
            benchmarks/torch_unet_mlp.py loaded with the same weights; sizes --init-dim,
            --dim-mults, --time-dim, --groups (defaults: the authors' size, ~70.4M parameters).

  python benchmarks/mvld.py [--net mlp] [--batch 256] [--steps 100] [--widths 1024,512,256]
  python benchmarks/mvld.py --net unet_mlp [--init-dim 1536] [--dim-mults 1,1] [--time-dim 512]
      [--groups 32] [--batch 16,256] [--train-batch 64] [--repeats 3] [--torch-threads 0]
  PYTHONPATH=. .venv-torch/bin/python benchmarks/mvld.py ...   # with the PyTorch comparison

jaxgen is compiled once per XLA:CPU route (`--routes`, default xla,eigen; jaxgen/train/xla_cpu.py:
the sampler with the route's sampling options, the training scan with its training-step
options) and printed as jaxgen[route]; other backends ignore the route.

--batch takes one or more comma-separated sampling batches (one block of lines each); training is
timed at --train-batch (default: at each sampling batch, in the same block). The paper-size run
(250 Euler-Maruyama steps, 1 observed view of 4, sampling at batch 16 and 256, training steps/s at
batch 64):

  PYTHONPATH=. .venv-torch/bin/python benchmarks/mvld.py --net unet_mlp --batch 16,256 \\
      --train-batch 64 --steps 250

Prints per batch the objects/s and steps/s of each side with the ratios jaxgen / PyTorch eager
and jaxgen / PyTorch compiled (higher = jaxgen faster), then the achieved GFLOP/s of each side,
counted analytically and identically for both: 2 x the multiply-accumulates of the Dense / Linear
layers (the sum of in x out over the flax params tree's Dense kernels) x batch per network
evaluation, N + 1 evaluations per sampled object and x3 for a training step (forward + backward);
norms, activations and the optimiser are not counted. With --ceiling, each sampling block also
times the network's Dense matmuls alone (every kernel once per evaluation on a [batch, in] input,
nothing else; jaxgen: one lax.scan over the evaluations per route, PyTorch: eager F.linear): the
rate a sampler made of these matmuls could at most reach in each framework, read against the
GFLOP/s of the whole samplers above. The first call of every measurement is
untimed (jit compilation, torch.compile, warm-up). If torch.compile fails (e.g. no C++
compiler), one line says why and the run goes on with eager.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Both frameworks may share one GPU: JAX must not preallocate most of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import ml_collections  # noqa: E402
from flax import traverse_util  # noqa: E402

from jaxgen import sde as sde_lib  # noqa: E402
from jaxgen.configlib import train_config  # noqa: E402
from jaxgen.io.report import cpu_model  # noqa: E402
from jaxgen.mvld import model as mvld_model  # noqa: E402
from jaxgen.nets.mixed_precision import COMPUTE_DTYPES  # noqa: E402
from jaxgen.nets.score_nets import ResidualMLPScoreNet  # noqa: E402
from jaxgen.nets.unet_mlp import UnetMLP  # noqa: E402
from jaxgen.train.optim import make_optimizer  # noqa: E402
from jaxgen.train.state import TrainState  # noqa: E402
from jaxgen.train.xla_cpu import sampling_compiler_options, step_compiler_options  # noqa: E402

VIEWS, LATENT = 4, 64
T_EPS = 1e-3
INNER = 20  # training steps per timed call


def _time(fn, repeats: int) -> tuple[float, float]:
  """(best seconds of `repeats` calls, seconds of the untimed first call: compile / warm up)."""
  t0 = time.perf_counter()
  fn()  # compile / warm up
  warmup = time.perf_counter() - t0
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best, warmup


def _ints(s: str) -> tuple[int, ...]:
  return tuple(int(w) for w in s.split(","))


# ---- jaxgen ---------------------------------------------------------------------------------

def build_net(args):
  dot_dtype = COMPUTE_DTYPES[args.dtype]
  if args.net == "mlp":
    return ResidualMLPScoreNet(widths=args.widths, dot_dtype=dot_dtype)
  return UnetMLP(init_dim=args.init_dim, dim_mults=args.dim_mults, time_dim=args.time_dim,
                 groups=args.groups, dot_dtype=dot_dtype)


def net_description(args) -> str:
  if args.net == "mlp":
    return f"widths {args.widths}"
  return (f"unet_mlp init_dim {args.init_dim}, dim_mults {args.dim_mults}, time_dim {args.time_dim}, "
          f"groups {args.groups}")


def dense_kernels(params) -> list:
  """The 2-D Dense kernels of a flax params tree, in its flattened order."""
  flat = traverse_util.flatten_dict(params)
  return [v for k, v in flat.items() if k[-1] == "kernel" and v.ndim == 2]


def dense_macs(params) -> int:
  """Multiply-accumulates per example of one network evaluation: sum of in x out over the Dense
  kernels of the flax params tree (every Dense of both networks acts once on each example)."""
  return sum(k.shape[0] * k.shape[1] for k in dense_kernels(params))


def num_params(params) -> int:
  return sum(v.size for v in jax.tree_util.tree_leaves(params))


def jax_sample(args, spec, params, batch: int, route: str) -> tuple[float, float]:
  """Seconds of one conditional generation of `batch` objects (and of its first call), compiled
  with the XLA:CPU route's sampling options (jaxgen/train/xla_cpu.py)."""
  z = jax.random.normal(jax.random.key(1), (batch, VIEWS * LATENT))
  observed = jnp.zeros((batch, VIEWS)).at[:, 0].set(1.0)
  sampler = ml_collections.ConfigDict({"name": "euler_maruyama", "num_steps": args.steps,
                                       "t_eps": T_EPS, "denoise": True})
  sample = jax.jit(lambda p, k, z, o: mvld_model.sample_latents(spec, p, k, z, o, sampler),
                   compiler_options=sampling_compiler_options(route))
  return _time(lambda: sample(params, jax.random.key(2), z, observed).block_until_ready(),
               args.repeats)


def jax_matmul_ceiling(args, params, batch: int, route: str) -> tuple[float, float]:
  """Seconds of `steps + 1` evaluations of the network's Dense matmuls alone at `batch` in one
  lax.scan (a scalar from each evaluation feeds the next, so none is hoisted or skipped)."""
  kernels = [k.astype(COMPUTE_DTYPES[args.dtype]) for k in dense_kernels(params)]
  inputs = [jax.random.normal(jax.random.key(i), (batch, k.shape[0]), k.dtype)
            for i, k in enumerate(kernels)]

  def matmuls(inputs, kernels):
    def evaluate(carry, _):
      outs = [jnp.dot(x + carry.astype(x.dtype), k, preferred_element_type=jnp.float32)
              for x, k in zip(inputs, kernels)]
      return sum(o[0, 0] for o in outs) * 1e-30, None

    return jax.lax.scan(evaluate, jnp.float32(0), None, length=args.steps + 1)[0]

  run = jax.jit(matmuls, compiler_options=sampling_compiler_options(route))
  return _time(lambda: run(inputs, kernels).block_until_ready(), args.repeats)


def jax_train(args, spec, params, batch: int, route: str) -> tuple[float, float]:
  """Seconds of INNER training steps at `batch` in one jitted scan (and of its first call),
  compiled with the route's training-step options."""
  z = jax.random.normal(jax.random.key(1), (batch, VIEWS * LATENT))
  cfg = ml_collections.ConfigDict({"joint_prob": 0.2, "mask_mode": "per_example", "lambda_weighting": True,
                                   "likelihood_weighting": False, "importance_sampling": False,
                                   "t_eps": T_EPS})
  tcfg = train_config(1000, batch, lr=1e-4)
  state = TrainState.create(params, make_optimizer(tcfg.optim, 1000), ema_decay=0.999)

  def train_block(state, key, z):
    def body(state, k):
      grads = jax.grad(lambda p: mvld_model.diffusion_loss(spec, p, k, z, cfg)[0])(state.params)
      return state.apply_gradients(grads), None
    return jax.lax.scan(body, state, jax.random.split(key, INNER))[0]

  train_block = jax.jit(train_block, compiler_options=step_compiler_options(route))

  return _time(lambda: jax.block_until_ready(train_block(state, jax.random.key(3), z)),
               args.repeats)


# ---- PyTorch --------------------------------------------------------------------------------

def torch_setup(threads: int):
  """(torch, device, where) or None when torch is not importable."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  torch.set_num_threads(threads or max(1, torch.get_num_threads()))
  if torch.cuda.is_available():
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32, as XLA's default precision on GPU
    return torch, torch.device("cuda"), torch.cuda.get_device_name()
  return torch, torch.device("cpu"), f"threads {torch.get_num_threads()}"


def torch_mlp(torch, widths):
  """PyTorch transcription of ResidualMLPScoreNet (its own random init)."""
  from torch import nn  # pylint: disable=import-outside-toplevel
  dim = VIEWS * LATENT

  class Block(nn.Module):
    def __init__(self, cin, w, temb):
      super().__init__()
      self.skip = nn.Linear(cin, w) if cin != w else nn.Identity()
      self.n1, self.l1 = nn.GroupNorm(min(8, cin), cin), nn.Linear(cin, w)
      self.t = nn.Linear(temb, w)
      self.n2, self.l2 = nn.GroupNorm(min(8, w), w), nn.Linear(w, w)

    def forward(self, x, e):
      h = self.l1(nn.functional.silu(self.n1(x))) + self.t(nn.functional.silu(e))
      return self.skip(x) + self.l2(nn.functional.silu(self.n2(h)))

  class Net(nn.Module):
    def __init__(self, widths, temb=128):
      super().__init__()
      self.temb = temb
      self.e1, self.e2 = nn.Linear(VIEWS * temb // 2, temb), nn.Linear(temb, temb)
      self.inp = nn.Linear(dim, widths[0])
      self.down = nn.ModuleList()
      c = widths[0]
      for w in widths:
        self.down.append(Block(c, w, temb))
        c = w
      self.mid = Block(c, widths[-1], temb)
      self.up = nn.ModuleList()
      for w in reversed(widths):
        self.up.append(Block(c + w, w, temb))
        c = w
      self.norm, self.out = nn.GroupNorm(8, c), nn.Linear(c, dim)

    def forward(self, x, tau):
      half = self.temb // 4
      freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
      a = 1000.0 * tau[..., None] * freqs
      e = torch.cat([torch.sin(a), torch.cos(a)], -1).reshape(x.shape[0], -1)
      e = self.e2(nn.functional.silu(self.e1(e)))
      h, skips = self.inp(x), []
      for b in self.down:
        h = b(h, e)
        skips.append(h)
      h = self.mid(h, e)
      for b in self.up:
        h = b(torch.cat([h, skips.pop()], -1), e)
      return self.out(nn.functional.silu(self.norm(h)))

  return Net(widths)


def torch_net(args, torch, params, device):
  if args.net == "mlp":
    net = torch_mlp(torch, args.widths)
  else:
    from benchmarks import torch_unet_mlp  # pylint: disable=import-outside-toplevel
    net = torch_unet_mlp.UnetMLP(VIEWS * LATENT, VIEWS, init_dim=args.init_dim,
                                 dim_mults=args.dim_mults, time_dim=args.time_dim,
                                 groups=args.groups)
    torch_unet_mlp.load_flax_params(net, params)  # the same weights as the jaxgen side
  return net.to(device)


def _autocast(args, torch, device):
  """--dtype bfloat16: a torch.autocast region around the whole sampling loop / training block, so
  the network's matmuls take bfloat16 operands with float32 accumulation and each weight is cast
  once per region (autocast's cache); network outputs are taken back to float32, so the sampler /
  loss arithmetic stays float32, as on the jaxgen side. float32: no region."""
  if args.dtype == "float32":
    return contextlib.nullcontext()
  return torch.autocast(device.type, dtype=torch.bfloat16)


def _beta_int(t):
  return 0.1 * t + 0.5 * (20.0 - 0.1) * t ** 2  # VPSDE, beta in [0.1, 20]


def _sync(torch, device):
  return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def torch_sample(args, torch, net, batch: int, device) -> tuple[float, float]:
  """The same sampler as jaxgen's: N Euler-Maruyama steps, clamping, a Tweedie denoising step."""
  z = torch.randn(batch, VIEWS * LATENT, device=device)
  observed = torch.zeros(batch, VIEWS, device=device)
  observed[:, 0] = 1
  keep = observed.repeat_interleave(LATENT, -1)
  ts = torch.linspace(1.0, T_EPS, args.steps + 1, device=device)
  sync = _sync(torch, device)

  @torch.no_grad()
  def sample():
    x = torch.randn_like(z) * (1 - keep) + z * keep
    with _autocast(args, torch, device):
      for i in range(args.steps):
        t, dt = ts[i], ts[i + 1] - ts[i]
        std = torch.sqrt(1 - torch.exp(-_beta_int(t)))
        beta = 0.1 + t * (20.0 - 0.1)
        tau = t * (1 - observed)
        score = -net(x, tau).float() / std
        drift = -0.5 * beta * x - beta * score
        x = x + drift * dt + torch.sqrt(beta * -dt) * torch.randn_like(x)
        x = x * (1 - keep) + z * keep
      # Tweedie at t_eps (jaxgen's denoise=True): (x + std^2 score) / mean = (x - std eps) / mean.
      t = ts[-1]
      mean = torch.exp(-0.5 * _beta_int(t))
      std = torch.sqrt(1 - mean ** 2)
      x = (x - std * net(x, t * (1 - observed)).float()) / mean
    x = x * (1 - keep) + z * keep
    sync()
    return x

  return _time(sample, args.repeats)


def torch_matmul_ceiling(args, torch, params, batch: int, device) -> tuple[float, float]:
  """Seconds of `steps + 1` evaluations of the network's Dense matmuls alone (eager F.linear)."""
  dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
  # [out, in] weights through F.linear: nn.Linear's layout and kernel, as the samplers use.
  weights = [torch.from_numpy(np.array(k).T.copy()).to(device, dtype)
             for k in dense_kernels(params)]
  inputs = [torch.randn(batch, w.shape[1], device=device, dtype=dtype) for w in weights]

  def run():
    with torch.no_grad():
      for _ in range(args.steps + 1):
        for x, w in zip(inputs, weights):
          torch.nn.functional.linear(x, w)
      _sync(torch, device)

  return _time(run, args.repeats)


def torch_train(args, torch, net, parameters, batch: int, device) -> tuple[float, float]:
  """Seconds of INNER Adam steps of the multi-time masked loss at `batch`."""
  z = torch.randn(batch, VIEWS * LATENT, device=device)
  opt = torch.optim.Adam(parameters, lr=1e-4)
  sync = _sync(torch, device)

  def train_block():
    for _ in range(INNER):
      t = torch.rand(batch, device=device) * (1 - T_EPS) + T_EPS
      obs = (torch.rand(batch, VIEWS, device=device) < 0.5).float()
      m = (1 - obs).repeat_interleave(LATENT, -1)
      mean = torch.exp(-0.5 * _beta_int(t))[:, None]
      std = torch.sqrt(1 - mean ** 2)
      eps = torch.randn_like(z)
      xt = (mean * z + std * eps) * m + z * (1 - m)
      with _autocast(args, torch, device):
        out = net(xt, t[:, None] * (1 - obs)).float()
      loss = ((out - eps) ** 2 * m).mean()
      opt.zero_grad()
      loss.backward()
      opt.step()
    sync()

  return _time(train_block, args.repeats)


def _why(e: Exception) -> str:
  lines = [s for s in str(e).splitlines() if s.strip()]
  return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


# ---- main -----------------------------------------------------------------------------------

def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--net", choices=("mlp", "unet_mlp"), default="mlp",
                      help="score network: jaxgen's residual MLP or the MLD authors' UnetMLP")
  parser.add_argument("--batch", type=_ints, default=(256,),
                      help="sampling batch(es), comma-separated, e.g. 16,256")
  parser.add_argument("--train-batch", type=int, default=None,
                      help="training batch (default: each sampling batch)")
  parser.add_argument("--steps", type=int, default=100, help="sampler steps")
  parser.add_argument("--widths", type=_ints, default=(1024, 512, 256), help="--net mlp widths")
  parser.add_argument("--init-dim", type=int, default=1536, help="--net unet_mlp width")
  parser.add_argument("--dim-mults", type=_ints, default=(1, 1), help="--net unet_mlp levels")
  parser.add_argument("--time-dim", type=int, default=512, help="--net unet_mlp time embedding")
  parser.add_argument("--groups", type=int, default=32, help="--net unet_mlp GroupNorm groups")
  parser.add_argument("--dtype", choices=tuple(COMPUTE_DTYPES), default="float32",
                      help="matmul operands of both networks (float32 accumulation either way): "
                           "jaxgen's diffusion.score_net.compute_dtype, PyTorch's autocast")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--ceiling", action="store_true",
                      help="also time the network's matmuls alone per sampling batch (see above)")
  parser.add_argument("--routes", default="xla,eigen",
                      help="XLA:CPU routes to compile jaxgen with (jaxgen/train/xla_cpu.py; one line "
                           "per route; other backends ignore the route)")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="PyTorch CPU threads (0: torch's default; 1 avoids OpenMP spin-waits on "
                           "cores another job holds)")
  args = parser.parse_args()

  sample_batches = tuple(args.batch)
  routes = args.routes.split(",")
  train_batches = sample_batches if args.train_batch is None else (args.train_batch,)
  blocks = list(dict.fromkeys(sample_batches + train_batches))

  net = build_net(args)
  spec = mvld_model.MVLDSpec(VIEWS, LATENT, 32, None, net, sde_lib.get_sde("vpsde"))
  params = net.init(jax.random.key(0), jnp.zeros((1, VIEWS * LATENT)), jnp.zeros((1, VIEWS)))["params"]
  macs = dense_macs(params)
  evals = args.steps + 1  # Euler-Maruyama steps + the Tweedie denoising step

  tsetup = torch_setup(args.torch_threads)
  ref_net = None
  compile_ok = True
  if tsetup is not None:
    torch, device, where = tsetup
    ref_net = torch_net(args, torch, params, device)
    ref_params = sum(p.numel() for p in ref_net.parameters())

  dev = jax.devices()[0]
  host = f", host CPU {cpu_model()}" if jax.default_backend() == "cpu" else ""
  for batch in blocks:
    do_sample, do_train = batch in sample_batches, batch in train_batches
    only = "" if do_sample and do_train else (" (sampling only)" if do_sample else " (training only)")
    print(f"device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}{host}); "
          f"batch {batch}, {args.steps} sampler steps, {net_description(args)}, {args.dtype} matmuls, "
          f"{VIEWS} views x {LATENT} latents{only}", flush=True)
    # rates[side] = {"sample_objects_per_s": ..., "train_steps_per_s": ...}
    rates = {}
    for route in routes:
      ours = rates[f"jaxgen[{route}]"] = {}
      if do_sample:
        t, _ = jax_sample(args, spec, params, batch, route)
        ours["sample_objects_per_s"] = batch / t
      if do_train:
        t, _ = jax_train(args, spec, params, batch, route)
        ours["train_steps_per_s"] = INNER / t
      for k, v in ours.items():
        print(f"jaxgen[{route}]  {k}: {v:.2f}", flush=True)
    jaxgen_sides = list(rates)

    if ref_net is not None:
      kinds = [("pytorch", ref_net)]
      if compile_ok:
        torch._dynamo.reset()  # fresh static-shape compilation for this batch
        kinds.append(("pytorch-compile", torch.compile(ref_net)))
      for kind, fwd in kinds:
        rates[kind] = {}
        try:
          for key, on, fn in (
              ("sample_objects_per_s", do_sample,
               lambda: torch_sample(args, torch, fwd, batch, device)),
              ("train_steps_per_s", do_train,
               lambda: torch_train(args, torch, fwd, ref_net.parameters(), batch, device))):
            if not on:
              continue
            t, warm = fn()
            r = rates[kind][key] = (batch if key.startswith("sample") else INNER) / t
            extra = "" if kind == "pytorch" else f", first call {warm:.1f}s"
            ratio = ", ".join(f"ratio {side}/{kind}: {rates[side][key] / r:.2f}"
                              for side in jaxgen_sides)
            print(f"{kind} {key}: {r:.2f} ({where}{extra})  {ratio}", flush=True)
        except Exception as e:  # pylint: disable=broad-except
          if kind == "pytorch":
            raise
          # torch.compile needs a working toolchain (C++ compiler / Triton); report, go on eager.
          print(f"pytorch-compile unavailable, eager only from here: torch.compile failed: {_why(e)}",
                flush=True)
          compile_ok = False
          torch._dynamo.reset()

    if args.ceiling and do_sample:
      for route in routes:
        t, _ = jax_matmul_ceiling(args, params, batch, route)
        rates[f"jaxgen[{route}] matmuls only"] = {"sample_objects_per_s": batch / t}
      if ref_net is not None:
        t, _ = torch_matmul_ceiling(args, torch, params, batch, device)
        rates["pytorch matmuls only"] = {"sample_objects_per_s": batch / t}

    mflop = 2 * macs / 1e6
    print(f"GFLOP/s ({num_params(params):,} parameters, 2 x {macs:,} Dense MACs = {mflop:.2f} MFLOP "
          f"per object per network evaluation; {evals} evaluations per sampled object, training x3):")
    for key, label, flop in (("sample_objects_per_s", "sample", evals * 2 * macs),
                             ("train_steps_per_s", "train ", 3 * 2 * macs * batch)):
      parts = [f"{kind} {r[key] * flop / 1e9:.2f}" for kind, r in rates.items() if key in r]
      if parts:
        print(f"  {label}  " + "  ".join(parts), flush=True)

  if ref_net is None:
    print("torch not importable: no PyTorch comparison in this run")
  elif ref_params != num_params(params):
    print(f"note: the PyTorch network has {ref_params:,} parameters, jaxgen's {num_params(params):,}")


if __name__ == "__main__":
  main()
