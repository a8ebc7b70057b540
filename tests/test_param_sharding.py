"""Parameter sharding over a model axis (jaxgen.parallel.partitioning) on 8 simulated CPU devices:
the rules' specs, equal training losses on 8x1, 2x4 and 1x8 meshes, falling per-device bytes,
and a checkpoint written under one mesh resumed under another."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen.configlib import mesh_config
from jaxgen.data.memory import ArrayBatches
from jaxgen.parallel import make_mesh
from jaxgen.parallel.partitioning import (bytes_per_device, leaf_spec, parse_rule, state_shardings,
                                          use_param_rules)
from jaxgen.train import loop
from jaxgen.train.state import TrainState


def _mesh(data, model):
  return make_mesh(mesh_config(data, model))


def test_rules_pick_the_documented_specs():
  mesh = _mesh(2, 4)
  fsdp = (".*=fsdp",)
  assert leaf_spec("params/init/kernel", (12, 64), jnp.float32, mesh, fsdp) == P(None, "model")
  assert leaf_spec("params/init/kernel", (64, 12), jnp.float32, mesh, fsdp) == P("model")
  assert leaf_spec("params/init/bias", (6,), jnp.float32, mesh, fsdp) == P()  # 6 % 4: replicated
  assert leaf_spec("step", (), jnp.int32, mesh, fsdp) == P()
  tensor = ("kernel$=_,model", ".*=replicate")
  assert leaf_spec("params/a/kernel", (8, 16), jnp.float32, mesh, tensor) == P(None, "model")
  assert leaf_spec("params/a/bias", (16,), jnp.float32, mesh, tensor) == P()
  # An explicit spec that does not divide the shape falls through to the next rule.
  assert leaf_spec("params/a/kernel", (8, 6), jnp.float32, mesh, ("kernel$=_,model", ".*=fsdp")) == P("model")
  assert leaf_spec("params/a/kernel", (8, 16), jnp.float32, _mesh(8, 1), fsdp) == P()
  for bad in ("no-equals", "(=fsdp", ".*=rows", ".*=model,tensor"):
    with pytest.raises(ValueError):
      parse_rule(bad)


class _Denoiser(nn.Module):
  """A small residual MLP denoiser: the layer kinds of MVLD's score networks (Dense, LayerNorm,
  a time input), small enough that each mesh's step compiles in about a second."""

  @nn.compact
  def __call__(self, x, tau):
    h = nn.Dense(64)(jnp.concatenate([x, tau], axis=-1))
    h = h + nn.Dense(64)(nn.gelu(nn.LayerNorm()(h)))
    return nn.Dense(x.shape[-1])(nn.gelu(h))


def _train(mesh, rules, num_steps, workdir):
  """The denoiser trained by the one loop (Adam moments, EMA, checkpoints every 2 steps); returns
  the per-step losses it wrote, the final state and the state as placed during training."""
  net = _Denoiser()
  params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 32)), jnp.zeros((1, 4)))["params"]
  state = TrainState.create(params, optax.adamw(1e-3, weight_decay=1e-4), ema_decay=0.9)

  def step_fn(state, batch, key):
    k_noise, k_tau = jax.random.split(key)
    tau = jax.random.uniform(k_tau, (batch["z"].shape[0], 4))
    noise = jax.random.normal(k_noise, batch["z"].shape)
    x = batch["z"] + jnp.repeat(tau, 8, axis=1) * noise

    def loss_fn(p):
      return jnp.mean((net.apply({"params": p}, x, tau) - noise) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}

  data = {"z": np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)}
  losses, during = {}, {}

  class Collect:
    def write_scalars(self, step, scalars):
      losses[step] = float(scalars["s/loss"])

    def flush(self):
      pass

  cfg = ml_collections.ConfigDict({"num_steps": num_steps, "steps_per_call": 2, "log_every": 1,
                                   "checkpoint_every": 2, "keep_checkpoints": 2,
                                   "async_checkpoints": False, "scan_steps": "never"})
  with use_param_rules(rules):
    batches = ArrayBatches(data, global_batch_size=16, seed=1)
    state = loop.train(name="s", state=state, step_fn=step_fn, batches=batches,
                       cfg=cfg, workdir=str(workdir), mesh=mesh, key=jax.random.key(3),
                       writer=Collect(), verbose=False, on_block=lambda s, _: during.update(state=s))
  return losses, state, during["state"]


def test_mesh_shapes_give_the_same_losses_and_less_memory_per_device(tmp_path):
  rules = (".*=fsdp",)
  runs = {shape: _train(_mesh(*shape), rules, 4, tmp_path / f"{shape[0]}x{shape[1]}")
          for shape in ((8, 1), (2, 4), (1, 8))}
  reference = runs[(8, 1)][0]
  assert sorted(reference) == [1, 2, 3, 4]
  for shape, (losses, _, _) in runs.items():
    np.testing.assert_allclose([losses[s] for s in range(1, 5)], [reference[s] for s in range(1, 5)],
                               rtol=2e-5, err_msg=str(shape))
  # Parameters, both Adam moments and the EMA are split: bytes per device fall with the model
  # axis (not exactly 1/M: biases of odd size and LayerNorm scales stay whole).
  held = {shape: bytes_per_device(during) for shape, (_, _, during) in runs.items()}
  assert held[(8, 1)] > 3 * held[(2, 4)] > 3 * 1.9 * held[(1, 8)], held
  during = runs[(1, 8)][2]
  for tree in (during.params, during.opt_state[0].mu, during.ema_params):
    assert tree["Dense_0"]["kernel"].sharding.spec == P(None, "model")
  # Evaluation code receives the trained state replicated, as from a data-parallel run.
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(runs[(1, 8)][1]))

  # The 2x4 run's checkpoint at step 2 resumes under 1x8 and finishes as the 8x1 run did.
  moved = tmp_path / "moved"
  shutil.copytree(tmp_path / "2x4", moved)
  shutil.rmtree(moved / "checkpoints" / "s" / "4")
  resumed, state, _ = _train(_mesh(1, 8), rules, 4, moved)
  assert sorted(resumed) == [3, 4]
  np.testing.assert_allclose([resumed[3], resumed[4]], [reference[3], reference[4]], rtol=2e-5)
  # Adam divides each element's step by its own gradient scale, so an element whose gradient is
  # near zero can take a visibly different step when the two meshes sum in another order: one of
  # the 2304 kernel entries moved 1.6e-5 apart on an AMD EPYC host (lr 1e-3, 4 steps); atol 1e-4
  # is a tenth of one step, far below a real resume error (a lost step moves every entry ~lr)
  np.testing.assert_allclose(np.asarray(state.params["Dense_0"]["kernel"]),
                             np.asarray(runs[(8, 1)][1].params["Dense_0"]["kernel"]),
                             rtol=1e-4, atol=1e-4)


def test_data_parallel_rules_replicate_everything():
  mesh = _mesh(8, 1)
  state = {"w": jnp.zeros((16, 16)), "b": jnp.zeros((16,))}
  for sharding in jax.tree.leaves(state_shardings(state, mesh, (".*=fsdp",))):
    assert sharding.is_fully_replicated
