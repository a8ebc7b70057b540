"""jaxgen.nets.pooling.max_pool against flax.linen.max_pool (the reference), and the XLA:CPU
convolution route of the training loop (jaxgen.train.xla_cpu).

max_pool: values and gradients bit for bit (tolerance 0), eager and jitted, with many ties (a
ReLU's zeros, values rounded to halves). The 'eigen' route: the same sums in another library, so
gradients agree with the default route to 1e-5 relative.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import main as jaxgen_main
from jaxgen.errors import EnvironmentSettingError
from jaxgen.nets.pooling import max_pool
from jaxgen.train import xla_cpu

POOL_CASES = [  # (shape, window, strides, padding)
    ((3, 9, 9, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool, odd size
    ((2, 16, 16, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 6, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),  # non-overlapping
    ((2, 7, 7, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),  # stride 1: up to 9 windows share an input
    ((1, 6, 9, 2), (3, 2), (2, 1), ((0, 1), (1, 0))),  # non-square, asymmetric padding
]


def _tied_input(shape):
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape))
  return jnp.round(x * 2) / 2  # many equal values per window


@pytest.mark.parametrize("shape,window,strides,padding,jit",
                         [c + (True,) for c in POOL_CASES] + [POOL_CASES[0] + (False,)])
def test_max_pool_equals_flax_values_and_gradients_bit_for_bit(shape, window, strides, padding, jit):
  x = _tied_input(shape)
  ref = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
  ours = lambda x: max_pool(x, window, strides, padding)
  wrap = jax.jit if jit else (lambda f: f)
  y_ref, y = wrap(ref)(x), wrap(ours)(x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  g = jax.random.normal(jax.random.key(1), y_ref.shape)
  dx_ref = wrap(lambda x: jax.vjp(ref, x)[1](g)[0])(x)
  dx = wrap(lambda x: jax.vjp(ours, x)[1](g)[0])(x)
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_ref))
  assert float(jnp.abs(dx).sum()) > 0


def test_max_pool_refuses_non_image_input():
  with pytest.raises(ValueError, match="NHWC"):
    max_pool(jnp.zeros((4, 4, 3)), (2, 2), (2, 2), ((0, 0), (0, 0)))


def test_conv_route_reads_the_environment(monkeypatch):
  monkeypatch.delenv(xla_cpu.ENV_VAR, raising=False)
  assert xla_cpu.conv_route() == "xla" and xla_cpu.step_compiler_options() is None
  monkeypatch.setenv(xla_cpu.ENV_VAR, "eigen")
  assert xla_cpu.conv_route() == "eigen"
  assert "xla_cpu_experimental_ynn_fusion_type" in xla_cpu.step_compiler_options()
  # Sampling keeps YNNPACK for dots only (its fused GroupNorm sums are the slow part there).
  assert xla_cpu.sampling_compiler_options() == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  assert xla_cpu.sampling_compiler_options("xla") is None
  monkeypatch.setenv(xla_cpu.ENV_VAR, "onednn")
  with pytest.raises(EnvironmentSettingError, match="JAXGEN_XLA_CPU_CONV='onednn': expected xla or eigen"):
    xla_cpu.conv_route()


def test_bad_conv_route_exits_2_before_anything_is_written(capsys, tmp_path, monkeypatch):
  monkeypatch.setenv(xla_cpu.ENV_VAR, "fast")
  code = jaxgen_main.run(["jaxgen.main", "--config=configs/classifier.py:tiny", f"--workdir={tmp_path}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "JAXGEN_XLA_CPU_CONV='fast'" in err[0], err
  assert not any(tmp_path.iterdir())


def test_eigen_route_gives_the_same_gradients_to_float_rounding():
  """A two-stage ResNet on 8x8 inputs (stem convolution to 4x4 and pool, a block on 2x2 maps, a
  stride-2 block into 1x1 maps, batch norm), traced and compiled each way: the eigen route's
  stored-input gradient (stem), im2col (2x2) and dense products (1x1) of jaxgen/nets/conv.py."""
  from jaxgen.nets.resnet import ResNet  # pylint: disable=import-outside-toplevel
  model = ResNet(stage_sizes=(1, 1), bottleneck=False, num_classes=5, width=4, small_input=False)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(logits ** 2)

  grads = {}
  for route in xla_cpu.COMPILER_OPTIONS:
    with xla_cpu.use_conv_route(route):
      grads[route] = jax.jit(jax.grad(loss), compiler_options=xla_cpu.step_compiler_options(
          route))(variables["params"])
  for a, b in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["eigen"])):
    # Batch norm over 4 values per channel on the 1x1 maps amplifies rounding (seen: 4e-5
    # relative on a -0.04 gradient); 1e-4 relative is still far below any real difference.
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_eigen_route_generates_the_same_views_to_float_rounding(monkeypatch):
  """MVLD's generation (encoder, 4 Euler-Maruyama steps of the score network, decoder: the tiny
  preset's networks at random weights) compiled by `make_generator` under each route: the same
  images up to float rounding (at most one grey level here and there; identical at this size),
  and the route's options reach the compiler (no YNNPACK fusion computes a sum under 'eigen')."""
  from configs.mvld import get_config  # pylint: disable=import-outside-toplevel
  from jaxgen.mvld import evaluate as mvld_eval  # pylint: disable=import-outside-toplevel
  from jaxgen.mvld import model as mvld_model  # pylint: disable=import-outside-toplevel
  cfg = get_config("tiny")
  spec = mvld_model.build_spec(cfg)
  size, views = cfg.data.image_size, cfg.data.num_views
  ae = spec.autoencoder.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  score = spec.score_net.init(jax.random.key(1), jnp.zeros((1, views * spec.latent_dim)),
                              jnp.zeros((1, views)))["params"]
  score = jax.tree.map(lambda p: p + 0.01, score)  # the zero-initialised output layer would hide it
  stats = mvld_model.LatentStats(jnp.zeros(spec.latent_dim), jnp.ones(spec.latent_dim))
  sampler = cfg.sampler.copy_and_resolve_references()
  sampler.update(name="euler_maruyama", num_steps=4)
  images = jax.random.randint(jax.random.key(2), (3, views, size, size, 3), 0, 256).astype(jnp.uint8)
  observed = jnp.zeros((3, views)).at[:, 0].set(1.0)
  out, ynn_sums = {}, {}
  for route in xla_cpu.SAMPLING_COMPILER_OPTIONS:
    monkeypatch.setenv(xla_cpu.ENV_VAR, route)
    generate = mvld_eval.make_generator(spec, ae, score, stats, sampler)
    out[route] = np.asarray(generate(jax.random.key(3), images, observed)).astype(int)
    hlo = generate.lower(jax.random.key(3), images, observed).compile().as_text().splitlines()
    ynn_sums[route] = sum("__ynn_fusion" in line and "reduce" in line for line in hlo)
  assert ynn_sums["xla"] > 0 and ynn_sums["eigen"] == 0, ynn_sums
  assert out["xla"].shape == out["eigen"].shape == images.shape
  assert np.abs(out["xla"] - out["eigen"]).max() <= 1
  assert np.mean(out["xla"] != out["eigen"]) < 0.01


