"""LoRA over plain Flax modules, parameter groups for LoRA + textual inversion, LoRA files.

Models are defined here (an MLP, and a tiny "U-Net" with convs and an SD-style transformer block
whose attention projections are Dense layers named to_q/to_k/to_v/to_out_0), so nothing depends
on the real U-Net. References are independent: the MLP forward with LoRA is recomputed in NumPy
float64 from W + (alpha / r) A B, and the unmerged forward (intercepted side paths) is compared
with the merged-kernel forward to 1e-5. Frozen weights and old embedding rows are compared bit
for bit after AdamW steps with weight decay.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.safetensors import load_safetensors, load_safetensors_metadata, save_safetensors
from jaxgen.nets.lora import (LoRAConfig, apply_with_lora, flatten_lora, flax_module_path,
                              init_lora, load_lora, merge_lora, save_lora, torch_module_name,
                              unflatten_lora)
from jaxgen.train.param_groups import (embedding_row_mask, group_sizes, label_params, mask_rows,
                                       multi_lr_optimizer)
from jaxgen.train.state import TrainState

ATTN = "down_blocks_0/attentions_0/transformer_blocks_0/attn{}/{}/kernel"
ATTN_KERNELS = {ATTN.format(i, p) for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out_0")}
CONVS = (r"conv_in/kernel", r"down_conv/kernel")


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="fc2")(nn.relu(nn.Dense(5, name="fc1")(x)))


class Attention(nn.Module):

  @nn.compact
  def __call__(self, x, context=None):
    ctx = x if context is None else context
    d, heads = x.shape[-1], 2
    split = lambda t: t.reshape(t.shape[:-1] + (heads, d // heads))
    q = split(nn.Dense(d, use_bias=False, name="to_q")(x))
    k = split(nn.Dense(d, use_bias=False, name="to_k")(ctx))
    v = split(nn.Dense(d, use_bias=False, name="to_v")(ctx))
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(x.shape)
    return nn.Dense(d, name="to_out_0")(o)


class Block(nn.Module):

  @nn.compact
  def __call__(self, x, ctx):
    x = x + Attention(name="attn1")(nn.LayerNorm(name="norm1")(x))
    x = x + Attention(name="attn2")(nn.LayerNorm(name="norm2")(x), ctx)
    return x + nn.Dense(x.shape[-1], name="ff_out")(nn.gelu(nn.Dense(16, name="ff_in")(x)))


class Transformer(nn.Module):

  @nn.compact
  def __call__(self, x, ctx):
    return Block(name="transformer_blocks_0")(x, ctx)


class DownBlock(nn.Module):

  @nn.compact
  def __call__(self, x, ctx):
    return Transformer(name="attentions_0")(x, ctx)


class TinyNet(nn.Module):
  """conv -> strided conv -> SD-style transformer block on the tokens -> conv out."""

  @nn.compact
  def __call__(self, img, ctx):
    h = nn.Conv(8, (3, 3), name="conv_in")(img)
    h = nn.Conv(8, (3, 3), strides=2, padding="SAME", name="down_conv")(h)
    b, hh, ww, c = h.shape
    t = DownBlock(name="down_blocks_0")(h.reshape(b, hh * ww, c), ctx)
    return nn.Conv(3, (1, 1), name="conv_out")(t.reshape(b, hh, ww, c))


def _init(module, *args):
  """Variables with the shapes `module.init` gives, filled from NumPy (no slow init compile)."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  return jax.tree.map(lambda s: jnp.asarray(
      rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1), s.dtype), shapes)


_TINY = {}


def _tiny():
  """TinyNet, its variables and inputs (made once per session)."""
  if not _TINY:
    net = TinyNet()
    rng = np.random.default_rng(1)
    img = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    ctx = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
    _TINY["v"] = (net, _init(net, img, ctx), img, ctx)
  return _TINY["v"]


def _randomise_b(lora, seed):
  """Non-zero B factors (a fresh LoRA has B = 0, which would hide any error in the delta)."""
  rng = np.random.default_rng(seed)
  return unflatten_lora({p: (a, jnp.asarray(0.3 * rng.normal(size=b.shape), jnp.float32))
                         for p, (a, b) in flatten_lora(lora).items()})


