"""Text-to-image backbone throughput: U-Net training steps/s and img2img images/s vs diffusers.

  .venv/bin/python benchmarks/t2i.py --skip_torch                 # jaxgen only, embedded size
  .venv-torch/bin/python benchmarks/t2i.py [--steps 20] [--calls 5] [--torch_threads 1]
  .venv-torch/bin/python benchmarks/t2i.py --size sd15            # GPU: SD 1.5 at 512x512, bf16
  .venv-torch/bin/python benchmarks/t2i.py --quick                # smoke test (seconds of timing)
  .venv-torch/bin/python benchmarks/t2i.py --rounds 3             # contenders timed in turns (CPU)

Sizes. `embedded` (default): the backbone of configs/t2i.py's default preset as
`jaxgen.t2i.main.backbone_config` builds it (read at run time and printed first: 32x32 images,
f=4 KL autoencoder, 8x8x4 latents, the U-Net and text-encoder widths that file sets; vocabulary
64, latent scale 1), float32 on both sides. `sd15`: `BackboneConfig.sd15()`
(U-Net 320-640-1280-1280, kl-f8 VAE, CLIP ViT-L/14 text over 77 tokens) at 512x512 images, 64x64x4
latents, bfloat16 compute on both sides; for a GPU (on CPU it is skipped unless `--force`).
Weights are random (timing only): the U-Net by `jaxgen.nets.cond_unet.init_params`, the VAE and
the text encoder N(0, 1/fan_in) kernels (0.02 for embeddings), zero biases, unit norm scales,
drawn on the host. PyTorch gets the same weights through `benchmarks/torch_t2i.py`'s exporters
into diffusers' `UNet2DConditionModel` / `AutoencoderKL` and transformers' `CLIPTextModel`,
loaded strictly.

`train`: one Adam step (lr 1e-4, b1 0.9, b2 0.999, eps 1e-8) of the U-Net alone on the DDPM
epsilon loss of `jaxgen.t2i.train.denoising_loss` (n uniform in {0..999}, fresh noise each step)
on a fixed random batch of latents (B = 64 embedded / 8 sd15, `--train_batch`) and random text
states [B, L, width]. jaxgen: one jitted call per step, `jax.value_and_grad` + `optax.adam`, U-Net
params and Adam state donated; bfloat16 is the U-Net's compute dtype over float32 params.
PyTorch: the same loss, `torch.optim.Adam` (fused on CUDA), eager or `torch.compile(unet)`;
bfloat16 is `torch.autocast` over float32 params (the same mixed precision). steps/s = timed
steps / wall time, waiting for the last loss.

`img2img`: a batch of 8 images (`--batch`) with 25 DPM-Solver++(2M) steps (`--sampler_steps`),
classifier-free guidance 7.5 and strength 1.0 (`--strength`). jaxgen:
`jaxgen.t2i.sampling.image_to_image`, one compiled call (VAE posterior sample, text encoding of
the prompt and empty-prompt token ids, the 25-step scan on the doubled batch, VAE decode), and
the images copied to the host; bfloat16 is the U-Net's compute dtype (the VAE and the text
encoder run in float32: `image_to_image` takes no dtype for them). PyTorch: the CLIP text model
on the same token ids, then diffusers' `StableDiffusionImg2ImgPipeline`
(`DPMSolverMultistepScheduler`, prompt_embeds / negative_prompt_embeds, output_type='np', so the
images reach the host too),
eager or with `pipe.unet = torch.compile(pipe.unet)`; bfloat16 is every module `.to(bfloat16)`.
images/s = batch x timed calls / wall time. With strength < 1 diffusers runs int(25 s) steps
while jaxgen's scan still runs 25 (per-example start indices are masked), so 1.0 is the like-for-
like setting.

On CPU jaxgen is timed once per XLA:CPU route (`--routes`, default xla,eigen;
jaxgen/train/xla_cpu.py): the training step compiled with the route's step options, as
`jaxgen.train.loop` compiles it, img2img with its sampling options, as `sampling_jit` does;
other backends ignore the route and time jaxgen once.

By default each contender is built, warmed up, timed once and freed before the next (at SD 1.5
size a GPU holds one training contender at a time); `--rounds R` (R > 1) builds and warms up all of
them first and then times them in turns over R rounds, reporting medians, so that a slow spell of
a shared machine (or work left running by another contender) lands on all of them: on a shared
CPU the sequential figures have moved by up to 40% between runs (benchmarks/RESULTS.md).

The warm-up (compilation included) is timed apart: `--warmup` training steps and
`--warmup_calls` img2img calls. GPU when jax / torch see one (torch on CUDA when available),
else CPU; float32 on a GPU is TF32 matmuls on both sides (XLA's default, torch's 'high'
precision). Goal (issue 14): jaxgen >= 1.3x the best PyTorch on a GPU, bf16 both sides.
"""