def test_sampling_jit_compiles_per_route_and_t2i_img2img_agrees(monkeypatch):
  """`sampling_jit` (jaxgen.t2i.sampling's three jits): one compiled function per route; the
  default route compiles exactly as plain `jax.jit` (same HLO), 'eigen' with its sampling options
  (no YNNPACK fusion computes a sum); tiny-backbone img2img (VAE, text encoder, 3 DPM-Solver++
  steps with guidance, mixed strengths) gives the same images to float rounding either way, and
  the functions still work inside another jit."""
  from jaxgen.t2i import backbone as bb  # pylint: disable=import-outside-toplevel
  from jaxgen.t2i import sampling  # pylint: disable=import-outside-toplevel
  from jaxgen.t2i.schedules import SamplerSpec  # pylint: disable=import-outside-toplevel
  config = bb.BackboneConfig.tiny()
  params = bb.init_backbone(config, jax.random.key(0))
  spec = SamplerSpec(name="dpmpp_2m", num_steps=3)
  size = config.image_size
  images = jax.random.uniform(jax.random.key(1), (2, size, size, 3), minval=-1.0, maxval=1.0)
  ids = jax.random.randint(jax.random.key(2), (2, config.text.max_length), 0, 10)
  uncond = jnp.zeros_like(ids)
  args = (params, config, spec, jax.random.key(3), images, jnp.array([1.0, 0.5]), ids, uncond, 7.5)
  out, hlo = {}, {}
  # 'eigen' first: its nested sample_latents call must not be traced with compiler options (XLA
  # refuses them below the top level); traced after 'xla', jit's cache would hide that.
  for route in ("eigen", "xla"):
    monkeypatch.setenv(xla_cpu.ENV_VAR, route)
    out[route] = np.asarray(sampling.image_to_image(*args))
    jitted = sampling.image_to_image.for_route(route)
    hlo[route] = jitted.lower(*args).compile().as_text()
  plain = jax.jit(sampling.image_to_image.__wrapped__, static_argnames=(
      "config", "spec", "dtype", "attention_impl")).lower(*args).compile().as_text()
  assert hlo["xla"] == plain
  sums = {r: sum("__ynn_fusion" in line and "reduce" in line for line in h.splitlines())
          for r, h in hlo.items()}
  assert sums["xla"] > 0 and sums["eigen"] == 0, sums
  assert np.all(np.isfinite(out["xla"])) and out["xla"].shape == (2, size, size, 3)
  np.testing.assert_allclose(out["eigen"], out["xla"], atol=1e-4)
  monkeypatch.setenv(xla_cpu.ENV_VAR, "eigen")
  inside = jax.jit(lambda p, k: sampling.text_to_image(p, config, spec, k, ids, uncond, 3.0))
  assert inside(params, jax.random.key(4)).shape == (2, size, size, 3)
