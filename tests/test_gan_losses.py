"""GAN losses (jaxgen.gan.losses) on hand-made logits with hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.gan import LOSSES, discriminator_loss, generator_loss

REAL = jnp.array([2.0, 0.5, -1.0])
FAKE = jnp.array([-2.0, 0.0, 1.0])

# softplus(v) = log(1 + e^v), by hand: softplus(-2) = 0.126928, softplus(-0.5) = 0.474077,
# softplus(0) = 0.693147, softplus(1) = 1.313262, softplus(2) = 2.126928.
SP_M2, SP_M05, SP_0, SP_1, SP_2 = 0.12692801, 0.47407698, 0.69314718, 1.31326169, 2.12692801

EXPECTED = {
    # kind: (d_loss_real, d_loss_fake, g_loss)
    # relu(1 - [2, .5, -1]) = [0, .5, 2]; relu(1 + [-2, 0, 1]) = [0, 1, 2]; -mean(fake) = 1/3.
    "hinge": ((0.0 + 0.5 + 2.0) / 3, (0.0 + 1.0 + 2.0) / 3, 1.0 / 3),
    # softplus(-real) = sp(-2), sp(-.5), sp(1); softplus(fake) = sp(-2), sp(0), sp(1);
    # softplus(-fake) = sp(2), sp(0), sp(-1) = sp(1) - 1.
    "nonsaturating": ((SP_M2 + SP_M05 + SP_1) / 3, (SP_M2 + SP_0 + SP_1) / 3,
                      (SP_2 + SP_0 + SP_1 - 1.0) / 3),
    # -mean(real) = -1.5/3, mean(fake) = -1/3, -mean(fake) = 1/3.
    "wasserstein": (-0.5, -1.0 / 3, 1.0 / 3),
}


def test_losses_tuple():
  assert LOSSES == ("hinge", "nonsaturating", "wasserstein")
  assert set(EXPECTED) == set(LOSSES)


@pytest.mark.parametrize("kind", LOSSES)
def test_values(kind):
  want_real, want_fake, want_g = EXPECTED[kind]
  loss, aux = discriminator_loss(kind, REAL, FAKE)
  np.testing.assert_allclose(aux["d_loss_real"], want_real, rtol=1e-6)
  np.testing.assert_allclose(aux["d_loss_fake"], want_fake, rtol=1e-6)
  np.testing.assert_allclose(loss, want_real + want_fake, rtol=1e-6)
  np.testing.assert_allclose(aux["d_real"], 0.5, rtol=1e-6)
  np.testing.assert_allclose(aux["d_fake"], -1.0 / 3, rtol=1e-6)
  assert set(aux) == {"d_loss_real", "d_loss_fake", "d_real", "d_fake"}
  np.testing.assert_allclose(generator_loss(kind, FAKE), want_g, rtol=1e-6)


def test_hinge_values_literal():
  # 2.5/3 + 3/3 = 1.8333...
  loss, _ = discriminator_loss("hinge", REAL, FAKE)
  np.testing.assert_allclose(loss, 1.8333333, rtol=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_float32_from_bfloat16_and_jit(kind):
  loss, aux = jax.jit(lambda r, f: discriminator_loss(kind, r, f))(
      REAL.astype(jnp.bfloat16), FAKE.astype(jnp.bfloat16))
  assert loss.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in aux.values())
  assert generator_loss(kind, FAKE.astype(jnp.bfloat16)).dtype == jnp.float32
  # These logits are exact in bfloat16, so the float32 result matches the float32 one.
  np.testing.assert_allclose(loss, sum(EXPECTED[kind][:2]), rtol=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_gradient_signs(kind):
  # D lowers its loss by raising real logits and lowering fake ones; G by raising fake logits.
  d_loss = lambda r, f: discriminator_loss(kind, r, f)[0]  # noqa: E731
  g_real, g_fake = jax.grad(d_loss, argnums=(0, 1))(REAL, FAKE)
  assert np.all(g_real <= 0) and np.sum(g_real) < 0
  assert np.all(g_fake >= 0) and np.sum(g_fake) > 0
  g_gen = jax.grad(lambda f: generator_loss(kind, f))(FAKE)
  assert np.all(g_gen < 0)


def test_hinge_gradient_zero_beyond_margin():
  d_loss = lambda r, f: discriminator_loss("hinge", r, f)[0]  # noqa: E731
  g_real, g_fake = jax.grad(d_loss, argnums=(0, 1))(REAL, FAKE)
  # real = 2 and fake = -2 are past the margin: no gradient.
  np.testing.assert_allclose(g_real, [0.0, -1 / 3, -1 / 3], rtol=1e-6)
  np.testing.assert_allclose(g_fake, [0.0, 1 / 3, 1 / 3], rtol=1e-6)


def test_unknown_kind():
  with pytest.raises(ValueError, match=r"'lsgan'.*hinge.*nonsaturating.*wasserstein"):
    discriminator_loss("lsgan", REAL, FAKE)
  with pytest.raises(ValueError, match=r"'lsgan'.*hinge"):
    generator_loss("lsgan", FAKE)
