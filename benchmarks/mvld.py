"""MVLD throughput: conditional generation (objects/s) and score-network training (steps/s).

Times jaxgen's jitted sampler (one lax.scan over N Euler-Maruyama steps, 4 views, 1 observed)
and training step (scan over steps) against a straightforward PyTorch implementation of the same
residual-MLP score network and sampler loop, measured in the same run when torch is importable.

  python benchmarks/mvld.py [--batch 256] [--steps 100] [--widths 1024,512,256]
  /work/torchvenv/bin/python benchmarks/mvld.py      # with the PyTorch comparison

Prints one line per measurement and the jaxgen / PyTorch ratio (higher = jaxgen faster).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import sde as sde_lib
from jaxgen.configlib import train_config
from jaxgen.mvld import masking
from jaxgen.mvld import model as mvld_model
from jaxgen.nets.score_nets import ResidualMLPScoreNet
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState


def _time(fn, repeats: int) -> float:
  fn()  # compile / warm up
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def bench_jax(args) -> dict[str, float]:
  views, latent = 4, 64
  net = ResidualMLPScoreNet(widths=args.widths)
  sde = sde_lib.get_sde("vpsde")
  spec = mvld_model.MVLDSpec(views, latent, 32, None, net, sde)
  params = net.init(jax.random.key(0), jnp.zeros((1, views * latent)), jnp.zeros((1, views)))["params"]
  z = jax.random.normal(jax.random.key(1), (args.batch, views * latent))
  observed = jnp.zeros((args.batch, views)).at[:, 0].set(1.0)
  sampler = ml_collections.ConfigDict({"name": "euler_maruyama", "num_steps": args.steps, "t_eps": 1e-3,
                                       "denoise": True})
  sample = jax.jit(lambda p, k: mvld_model.sample_latents(spec, p, k, z, observed, sampler))
  t_sample = _time(lambda: sample(params, jax.random.key(2)).block_until_ready(), args.repeats)

  cfg = ml_collections.ConfigDict({"joint_prob": 0.2, "mask_mode": "per_example", "lambda_weighting": True,
                                   "likelihood_weighting": False, "importance_sampling": False,
                                   "t_eps": 1e-3})
  tcfg = train_config(1000, args.batch, lr=1e-4)
  state = TrainState.create(params, make_optimizer(tcfg.optim, 1000), ema_decay=0.999)
  inner = 20

  @jax.jit
  def train_block(state, key):
    def body(state, k):
      grads = jax.grad(lambda p: mvld_model.diffusion_loss(spec, p, k, z, cfg)[0])(state.params)
      return state.apply_gradients(grads), None
    return jax.lax.scan(body, state, jax.random.split(key, inner))[0]

  t_train = _time(lambda: jax.block_until_ready(train_block(state, jax.random.key(3))), args.repeats)
  return {"sample_objects_per_s": args.batch / t_sample, "train_steps_per_s": inner / t_train}


def bench_torch(args) -> dict[str, float] | None:
  try:
    import torch
    from torch import nn
  except ImportError:
    return None
  torch.set_num_threads(max(1, torch.get_num_threads()))
  views, latent = 4, 64
  dim = views * latent

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
      self.e1, self.e2 = nn.Linear(views * temb // 2, temb), nn.Linear(temb, temb)
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
      freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
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

  net = Net(args.widths)
  z = torch.randn(args.batch, dim)
  observed = torch.zeros(args.batch, views)
  observed[:, 0] = 1
  keep = observed.repeat_interleave(latent, -1)

  def beta_int(t):
    return 0.1 * t + 0.5 * (20.0 - 0.1) * t ** 2

  @torch.no_grad()
  def sample():
    x = torch.randn_like(z) * (1 - keep) + z * keep
    ts = torch.linspace(1.0, 1e-3, args.steps + 1)
    for i in range(args.steps):
      t, dt = ts[i], ts[i + 1] - ts[i]
      std = torch.sqrt(1 - torch.exp(-beta_int(t)))
      beta = 0.1 + t * (20.0 - 0.1)
      tau = t * (1 - observed)
      score = -net(x, tau) / std
      drift = -0.5 * beta * x - beta * score
      x = x + drift * dt + torch.sqrt(beta * -dt) * torch.randn_like(x)
      x = x * (1 - keep) + z * keep
    return x

  t_sample = _time(sample, args.repeats)
  opt = torch.optim.Adam(net.parameters(), lr=1e-4)
  inner = 20

  def train_block():
    for _ in range(inner):
      t = torch.rand(args.batch) * (1 - 1e-3) + 1e-3
      obs = (torch.rand(args.batch, views) < 0.5).float()
      m = (1 - obs).repeat_interleave(latent, -1)
      mean = torch.exp(-0.5 * beta_int(t))[:, None]
      std = torch.sqrt(1 - mean ** 2)
      eps = torch.randn_like(z)
      xt = (mean * z + std * eps) * m + z * (1 - m)
      loss = ((net(xt, t[:, None] * (1 - obs)) - eps) ** 2 * m).mean()
      opt.zero_grad()
      loss.backward()
      opt.step()

  t_train = _time(train_block, args.repeats)
  return {"sample_objects_per_s": args.batch / t_sample, "train_steps_per_s": inner / t_train,
          "threads": torch.get_num_threads()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=100, help="sampler steps")
  parser.add_argument("--widths", type=lambda s: tuple(int(w) for w in s.split(",")), default=(1024, 512, 256))
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}); "
        f"batch {args.batch}, {args.steps} sampler steps, widths {args.widths}, 4 views x 64 latents")
  ours = bench_jax(args)
  for k, v in ours.items():
    print(f"jaxgen  {k}: {v:.2f}")
  ref = bench_torch(args)
  if ref is None:
    print("torch not importable: no PyTorch comparison in this run")
    return
  for k in ("sample_objects_per_s", "train_steps_per_s"):
    print(f"pytorch {k}: {ref[k]:.2f} (threads {ref['threads']})  ratio jaxgen/pytorch: {ours[k] / ref[k]:.2f}")


if __name__ == "__main__":
  main()