def _bits(x):
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def test_targets_shapes_and_zero_init_is_exactly_the_base_model():
  net, variables, img, ctx = _tiny()
  config = LoRAConfig(rank=4)
  lora = init_lora(jax.random.key(3), variables["params"], config)
  flat = flatten_lora(lora)
  assert set(flat) == ATTN_KERNELS  # not ff_in/ff_out, not the convs, no biases
  for path, (a, b) in flat.items():
    assert a.shape == (8, 4) and b.shape == (4, 8), path
    assert not np.any(np.asarray(b)) and np.all(np.abs(np.asarray(a)) <= 1 / np.sqrt(8))
    assert np.std(np.asarray(a)) > 0.1
  @jax.jit
  def forwards(variables, lora):
    merged = {"params": merge_lora(variables["params"], lora, config)}
    return (net.apply(variables, img, ctx), apply_with_lora(net, variables, lora, config, img, ctx),
            net.apply(merged, img, ctx))

  base, unmerged, merged = forwards(variables, lora)
  assert np.array_equal(unmerged, base) and np.array_equal(merged, base)
  # Parameter count without initialising anything: r * (in + out) per adapted kernel.
  shapes = jax.eval_shape(lambda: init_lora(jax.random.key(0), variables["params"], config))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 8 * 4 * (8 + 8)


def test_merged_equals_unmerged_for_dense_and_conv_targets():
  net, variables, img, ctx = _tiny()
  config = LoRAConfig(rank=3, alpha=6.0, targets=CONVS + LoRAConfig().targets)
  lora = _randomise_b(init_lora(jax.random.key(4), variables["params"], config), 5)
  flat = flatten_lora(lora)
  assert flat["down_conv/kernel"][0].shape == (3, 3, 8, 3)  # a 3x3 conv A, then a 1x1 B
  assert flat["down_conv/kernel"][1].shape == (3, 8)
  merged = merge_lora(variables["params"], lora, config)
  delta = merged["down_conv"]["kernel"] - variables["params"]["down_conv"]["kernel"]
  assert np.abs(np.asarray(delta)).min() > 0

  @jax.jit
  def forwards(variables, merged, lora):
    return (net.apply({"params": merged}, img, ctx),
            apply_with_lora(net, variables, lora, config, img, ctx))

  want, got = forwards(variables, merged, lora)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  untouched = jax.tree_util.tree_map_with_path(
      lambda p, x, y: np.array_equal(x, y) or "conv_in" in str(p) or "down_conv" in str(p)
      or "attn" in str(p), variables["params"], merged)
  assert all(jax.tree.leaves(untouched))


