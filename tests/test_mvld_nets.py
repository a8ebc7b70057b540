"""MVLD's networks (the TrivialAugmentWide tests are in test_trivial_augment.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nets.autoencoder import ViewAutoencoder
from jaxgen.nets.score_nets import ResidualMLPScoreNet, ViewAttentionScoreNet


def test_autoencoder_shapes_and_score_nets_start_at_zero():
  ae = ViewAutoencoder(image_size=16, latent_dim=8, channels=(8, 16))
  x = jnp.zeros((2, 16, 16, 3))
  # One compiled call each (op-by-op dispatch of init / apply costs far more on a busy CPU).
  params = jax.jit(ae.init)(jax.random.key(0), x)["params"]
  z = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=ViewAutoencoder.encode))(params, x)
  assert z.shape == (2, 8) and jax.jit(ae.apply)({"params": params}, x).shape == (2, 16, 16, 3)
  x = jax.random.normal(jax.random.key(1), (3, 4 * 8))
  tau = jnp.asarray([[0.0, 0.5, 0.5, 0.5]] * 3)
  for net in (ResidualMLPScoreNet(widths=(32, 16)), ViewAttentionScoreNet(num_views=4, width=16, depth=1, num_heads=2)):
    params = jax.jit(net.init)(jax.random.key(2), x, tau)
    out = jax.jit(net.apply)(params, x, tau)
    assert out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero-initialised output layer
