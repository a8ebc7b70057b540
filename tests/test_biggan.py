"""BigGAN G / projection D and spectral norm: SN against numpy's SVD, shapes, the soft-label
projection, BatchNorm modes, hierarchical z and the CIFAR-size parameter count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nets.biggan import Discriminator, Generator, SelfAttention
from jaxgen.nets.spectral_norm import SNConv, SNDense

K = 10  # classes


def _onehot(ids, k=K):
  return jax.nn.one_hot(jnp.asarray(ids), k)


def _random_variables(module, seed, *args):
  """Random values in the structure `module.init` gives (no orthogonal-init compile, which costs
  seconds per network on CPU): BN variances positive, u unit vectors, the rest N(0, 0.3^2)."""
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), *args)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    x = rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
    return x / np.linalg.norm(x) if name == "u" else x
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _sn_matrix(kernel, u):
  """The eval-mode spectrally normalised [out, -1] matrix, in numpy."""
  w = np.asarray(kernel).reshape(-1, kernel.shape[-1]).T
  v = u @ w
  v /= np.linalg.norm(v)
  return w / (u @ w @ v)


# (a) spectral norm ------------------------------------------------------------------------------

def _iterate(module, variables, x, steps):
  def body(_, spectral):
    _, upd = module.apply({**variables, "spectral": spectral}, x, update_stats=True,
                          mutable=["spectral"])
    return upd["spectral"]
  return jax.jit(lambda s: jax.lax.fori_loop(0, steps, body, s))(variables["spectral"])


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_spectral_norm_converges_to_top_singular_pair(kind):
  rng = np.random.default_rng(0)
  if kind == "dense":
    module, kshape = SNDense(6, use_bias=False), (10, 6)
    probe = jnp.eye(10)  # module(probe) = W_SN^T [in, out]
  else:
    # VALID 3x3 conv of a 3x3 one-hot input picks out one kernel entry: module(probe) is the
    # [kh*kw*in, out] kernel after normalisation.
    module, kshape = SNConv(5, (3, 3), padding="VALID", use_bias=False), (3, 3, 3, 5)
    probe = jnp.eye(27).reshape(27, 3, 3, 3)
  variables = module.init(jax.random.key(1), probe)
  kernel = rng.normal(size=kshape).astype(np.float32)
  variables = {"params": {"kernel": jnp.asarray(kernel)}, "spectral": variables["spectral"]}
  # Eval mode leaves u alone.
  _, upd = module.apply(variables, probe, update_stats=False, mutable=["spectral"])
  np.testing.assert_array_equal(upd["spectral"]["u"], variables["spectral"]["u"])
  spectral = _iterate(module, variables, probe, 500)
  assert not np.allclose(spectral["u"], variables["spectral"]["u"])
  w_sn = np.asarray(module.apply({**variables, "spectral": spectral}, probe))
  w_sn = w_sn.reshape(-1, kshape[-1])
  assert np.linalg.svd(w_sn.T, compute_uv=False)[0] == pytest.approx(1.0, abs=1e-3)
  left, _, _ = np.linalg.svd(kernel.reshape(-1, kshape[-1]).T)
  u = np.asarray(spectral["u"])
  np.testing.assert_allclose(u * np.sign(u @ left[:, 0]), left[:, 0], atol=1e-3)


# (b) shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("res,ch,attn", [(32, 4, 16), (64, 4, 32), (128, 4, 64)])
def test_output_shapes(res, ch, attn):
  z, y = jnp.zeros((2, 128)), _onehot([0, 1])
  g = Generator(K, res, ch=ch, attention=attn)
  d = Discriminator(K, res, ch=ch, attention=attn // 2)
  g_vars = jax.eval_shape(functools.partial(g.init, train=False), jax.random.key(0), z, y)
  x = jax.eval_shape(functools.partial(g.apply, train=False), g_vars, z, y)
  assert x.shape == (2, res, res, 3)
  d_vars = jax.eval_shape(functools.partial(d.init, train=False), jax.random.key(0), x, y)
  logits = jax.eval_shape(functools.partial(d.apply, train=False), d_vars, x, y)
  assert logits.shape == (2,) and logits.dtype == jnp.float32
  assert "attention" in g_vars["params"] and "attention" in d_vars["params"]


def test_unsupported_resolution():
  with pytest.raises(ValueError, match=r"resolution=48.*\(32, 64, 128\)"):
    Generator(K, 48)
  with pytest.raises(ValueError, match="attention=12"):
    Discriminator(K, 32, attention=12)


# (d) G's BatchNorm modes, and its output range ----------------------------------------------

def test_generator_batchnorm_modes():
  g = Generator(K, 32, ch=4)
  z = jax.random.normal(jax.random.key(2), (4, 128))
  y = _onehot([0, 3, 5, 9])
  variables = _random_variables(g, 3, z, y)
  stats = {k: v for k, v in variables.items() if k != "params"}
  run = jax.jit(functools.partial(g.apply, mutable=["batch_stats", "spectral"]),
                static_argnames="train")
  x_train, new_train = run(variables, z, y, train=True)
  x_eval, new_eval = run(variables, z, y, train=False)
  x_eval2, _ = run(variables, z, y, train=False)
  assert x_train.shape == (4, 32, 32, 3)
  assert float(jnp.min(x_eval)) >= -1.0 and float(jnp.max(x_eval)) <= 1.0
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), stats, dict(new_train))
  assert all(jax.tree.leaves(changed["batch_stats"])) and all(jax.tree.leaves(changed["spectral"]))
  jax.tree.map(np.testing.assert_array_equal, stats, dict(new_eval))
  np.testing.assert_array_equal(x_eval, x_eval2)
  assert not np.allclose(x_train, x_eval)


# (c) the soft-label projection ------------------------------------------------------------------

def test_projection_discriminator_soft_labels():
  d = Discriminator(K, 32, ch=4, attention=8)
  x = jax.random.uniform(jax.random.key(4), (3, 32, 32, 3), minval=-1, maxval=1)
  # Random values (nonzero biases and gamma) so every term of D matters.
  variables = _random_variables(d, 5, x, _onehot([0, 0, 0]))
  p = variables["params"]
  run = jax.jit(functools.partial(d.apply, mutable=["intermediates"]))

  classes = np.array([1, 4, 9])
  logits, inter = run(variables, x, _onehot(classes))
  phi = np.asarray(inter["intermediates"]["phi"][0])
  s = variables["spectral"]
  v_mat = _sn_matrix(p["embed"]["kernel"], np.asarray(s["embed"]["u"]))       # [C, K]
  psi_w = _sn_matrix(p["linear"]["kernel"], np.asarray(s["linear"]["u"]))[0]  # [C]
  expected = np.sum(phi * v_mat[:, classes].T, 1) + phi @ psi_w + float(p["linear"]["bias"][0])
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)

  y1 = jax.nn.softmax(jax.random.normal(jax.random.key(6), (3, K)))
  y2 = _onehot([2, 2, 7])
  a = 0.3
  d_mix, _ = run(variables, x, a * y1 + (1 - a) * y2)
  d1, _ = run(variables, x, y1)
  d2, _ = run(variables, x, y2)
  np.testing.assert_allclose(d_mix, a * d1 + (1 - a) * d2, rtol=1e-4, atol=1e-4)


def test_init_orthogonal_and_attention_gate_closed():
  x = jnp.zeros((1, 4, 4, 32))
  p = jax.jit(SelfAttention().init)(jax.random.key(7), x)["params"]
  assert float(p["gamma"]) == 0.0  # BigGAN's attention block starts as the identity
  for name, out in [("theta", 4), ("g", 16), ("o", 32)]:
    k = np.asarray(p[name]["kernel"]).reshape(-1, out)
    gram = k.T @ k if k.shape[0] >= out else k @ k.T  # orthonormal columns, or rows if wide
    np.testing.assert_allclose(gram, np.eye(min(k.shape)), atol=1e-5)


# (e) hierarchical z -----------------------------------------------------------------------------

def test_hierarchical_latent():
  with pytest.raises(ValueError, match="dim_z=128"):
    Generator(K, 32, dim_z=128, hierarchical=True)
  g = Generator(K, 32, ch=4, dim_z=80, shared_dim=16, hierarchical=True)  # 20 * (3 blocks + 1)
  z, y = jnp.zeros((2, 80)), _onehot([0, 1])
  shapes = jax.eval_shape(functools.partial(g.init, train=False), jax.random.key(0), z, y)
  p = shapes["params"]
  assert p["linear"]["kernel"].shape == (20, 16 * 16)
  assert p["blocks_0"]["bn1"]["gain"]["kernel"].shape == (16 + 20, 16)
  assert jax.eval_shape(g.apply, shapes, z, y).shape == (2, 32, 32, 3)


# (f) the parameter count at BigGAN-PyTorch's CIFAR size -----------------------------------------

def test_parameter_count_cifar_size():
  ch, dim_z, shared, c = 64, 128, 128, 4 * 64  # every 32x32 block has 4 * ch channels
  conv3 = lambda i, o: 9 * i * o + o  # noqa: E731  (3x3 conv with bias)
  conv1 = lambda i, o: i * o + o  # noqa: E731
  g_block = 2 * (2 * shared * c) + 2 * conv3(c, c) + conv1(c, c)  # 2 cBN (gain, bias), 2 conv, sc
  g_expected = (K * shared                      # shared embedding
                + dim_z * 16 * c + 16 * c       # linear to 4x4xC
                + 3 * g_block                   # 4 -> 8 -> 16 -> 32
                + 2 * c + conv3(c, 3))          # out BN (scale, bias), out conv
  d_expected = (conv3(3, c) + conv3(c, c) + conv1(3, c)  # block 0 (downsample: shortcut)
                + 2 * conv3(c, c) + conv1(c, c)          # block 1 (downsample: shortcut)
                + 2 * 2 * conv3(c, c)                    # blocks 2, 3 (no shortcut)
                + c + 1 + K * c)                         # psi, V
  z, y = jnp.zeros((1, dim_z)), _onehot([0])
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))  # noqa: E731
  g = Generator(K, 32, ch=ch, dim_z=dim_z, shared_dim=shared)
  g_params = jax.eval_shape(functools.partial(g.init, train=False), jax.random.key(0), z, y)
  d = Discriminator(K, 32, ch=ch)
  x = jnp.zeros((1, 32, 32, 3))
  d_params = jax.eval_shape(functools.partial(d.init, train=False), jax.random.key(0), x, y)
  print(f"BigGAN 32x32 ch=64, {K} classes: G {count(g_params['params'])}, "
        f"D {count(d_params['params'])} parameters")
  assert count(g_params["params"]) == g_expected == 4_668_163
  assert count(d_params["params"]) == d_expected == 4_207_361