def test_mlp_against_numpy_reference_and_alpha_over_r_scale():
  mlp = MLP()
  x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
  variables = _init(mlp, x)
  config = LoRAConfig(rank=2, alpha=5.0, targets=(r"fc\d/kernel",), init="normal")
  assert config.scale == 2.5
  lora = _randomise_b(init_lora(jax.random.key(1), variables["params"], config), 2)
  p = jax.tree.map(lambda t: np.asarray(t, np.float64), variables["params"])
  f = {k: tuple(np.asarray(t, np.float64) for t in v) for k, v in flatten_lora(lora).items()}
  w1 = p["fc1"]["kernel"] + 2.5 * f["fc1/kernel"][0] @ f["fc1/kernel"][1]
  w2 = p["fc2"]["kernel"] + 2.5 * f["fc2/kernel"][0] @ f["fc2/kernel"][1]
  ref = np.maximum(x @ w1 + p["fc1"]["bias"], 0) @ w2 + p["fc2"]["bias"]
  unmerged, merged = jax.jit(lambda v, l: (
      apply_with_lora(mlp, v, l, config, x),
      mlp.apply({"params": merge_lora(v["params"], l, config)}, x)))(variables, lora)
  np.testing.assert_allclose(unmerged, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(merged, ref, rtol=1e-5, atol=1e-5)


def test_config_and_target_errors():
  _, variables, _, _ = _tiny()
  for bad in (dict(rank=0), dict(alpha=-1.0), dict(targets=("(",)), dict(init="xavier")):
    with pytest.raises(ConfigError):
      LoRAConfig(**bad)
  with pytest.raises(ConfigError, match="at least one"):
    init_lora(jax.random.key(0), variables["params"], LoRAConfig(targets=(r"nothing/kernel",)))
  with pytest.raises(ConfigError, match="kernel"):
    init_lora(jax.random.key(0), variables["params"], LoRAConfig(targets=(r".*norm1/scale",)))
  mlp, x = MLP(), jnp.ones((1, 6))
  mlp_vars = jax.eval_shape(mlp.init, jax.random.key(0), x)
  lora = init_lora(jax.random.key(0), mlp_vars["params"], LoRAConfig(targets=(r"fc1/kernel",)))
  with pytest.raises(DataError, match="fc1/kernel"):
    merge_lora(variables["params"], lora, LoRAConfig())
  with pytest.raises(ConfigError, match="fc1/kernel"):  # fc1 is never called by TinyNet
    jax.eval_shape(lambda: apply_with_lora(TinyNet(), variables, lora, LoRAConfig(),
                                           jnp.ones((1, 8, 8, 3)), jnp.ones((1, 4, 8))))


def test_lora_and_new_embedding_rows_train_everything_else_stays_bit_identical():
  net = DownBlock()  # the transformer part of TinyNet alone: one grad compile is enough here
  rng = np.random.default_rng(6)
  tokens = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  vocab, new_ids = 12, [10, 11]
  table = jnp.asarray(rng.normal(size=(vocab, 8)), jnp.float32)
  table = table.at[3, 0].set(-0.0)  # an old row holding -0.0 must keep its sign bit
  config = LoRAConfig(rank=2)
  base = _init(net, tokens, tokens[:, :4])["params"]
  block = base["attentions_0"]["transformer_blocks_0"]
  block["ff_out"]["bias"] = jnp.full_like(block["ff_out"]["bias"], -0.0)
  trainable = {"unet": base, "lora": init_lora(jax.random.key(7), base, config),
               "text": {"token_embedding": {"embedding": table}}}
  labels = label_params(trainable, [(r"lora/.*", "lora"),
                                    (r"text/token_embedding/embedding", "ti")])
  assert group_sizes(trainable, labels)["ti"] == vocab * 8
  assert group_sizes(trainable, labels)["lora"] == 8 * 2 * (8 + 8)
  prompts = jnp.array([[1, 3, 10, 5], [11, 2, 3, 0]])  # old and new tokens, so all rows get grads

  def loss_fn(tree):
    ctx = tree["text"]["token_embedding"]["embedding"][prompts]
    out = apply_with_lora(net, {"params": tree["unet"]}, tree["lora"], config, tokens, ctx)
    return jnp.mean((out - target) ** 2)

  row_mask = embedding_row_mask(vocab, new_ids)
  tx = multi_lr_optimizer({"lora": optax.adamw(1e-2, weight_decay=0.1),
                           "ti": mask_rows(optax.adamw(5e-2, weight_decay=0.1), row_mask)}, labels)
  state = TrainState.create(trainable, tx)

  @jax.jit
  def train(state):
    def step(state, _):
      loss, grads = jax.value_and_grad(loss_fn)(state.params)
      return state.apply_gradients(grads), loss
    state, losses = jax.lax.scan(step, state, length=4)
    return state.params, losses

  out, losses = train(state)  # 4 steps; losses[i] is the loss before step i
  for a, b in zip(jax.tree.leaves(trainable["unet"]), jax.tree.leaves(out["unet"])):
    assert np.array_equal(_bits(a), _bits(b))
  old = ~row_mask
  new_table = out["text"]["token_embedding"]["embedding"]
  assert np.array_equal(_bits(new_table)[old], _bits(table)[old])
  assert np.all(np.abs(np.asarray(new_table - table))[row_mask].max(axis=1) > 1e-3)
  for (a0, b0), (a1, b1) in zip(flatten_lora(trainable["lora"]).values(),
                                flatten_lora(out["lora"]).values()):
    assert not np.array_equal(a0, a1) and np.abs(np.asarray(b1)).max() > 1e-4
  assert float(losses[-1]) < float(losses[0])
  # Control: unmasked, the same AdamW moves every row even at zero gradient (decoupled decay).
  plain = optax.adamw(5e-2, weight_decay=0.1)
  updates, _ = plain.update(jnp.zeros_like(table), plain.init(table), table)
  assert np.all(np.abs(np.asarray(updates))[old].max(axis=1) > 1e-4)


def test_param_group_errors():
  tree = {"a": jnp.ones(2), "b": jnp.ones(3)}
  labels = label_params(tree, {"a": "lora"})
  assert labels == {"a": "lora", "b": "frozen"}
  with pytest.raises(ConfigError):
    multi_lr_optimizer({}, labels)
  with pytest.raises(ConfigError):
    multi_lr_optimizer({"lora": optax.sgd(1.0), "frozen": optax.sgd(1.0)}, labels)
  with pytest.raises(ConfigError):
    label_params(tree, [("(", "x")])
  with pytest.raises(ConfigError):
    embedding_row_mask(4, [4])
  tx = multi_lr_optimizer({"lora": mask_rows(optax.sgd(1.0), np.array([True, False, True]))},
                          label_params(tree, {".*": "lora"}))
  opt_state = tx.init(tree)
  with pytest.raises(ConfigError, match="leading axis"):  # 'a' has 2 rows, the mask 3
    tx.update(tree, opt_state, tree)


def test_torch_names():
  assert torch_module_name("down_blocks_0/attentions_1/transformer_blocks_0/attn1/to_out_0") == (
      "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0")
  assert torch_module_name("time_embedding/linear_1") == "time_embedding.linear_1"
  assert flax_module_path("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k") == (
      "up_blocks_1/attentions_2/transformer_blocks_0/attn2/to_k")
  assert flax_module_path("time_embedding.linear_1") == "time_embedding/linear_1"


def test_save_load_round_trip_in_peft_format(tmp_path):
  net, variables, img, ctx = _tiny()
  config = LoRAConfig(rank=3, alpha=6.0, targets=CONVS + LoRAConfig().targets)
  lora = _randomise_b(init_lora(jax.random.key(4), variables["params"], config), 5)
  path = str(tmp_path / "pytorch_lora_weights.safetensors")
  save_lora(path, lora, config, prefix="unet")
  raw = load_safetensors(path)
  key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.{}.lora_{}.weight"
  assert raw[key.format("to_q", "A")].shape == (3, 8)  # [r, in]
  assert raw[key.format("to_out.0", "B")].shape == (8, 3)  # [out, r]
  np.testing.assert_array_equal(raw[key.format("to_k", "A")],
                                np.asarray(flatten_lora(lora)[ATTN.format(1, "to_k")][0]).T)
  assert raw["unet.down_conv.lora_A.weight"].shape == (3, 8, 3, 3)  # [r, in, kh, kw]
  assert raw["unet.down_conv.lora_B.weight"].shape == (8, 3, 1, 1)
  assert len(raw) == 2 * 10
  assert '"unet.lora_alpha": 6.0' in load_safetensors_metadata(path)["lora_adapter_metadata"]
  loaded, cfg = load_lora(path, params=variables["params"])
  assert (cfg.rank, cfg.scale) == (3, 2.0)
  assert set(flatten_lora(loaded)) == set(flatten_lora(lora))
  for p, (a, b) in flatten_lora(lora).items():
    np.testing.assert_array_equal(flatten_lora(loaded)[p][0], a)
    np.testing.assert_array_equal(flatten_lora(loaded)[p][1], b)


def test_load_kohya_and_old_diffusers_names(tmp_path):
  mlp, x = MLP(), np.ones((1, 6), np.float32)
  params = mlp.init(jax.random.key(0), x)["params"]
  rng = np.random.default_rng(0)
  a1, b1 = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
  a2, b2 = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
  kohya = str(tmp_path / "kohya.safetensors")
  save_safetensors(kohya, {"lora_unet_fc1.lora_down.weight": a1, "lora_unet_fc1.lora_up.weight": b1,
                           "lora_unet_fc1.alpha": np.array(2.0, np.float32),
                           "lora_unet_fc2.lora_down.weight": a2, "lora_unet_fc2.lora_up.weight": b2,
                           "lora_unet_fc2.alpha": np.array(8.0, np.float32)})
  with pytest.raises(DataError, match="params"):
    load_lora(kohya)
  lora, cfg = load_lora(kohya, params=params)
  merged = merge_lora(params, lora, cfg)
  # Per-module alpha / r: 2/4 for fc1 and 8/4 for fc2; PyTorch delta B A is (out, in).
  np.testing.assert_allclose(merged["fc1"]["kernel"] - params["fc1"]["kernel"], 0.5 * (b1 @ a1).T,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(merged["fc2"]["kernel"] - params["fc2"]["kernel"], 2.0 * (b2 @ a2).T,
                             rtol=1e-5, atol=1e-5)
  old = str(tmp_path / "old.safetensors")
  save_safetensors(old, {"unet.fc1.lora.down.weight": a1, "unet.fc1.lora.up.weight": b1})
  lora, cfg = load_lora(old)
  assert cfg.scale == 1.0 and set(flatten_lora(lora)) == {"fc1/kernel"}
  with pytest.raises(DataError, match="fc2"):
    save_safetensors(old, {"fc2.lora_A.weight": a1, "fc2.lora_B.weight": b1})
    load_lora(old, params=params)  # fc2's kernel is (5, 3), the factors make (6, 5)
  save_safetensors(old, {"fc2.lora_A.weight": a1})
  with pytest.raises(DataError, match="only its"):
    load_lora(old)
  # Flax list items named '<list>/<i>' (transformers' Flax CLIP) resolve through the model.
  clip = {"encoder": {"layers": {"0": {"q_proj": {"kernel": np.zeros((6, 5), np.float32)}}}}}
  save_safetensors(old, {"encoder.layers.0.q_proj.lora_A.weight": a1,
                         "encoder.layers.0.q_proj.lora_B.weight": b1})
  assert set(flatten_lora(load_lora(old, params=clip)[0])) == {"encoder/layers/0/q_proj/kernel"}


@pytest.mark.torch
def test_saved_factors_follow_peft_semantics_in_torch(tmp_path):
  """PEFT's forward h = W x + s * B(A(x)) on our saved file equals our merged kernel in torch."""
  torch = pytest.importorskip("torch")
  st_torch = pytest.importorskip("safetensors.torch")
  F = torch.nn.functional
  _, variables, _, _ = _tiny()
  config = LoRAConfig(rank=3, alpha=6.0, targets=CONVS + LoRAConfig().targets)
  lora = _randomise_b(init_lora(jax.random.key(4), variables["params"], config), 5)
  path = str(tmp_path / "lora.safetensors")
  save_lora(path, lora, config)
  factors = st_torch.load_file(path)
  merged = merge_lora(variables["params"], lora, config)
  conv = lambda tree: torch.from_numpy(  # HWIO -> OIHW
      np.asarray(tree["conv_in"]["kernel"]).transpose(3, 2, 0, 1).copy())
  x = torch.randn(2, 3, 6, 6)
  peft = F.conv2d(x, conv(variables["params"]), padding=1) + config.scale * F.conv2d(
      F.conv2d(x, factors["conv_in.lora_A.weight"], padding=1), factors["conv_in.lora_B.weight"])
  torch.testing.assert_close(F.conv2d(x, conv(merged), padding=1), peft, rtol=1e-5, atol=1e-5)
  name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
  block = lambda tree: tree["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]
  dense = lambda tree: torch.from_numpy(np.asarray(block(tree)["attn2"]["to_v"]["kernel"]).T.copy())
  t = torch.randn(5, 8)
  peft = F.linear(t, dense(variables["params"])) + config.scale * F.linear(
      F.linear(t, factors[f"{name}.lora_A.weight"]), factors[f"{name}.lora_B.weight"])
  torch.testing.assert_close(F.linear(t, dense(merged)), peft, rtol=1e-5, atol=1e-5)
