"""The shared training loop: sharding invariance, kill-and-resume, corrupt checkpoints, NaN guard."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import configlib
from jaxgen.data.memory import ArrayBatches
from jaxgen.errors import TrainingDivergedError
from jaxgen.parallel.mesh import make_mesh
from jaxgen.train import loop
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState
from jaxgen.train.writers import MetricWriter, read_metrics


def _data(n=256, d=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=(d, 1)).astype(np.float32)
  y = x @ w + 0.1 * rng.normal(size=(n, 1)).astype(np.float32)
  return {"x": x, "y": y}


def _step_fn(state, batch, key):
  """Regression with a random dropout mask, so the per-step key matters."""

  def loss_fn(params):
    keep = jax.random.bernoulli(key, 0.9, batch["x"].shape)
    pred = (batch["x"] * keep / 0.9) @ params["w"] + params["b"]
    return jnp.mean((pred - batch["y"]) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads), {"loss": loss}


def _cfg(num_steps=40, lr=0.05, **kw):
  cfg = configlib.train_config(num_steps, 32, lr=lr, steps_per_call=4, log_every=1,
                               checkpoint_every=10, ema_decay=0.9, async_checkpoints=False)
  cfg.update(kw)
  return cfg


def _state(cfg):
  params = {"w": jnp.zeros((8, 1)), "b": jnp.zeros((1,))}
  return TrainState.create(params, make_optimizer(cfg.optim, cfg.num_steps), ema_decay=cfg.ema_decay)


def _run(workdir, devices, cfg, on_block=None):
  mesh = make_mesh(configlib.mesh_config(), devices=devices)
  writer = MetricWriter(os.path.join(workdir, "logs"))
  batches = ArrayBatches(_data(), global_batch_size=32, seed=3)
  state = loop.train(name="toy", state=_state(cfg), step_fn=_step_fn, batches=batches, cfg=cfg,
                     workdir=workdir, mesh=mesh, key=jax.random.key(7), writer=writer,
                     on_block=on_block, verbose=False)
  writer.close()
  losses = {r["step"]: r["toy/loss"] for r in read_metrics(os.path.join(workdir, "logs"))}
  return state, losses


def test_eight_devices_match_one_device(tmp_path):
  assert jax.device_count() == 8, "conftest must simulate 8 CPU devices"
  cfg = _cfg()
  s1, l1 = _run(str(tmp_path / "one"), jax.devices()[:1], cfg)
  s8, l8 = _run(str(tmp_path / "eight"), jax.devices(), cfg)
  # float32 tolerance: only the order of the batch-mean reduction differs.
  np.testing.assert_allclose([l1[k] for k in sorted(l1)], [l8[k] for k in sorted(l8)], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert l1[40] < l1[1] / 5  # it actually learns


def test_fused_scan_and_per_step_dispatch_agree(tmp_path):
  """The lax.scan block (GPU/TPU default) and per-step dispatch (CPU default) are the same math."""
  fused, per_step = _cfg(scan_steps="always"), _cfg(scan_steps="never")
  s1, l1 = _run(str(tmp_path / "scan"), jax.devices(), fused)
  s2, l2 = _run(str(tmp_path / "steps"), jax.devices(), per_step)
  np.testing.assert_allclose([l1[k] for k in sorted(l1)], [l2[k] for k in sorted(l2)], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


class _Killed(Exception):
  pass


def test_kill_and_resume_reproduces_the_loss_curve(tmp_path):
  cfg = _cfg()
  _, uninterrupted = _run(str(tmp_path / "full"), jax.devices(), cfg)

  def kill_after_25(state, step):
    if step >= 25:  # checkpoints exist at 10 and 20; steps 21-25 are lost work
      raise _Killed()

  with pytest.raises(_Killed):
    _run(str(tmp_path / "killed"), jax.devices(), cfg, on_block=kill_after_25)
  state, resumed = _run(str(tmp_path / "killed"), jax.devices(), cfg)
  assert int(state.step) == 40
  # metrics.jsonl was appended to by both runs; the resumed run re-logs steps 21-25 identically.
  np.testing.assert_allclose([resumed[k] for k in range(1, 41)],
                             [uninterrupted[k] for k in range(1, 41)], rtol=1e-6)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  cfg = _cfg(num_steps=20)
  _run(str(tmp_path), jax.devices(), cfg)
  ckpt_dir = tmp_path / "checkpoints" / "toy"
  assert sorted(os.listdir(ckpt_dir / "20")), "step 20 was saved"
  for root, _, files in os.walk(ckpt_dir / "20" / "state"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
  from jaxgen.train.checkpoint import Checkpointer
  ckpt = Checkpointer(str(ckpt_dir), async_save=False)
  template = jax.device_put(_state(cfg))
  _, data_state, meta = ckpt.restore_latest(template)
  assert meta["step"] == 10 and data_state["index"] > 0
  assert "step 20" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["metadata", "array"])
def test_corrupt_checkpoint_is_moved_aside_and_the_run_finishes_as_uninterrupted(tmp_path, capsys,
                                                                                  damage):
  """Killed after the step-20 checkpoint, which is then damaged (its metadata file overwritten, or
  one array file truncated): the rerun resumes from step 10, moves step 20 aside (kept, named
  corrupt_20_*), saves step 20 again when it gets there, and ends with the uninterrupted losses."""
  cfg = _cfg()
  _, uninterrupted = _run(str(tmp_path / "full"), jax.devices(), cfg)

  def kill_after_25(state, step):
    if step >= 25:
      raise _Killed()

  workdir = tmp_path / "killed"
  with pytest.raises(_Killed):
    _run(str(workdir), jax.devices(), cfg, on_block=kill_after_25)
  step_dir = workdir / "checkpoints" / "toy" / "20"
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  if damage == "metadata":  # the checkpoint's step / seed record
    with open(step_dir / "meta" / "metadata", "w") as f:
      f.write("{not json")
  else:  # one of the array data files (the merged OCDBT store under state/d/)
    victim = max((f for f in files if os.path.dirname(f) == str(step_dir / "state" / "d")),
                 key=os.path.getsize)
    with open(victim, "r+b") as f:
      f.truncate(max(os.path.getsize(victim) // 3, 1))
  capsys.readouterr()
  state, resumed = _run(str(workdir), jax.devices(), cfg)
  out = capsys.readouterr().out
  assert int(state.step) == 40 and "checkpoint step 20" in out and "corrupt" in out
  aside = [d for d in os.listdir(workdir / "checkpoints" / "toy") if d.startswith("corrupt_20_")]
  assert len(aside) == 1 and (workdir / "checkpoints" / "toy" / "40").is_dir()
  np.testing.assert_allclose([resumed[k] for k in range(1, 41)],
                             [uninterrupted[k] for k in range(1, 41)], rtol=1e-6)


def test_nan_guard_names_the_step_and_keeps_last_checkpoint(tmp_path):
  cfg = _cfg(num_steps=200, lr=5.0)  # plain SGD at this rate overflows within a few dozen steps
  cfg.optim.name = "sgd"
  with pytest.raises(TrainingDivergedError) as err:
    _run(str(tmp_path), jax.devices(), cfg)
  step = err.value.step
  assert 1 <= step <= 200 and "step" in str(err.value) and "\n" not in str(err.value)
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints" / "toy") if s.isdigit())
  assert all(s < step for s in steps)
  from jaxgen.train.checkpoint import Checkpointer
  if steps:  # the kept checkpoint restores and holds finite parameters
    ckpt = Checkpointer(str(tmp_path / "checkpoints" / "toy"), async_save=False)
    state, _, _ = ckpt.restore_latest(jax.device_put(_state(cfg)))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_ema_follows_its_definition():
  cfg = _cfg(ema_decay=0.5)
  state = _state(cfg)
  grads = {"w": jnp.ones((8, 1)), "b": jnp.ones((1,))}
  new = state.apply_gradients(grads)
  np.testing.assert_allclose(np.asarray(new.ema_params["w"]),
                             0.5 * np.asarray(state.params["w"]) + 0.5 * np.asarray(new.params["w"]))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_schedules_match_their_formulas(schedule):
  from jaxgen.train.optim import make_schedule
  cfg = configlib.optim_config("sgd", 0.1, schedule=schedule, warmup_steps=10, end_lr_factor=0.1)
  fn = make_schedule(cfg, 110)
  assert abs(float(fn(5)) - 0.05) < 1e-7  # linear warm-up from 0
  t = 50 / 100
  expected = {"constant": 0.1, "cosine": 0.1 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t))),
              "linear": 0.1 + (0.01 - 0.1) * t}[schedule]
  assert abs(float(fn(60)) - expected) < 1e-6


def test_writer_writes_jsonl_and_tensorboard_events(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write_scalars(3, {"loss": np.float32(1.5)})
  writer.write_images(3, {"grid": np.zeros((4, 4, 3), np.uint8)})
  writer.close()
  assert read_metrics(str(tmp_path)) [0]["loss"] == 1.5
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  assert os.listdir(tmp_path / "images") == ["grid_00000003.png"]


def test_compiled_init_gives_the_eager_values_bit_for_bit():
  """MVLD's and LR-GMM-NN's trainers init through compiled_init; their published numbers were
  made with eager init, so the values must not move (fast_compile may, by a few ulp). The
  initialisers of their layers (conv and dense: lecun-normal truncated normals, zeros) on a
  small stand-in; scripts checked the full MVLD / LR-GMM-NN / t2i-VAE networks the same way."""
  import flax.linen as nn
  from jaxgen.train.init import compiled_init

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.GroupNorm(num_groups=2)(nn.Conv(4, (3, 3))(x))
      return nn.Dense(5)(x.reshape((x.shape[0], -1)))

  x = jnp.zeros((1, 6, 6, 3))
  init = lambda k: Net().init(k, x)  # noqa: E731
  eager, compiled = init(jax.random.key(7)), compiled_init(init, jax.random.key(7))
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
