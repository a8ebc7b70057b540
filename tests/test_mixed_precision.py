"""bfloat16 matmuls with float32 accumulation (jaxgen.nets.mixed_precision) in the score networks.

References: float32 numbers computed by hand with NumPy from the bfloat16-rounded operands
(tolerance 1e-6 relative: the products of two bfloat16 numbers are exact in float32, only the
float32 sum order differs); the float32 networks (tolerance 3% relative on the output: bfloat16
keeps 8 mantissa bits, measured ~0.6-1.4% on these shapes). The float32 setting is flax's own
Dense.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.mvld import main as mvld_main
from jaxgen.mvld import model as mvld_model
from jaxgen.nets.mixed_precision import cast_kernels, dense_in
from jaxgen.nets.score_nets import ResidualMLPScoreNet
from jaxgen.nets.unet_mlp import UnetMLP


def test_bfloat16_dense_rounds_operands_and_accumulates_in_float32():
  x = np.asarray(jax.random.normal(jax.random.key(0), (5, 300)), np.float32)
  layer = dense_in(jnp.bfloat16)(7, bias_init=nn.initializers.normal(1.0))
  params = layer.init(jax.random.key(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(nn.Dense(7).init(jax.random.key(1), x))
  out = layer.apply(params, x)
  assert out.dtype == jnp.float32
  rounded = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)
  kernel, bias = (np.asarray(params["params"][k]) for k in ("kernel", "bias"))
  np.testing.assert_allclose(np.asarray(out), rounded(x) @ rounded(kernel) + bias, rtol=1e-6, atol=1e-5)
  assert dense_in(jnp.float32) is nn.Dense  # float32: flax's own layer, unchanged numbers


def test_cast_kernels_touches_matrices_only():
  params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}, "count": jnp.ones((2, 2), jnp.int32)}
  out = cast_kernels(params, jnp.bfloat16)
  assert out["Dense_0"]["kernel"].dtype == jnp.bfloat16 and out["Dense_0"]["bias"].dtype == jnp.float32
  assert out["count"].dtype == jnp.int32 and cast_kernels(params, jnp.float32) is params


# UnetMLP here; the default ResidualMLPScoreNet runs in bfloat16 in the sampler test below.
@pytest.mark.parametrize("net_cls,kw", [(UnetMLP, {"init_dim": 64, "time_dim": 32})])
def test_score_nets_in_bfloat16_keep_parameters_and_stay_close(net_cls, kw):
  x = jax.random.normal(jax.random.key(0), (8, 4 * 16))
  tau = jax.random.uniform(jax.random.key(1), (8, 4))
  full, low = net_cls(**kw), net_cls(**kw, dot_dtype=jnp.bfloat16)
  params = jax.jit(full.init)(jax.random.key(2), x, tau)
  assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(low.init, jax.random.key(2), x, tau))
  # Random non-zero weights everywhere (the output layer starts at zero).
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), params)
  y, y_low = jax.jit(full.apply)(params, x, tau), jax.jit(low.apply)(params, x, tau)
  rel = float(jnp.linalg.norm(y_low - y) / jnp.linalg.norm(y))
  assert 1e-4 < rel < 3e-2, rel  # rounded, but only by bfloat16's precision
  # Rounding the matrices once before a sampling loop gives the same outputs bit for bit.
  np.testing.assert_array_equal(
      np.asarray(jax.jit(low.apply)(cast_kernels(params, jnp.bfloat16), x, tau)), np.asarray(y_low))


def _tiny_config():
  import configs.mvld as cfg_mod  # pylint: disable=import-outside-toplevel
  return cfg_mod.get_config("tiny")


def test_mvld_validation_refuses_bfloat16_attention_and_unknown_dtypes():
  config = _tiny_config()
  config.diffusion.score_net.compute_dtype = "float16"
  with pytest.raises(Exception, match="diffusion.score_net.compute_dtype"):
    mvld_main.validate_config(config, jax.device_count())
  config = _tiny_config()
  config.diffusion.score_net.kind = "attention"
  config.diffusion.score_net.compute_dtype = "bfloat16"
  with pytest.raises(Exception, match="kind='attention'"):
    mvld_main.validate_config(config, jax.device_count())


@pytest.mark.slow  # ~25 s (bfloat16 score nets stay in the default suite): the default suite's 15-min CI budget
def test_mvld_samples_in_bfloat16_close_to_float32():
  config = _tiny_config()
  spec = mvld_model.build_spec(config)
  config_low = ml_collections.ConfigDict(config.to_dict())
  config_low.diffusion.score_net.compute_dtype = "bfloat16"
  spec_low = mvld_model.build_spec(config_low)
  v, l = spec.num_views, spec.latent_dim
  params = jax.jit(spec.score_net.init)(jax.random.key(0), jnp.zeros((1, v * l)), jnp.zeros((1, v)))["params"]
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(1), p.shape), params)
  z = jax.random.normal(jax.random.key(2), (4, v * l))
  observed = jnp.zeros((4, v)).at[:, 0].set(1.0)
  sampler = ml_collections.ConfigDict({**config.sampler.to_dict(), "name": "euler_maruyama",
                                       "num_steps": 5})
  a = mvld_model.sample_latents(spec, params, jax.random.key(3), z, observed, sampler)
  b = mvld_model.sample_latents(spec_low, params, jax.random.key(3), z, observed, sampler)
  assert isinstance(spec_low.score_net, ResidualMLPScoreNet)  # the tiny preset's default kind
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(a[:, :l]), np.asarray(z[:, :l]))  # observed view clamped
  assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())