from __future__ import annotations

import argparse
import functools
import gc
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

GOAL = 1.3  # jaxgen throughput over the best PyTorch throughput, on a GPU, bf16 both sides
SIZES = ("embedded", "sd15")
WORKLOADS = ("train", "img2img")
TORCH_MODES = ("eager", "compile")
ROUTES = ("xla", "eigen")  # jaxgen.train.xla_cpu.COMPILER_OPTIONS
EMBEDDED_VOCAB = 64
LR = 1e-4


def backbone(size: str, image_size: int | None):
  """(BackboneConfig, image side) of a benchmark size."""
  from jaxgen.t2i import backbone as bb  # pylint: disable=import-outside-toplevel

  if size == "sd15":
    config = bb.BackboneConfig.sd15()
  else:
    from configs.t2i import get_config  # pylint: disable=import-outside-toplevel
    from jaxgen.t2i.main import backbone_config  # pylint: disable=import-outside-toplevel

    config = backbone_config(get_config(), EMBEDDED_VOCAB)
  return config, image_size or config.image_size


def random_params(config, seed: int = 0) -> dict[str, Any]:
  """Host (numpy) variables {'unet', 'vae', 'text'} as `init_backbone` lays them out, drawn
  without compiling any init (see the module docstring for the distributions)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from jaxgen.nets import cond_unet  # pylint: disable=import-outside-toplevel
  from jaxgen.nets.kl_autoencoder import KLAutoencoder  # pylint: disable=import-outside-toplevel
  from jaxgen.nets.text_encoder import TextEncoder  # pylint: disable=import-outside-toplevel

  key = jax.random.key(seed)
  size = config.image_size
  shapes = {
      "vae": jax.eval_shape(KLAutoencoder(config.vae).init, key,
                            jnp.zeros((1, size, size, config.vae.in_channels))),
      "text": jax.eval_shape(TextEncoder(config.text).init, key,
                             jnp.zeros((1, config.text.max_length), jnp.int32))}
  rng = np.random.default_rng(seed)

  def draw(path, s) -> np.ndarray:
    leaf = path[-1].key
    if leaf == "bias":
      return np.zeros(s.shape, np.float32)
    if leaf == "scale":
      return np.ones(s.shape, np.float32)
    std = math.prod(s.shape[:-1]) ** -0.5 if leaf == "kernel" else 0.02
    return rng.standard_normal(s.shape, dtype=np.float32) * np.float32(std)

  out = jax.tree_util.tree_map_with_path(draw, shapes)
  unet = cond_unet.init_params(config.unet, jax.random.fold_in(key, 1))
  out["unet"] = {"params": jax.tree.map(np.asarray, unet)}
  return out


def make_data(args: argparse.Namespace, config, image_size: int) -> dict[str, np.ndarray]:
  """Random inputs: latents and text states for training; images in [-1, 1] (NHWC) and token
  ids (prompts, and one empty-prompt row repeated) for img2img."""
  rng = np.random.default_rng(1)
  f = config.vae.downsample_factor
  lat = (image_size // f, image_size // f, config.vae.embed_dim)
  t = config.text
  return {
      "x0": rng.standard_normal((args.train_batch,) + lat, dtype=np.float32),
      "context": rng.standard_normal((args.train_batch, t.max_length, t.width), dtype=np.float32),
      "images": rng.uniform(-1, 1, (args.batch, image_size, image_size, 3)).astype(np.float32),
      "ids": rng.integers(0, t.vocab_size, (args.batch, t.max_length)).astype(np.int32),
      "uncond_ids": np.repeat(rng.integers(0, t.vocab_size, (1, t.max_length)), args.batch,
                              0).astype(np.int32),
  }


# ---- jaxgen -----------------------------------------------------------------------------------

def jax_train(args: argparse.Namespace, config, params: dict, data: dict) -> devices.Contender:
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from jaxgen.t2i import backbone as bb  # pylint: disable=import-outside-toplevel
  from jaxgen.t2i.train import denoising_loss  # pylint: disable=import-outside-toplevel
  from jaxgen.train.xla_cpu import step_compiler_options  # pylint: disable=import-outside-toplevel

  dtype = _jax_dtype(args.dtype)
  opt = optax.adam(LR)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2), compiler_options=step_compiler_options())
  def step(p, opt_state, key, x0, context):
    key, k_loss = jax.random.split(key)

    def loss_fn(p):
      def apply(x, n, c):
        return bb.unet_apply({"params": p}, config, x, n, c, dtype=dtype,
                             attention_impl=args.attention_impl)
      return denoising_loss(apply, config, x0, context, k_loss)

    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = opt.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, key, loss

  p = jax.device_put(params["unet"]["params"])
  state = (p, opt.init(p), jax.random.key(2))
  x0, context = jax.device_put((data["x0"], data["context"]))

  def run(n: int) -> None:
    nonlocal state
    loss = None
    for _ in range(n):
      *new, loss = step(*state, x0, context)
      state = tuple(new)
    jax.block_until_ready((state, loss))

  def close() -> None:
    nonlocal state
    state = None

  return devices.Contender(run, args.warmup, args.steps, 1, close)


def jax_img2img(args: argparse.Namespace, config, params: dict, data: dict) -> devices.Contender:
  import jax  # pylint: disable=import-outside-toplevel

  from jaxgen.t2i.sampling import image_to_image  # pylint: disable=import-outside-toplevel
  from jaxgen.t2i.schedules import SamplerSpec  # pylint: disable=import-outside-toplevel

  dtype = _jax_dtype(args.dtype)
  spec = SamplerSpec(name="dpmpp_2m", num_steps=args.sampler_steps)
  held = {"variables": jax.device_put(params)}
  images, ids, uncond = jax.device_put((data["images"], data["ids"], data["uncond_ids"]))
  key = [jax.random.key(3)]

  def run(n: int) -> None:
    for _ in range(n):
      key[0], k = jax.random.split(key[0])
      out = image_to_image(held["variables"], config, spec, k, images, args.strength, ids,
                           uncond, args.guidance_scale, dtype=dtype,
                           attention_impl=args.attention_impl)
      np.asarray(out)  # to the host, as diffusers' output_type='np'

  return devices.Contender(run, args.warmup_calls, args.calls, args.batch, held.clear)


def _jax_dtype(name: str):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


# ---- PyTorch ----------------------------------------------------------------------------------

def _torch_device():
  import torch  # pylint: disable=import-outside-toplevel

  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
  import torch  # pylint: disable=import-outside-toplevel

  if device.type == "cuda":
    torch.cuda.synchronize()


def _release() -> None:
  import torch  # pylint: disable=import-outside-toplevel

  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def torch_train(args: argparse.Namespace, config, params: dict, data: dict,
                compiled: bool) -> devices.Contender:
  import torch  # pylint: disable=import-outside-toplevel

  from benchmarks import torch_t2i as tt  # pylint: disable=import-outside-toplevel

  device = _torch_device()
  torch.manual_seed(0)
  unet = tt.build_unet(config, params["unet"]["params"], device)
  step = tt.UNetTrainStep(unet, config, lr=LR, compile=compiled, compile_mode=args.compile_mode,
                          autocast_dtype=torch.bfloat16 if args.dtype == "bfloat16" else None)
  # NCHW latents, [B, L, width] states; on the device once.
  x0 = torch.from_numpy(data["x0"]).permute(0, 3, 1, 2).contiguous().to(device)
  context = torch.from_numpy(data["context"]).to(device)

  held = {"step": step}
  del step, unet

  def run(n: int) -> None:
    loss = None
    for _ in range(n):
      loss = held["step"](x0, context)
    float(loss)  # waits for the device
    _sync(device)

  def close() -> None:
    held.clear()
    _release()

  return devices.Contender(run, args.warmup, args.steps, 1, close)


def torch_img2img(args: argparse.Namespace, config, params: dict, data: dict,
                  compiled: bool) -> devices.Contender:
  import torch  # pylint: disable=import-outside-toplevel

  from benchmarks import torch_t2i as tt  # pylint: disable=import-outside-toplevel

  device = _torch_device()
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  torch.manual_seed(0)
  pipe = tt.Img2Img(tt.build_unet(config, params["unet"]["params"], device),
                    tt.build_vae(config, params["vae"], device),
                    tt.build_text_encoder(config, params["text"], device), config, dtype=dtype,
                    compile=compiled, compile_mode=args.compile_mode)
  # The pipeline takes NCHW images in [0, 1] and normalises them to [-1, 1] itself.
  images = torch.from_numpy((data["images"] + 1) / 2).permute(0, 3, 1, 2).contiguous().to(device)
  ids = torch.from_numpy(data["ids"]).long().to(device)
  uncond = torch.from_numpy(data["uncond_ids"]).long().to(device)

  held = {"pipe": pipe}
  del pipe

  def run(n: int) -> None:
    for _ in range(n):
      held["pipe"](images, ids, uncond, strength=args.strength, num_steps=args.sampler_steps,
                   guidance_scale=args.guidance_scale)  # numpy on the host: synchronous

  def close() -> None:
    held.clear()
    _release()

  return devices.Contender(run, args.warmup_calls, args.calls, args.batch, close)


# ---- driver -----------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str = "10.2f") -> str:
  return format(v, spec) if v is not None else format("n/a", ">" + spec.split(".")[0])


def _csv(choices: tuple[str, ...]):
  def parse(s: str) -> tuple[str, ...]:
    items = tuple(x for x in s.split(",") if x)
    bad = [x for x in items if x not in choices]
    if bad or not items:
      raise argparse.ArgumentTypeError(f"{s!r}: comma-separated values from {choices}")
    return items
  return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=SIZES, default="embedded")
  parser.add_argument("--force", action="store_true", help="run --size sd15 without a GPU")
  parser.add_argument("--what", type=_csv(WORKLOADS), default=WORKLOADS,
                      help="comma-separated workloads: train,img2img")
  parser.add_argument("--steps", type=int, default=20, help="timed training steps per side")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed training steps first (compilation)")
  parser.add_argument("--calls", type=int, default=None,
                      help="timed img2img calls (batches) per side (default 10 embedded, 3 sd15)")
  parser.add_argument("--warmup_calls", type=int, default=1,
                      help="untimed img2img calls first (compilation)")
  parser.add_argument("--train_batch", type=int, default=None,
                      help="latents per training step (default 64 embedded, 8 sd15)")
  parser.add_argument("--batch", type=int, default=8, help="images per img2img call")
  parser.add_argument("--sampler_steps", type=int, default=25, help="DPM-Solver++ steps")
  parser.add_argument("--strength", type=float, default=1.0, help="img2img strength in (0, 1]")
  parser.add_argument("--guidance_scale", type=float, default=7.5)
  parser.add_argument("--image_size", type=int, default=None,
                      help="image side (default: 32 embedded, 512 sd15)")
  parser.add_argument("--attention_impl", choices=("jnp", "dot_product_attention"), default="jnp",
                      help="jaxgen's attention: einsum+softmax, or jax.nn.dot_product_attention "
                           "(fused kernels on GPU; diffusers uses torch's SDPA)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="compute dtype of both sides (default float32 embedded, bfloat16 sd15)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: 2 timed steps / 1 call after 1 warm-up, 5 sampler steps")
  parser.add_argument("--torch_modes", type=_csv(TORCH_MODES), default=TORCH_MODES,
                      help="comma-separated PyTorch variants: eager,compile")
  parser.add_argument("--compile_mode", default=None,
                      help="torch.compile mode (default, reduce-overhead, max-autotune)")
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="PyTorch CPU threads (0: all cores; 1 avoids OpenMP spin-waits on "
                           "cores another job holds)")
  parser.add_argument("--skip_torch", action="store_true", help="jaxgen only (no torch needed)")
  parser.add_argument("--rounds", type=int, default=1,
                      help="1: each contender built, timed once and freed in turn; R > 1: all "
                           "built first, then timed in turns over R rounds (medians; needs every "
                           "contender's weights in memory at once)")
  parser.add_argument("--routes", type=_csv(ROUTES), default=ROUTES,
                      help="XLA:CPU routes to time jaxgen with (jaxgen/train/xla_cpu.py; CPU only)")
  args = parser.parse_args(argv)
  sd15 = args.size == "sd15"
  if args.quick:
    args.steps, args.warmup, args.calls, args.warmup_calls = 2, 1, 1, 1
    args.sampler_steps = min(args.sampler_steps, 5)
  args.calls = args.calls or (3 if sd15 else 10)
  args.train_batch = args.train_batch or (8 if sd15 else 64)
  args.dtype = args.dtype or ("bfloat16" if sd15 else "float32")
  if not 0 < args.strength <= 1:
    parser.error(f"--strength {args.strength}: expected a number in (0, 1]")
  for key in ("steps", "calls", "batch", "train_batch", "sampler_steps", "rounds"):
    if getattr(args, key) < 1:
      parser.error(f"--{key} {getattr(args, key)}: expected a positive integer")
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel

  on_gpu = jax.default_backend() == "gpu"
  if args.size == "sd15" and not on_gpu and not args.force:
    print("--size sd15 is for a GPU; skipped on "
          f"{jax.default_backend()} (--force runs it anyway, slowly)")
    return
  torch = None
  if not args.skip_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      import diffusers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      torch = None

  config, image_size = backbone(args.size, args.image_size)
  f = config.vae.downsample_factor
  c = config.unet
  v = config.vae
  print(f"T2I backbone '{args.size}': {image_size}x{image_size} images, VAE "
        f"{tuple(v.ch * m for m in v.ch_mult)} x{v.num_res_blocks}, "
        f"{image_size // f}x{image_size // f}x{v.embed_dim} latents, U-Net "
        f"{tuple(c.block_out_channels)} x{c.layers_per_block} ({c.heads[0]} heads), text "
        f"{config.text.layers}x{config.text.width} over {config.text.max_length} tokens; "
        f"compute {args.dtype}")
  print(f"train: batch {args.train_batch}, Adam lr {LR}, {args.steps} timed steps after "
        f"{args.warmup} warm-up | img2img: batch {args.batch}, {args.sampler_steps} DPM-Solver++ "
        f"steps, guidance {args.guidance_scale}, strength {args.strength}, {args.calls} timed "
        f"calls after {args.warmup_calls} warm-up")
  print(f"jaxgen: {devices.jax_line()}")
  if torch is not None:
    import diffusers  # pylint: disable=import-outside-toplevel

    where = devices.setup_torch(torch, args.torch_threads)
    print(f"PyTorch {torch.__version__} (diffusers {diffusers.__version__}) on {where}")
  else:
    why = ("--skip_torch" if args.skip_torch
           else "torch / diffusers not importable; run with .venv-torch/bin/python")
    print(f"PyTorch reference unavailable ({why})")

  t0 = time.perf_counter()
  params = random_params(config)
  data = make_data(args, config, image_size)
  print(f"random weights drawn in {time.perf_counter() - t0:.1f}s", flush=True)
  units = {"train": "steps/s", "img2img": "images/s"}
  jax_fns = {"train": jax_train, "img2img": jax_img2img}
  torch_fns = {"train": torch_train, "img2img": torch_img2img}
  from jaxgen.train.xla_cpu import use_conv_route  # pylint: disable=import-outside-toplevel

  routes = args.routes if jax.default_backend() == "cpu" else args.routes[:1]
  rows = []  # one per workload and jaxgen route; the PyTorch numbers are shared by the routes
  for what in args.what:
    # jaxgen's route is read when its functions are traced and, for sampling, when they are called:
    # each of its contenders runs in its route's context.
    # PyTorch's may fail (torch.compile needs a working toolchain: C++ compiler / Triton): reported,
    # then the run goes on.
    contenders = [devices.Entry(f"torch {kind}",
                                functools.partial(torch_fns[what], args, config, params, data,
                                                  compiled=kind == "compile"), optional=True)
                  for kind in TORCH_MODES if torch is not None and kind in args.torch_modes]
    contenders += [devices.Entry(f"jaxgen [{route}]",
                                 functools.partial(jax_fns[what], args, config, params, data),
                                 functools.partial(use_conv_route, route)) for route in routes]
    results = devices.time_contenders(what, contenders, units[what], args.rounds,
                                      on_failure=_release if torch is not None else None)
    torch_rates = {kind: results.get(f"torch {kind}") for kind in TORCH_MODES}
    rows += [{"what": what, "route": route, "jax": results[f"jaxgen [{route}]"], **torch_rates}
             for route in routes]

  rate = lambda r: r["rate"] if r else None  # noqa: E731
  ratio = lambda a, b: a / b if a and b else None  # noqa: E731
  print()
  print(f"{'workload':>8} {'route':>6} {'unit':>9} {'jaxgen':>10} {'eager':>10} {'compile':>10} "
        f"{'/eager':>8} {'/compile':>9}   (ratio = jaxgen / torch; route: JAXGEN_XLA_CPU_CONV)")
  for row in rows:
    j, e, cc = rate(row["jax"]), rate(row["eager"]), rate(row["compile"])
    print(f"{row['what']:>8} {row['route']:>6} {units[row['what']]:>9} {_fmt(j)} {_fmt(e)} "
          f"{_fmt(cc)} {_fmt(ratio(j, e), '8.2f')} {_fmt(ratio(j, cc), '9.2f')}")
  print("warm-up / compile seconds (excluded above):")
  for row in rows:
    parts = [f"jaxgen [{row['route']}] {row['jax']['warmup_s']:.1f}"]
    parts += [f"torch {k} {row[k]['warmup_s']:.1f}" for k in TORCH_MODES if row[k]]
    print(f"  {row['what']}: " + ", ".join(parts))
  print(f"goal >= {GOAL}x the best PyTorch on a GPU, bf16 both sides"
        + ("" if on_gpu and args.dtype == "bfloat16" else
           f" (this run: {jax.default_backend()}, {args.dtype}: ratios for information)"))
  if torch is None:
    print("  PyTorch reference unavailable: no ratio in this run")
    return
  for row in rows:
    best = max((rate(row[k]) for k in TORCH_MODES if row[k]), default=None)
    if best is None:
      print(f"  {row['what']}: no PyTorch number")
      continue
    r = rate(row["jax"]) / best
    verdict = ("met" if r >= GOAL else "not met") if on_gpu else "n/a on CPU"
    print(f"  {row['what']} [{row['route']}]: {r:.2f}x the best PyTorch "
          f"({best:.2f} {units[row['what']]}): "
          f"{verdict}")


if __name__ == "__main__":
  main()
