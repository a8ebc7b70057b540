"""A CLIP-style text encoder in Flax, laid out like transformers' `CLIPTextModel`.

Radford et al. 2021 ("Learning Transferable Visual Models From Natural Language Supervision",
sec. 2.4) encode text with a GPT-2 style transformer: token embedding plus a learned position
embedding, pre-LN layers
    x = x + MSA(LN1(x))   (causal: position i attends to positions <= i),
    x = x + MLP(LN2(x))   (Linear - quick_gelu - Linear),
and a final LayerNorm. Stable Diffusion 1.x (Rombach et al. 2022, sec. 3.3) conditions its U-Net
on all L hidden states of the frozen `openai/clip-vit-large-patch14` text model (width 768, 12
layers, 12 heads, 77 positions, vocab 49408: `TextEncoderConfig.sd15()`); CLIP itself pools the
state at the end-of-text token.

Flax names mirror transformers' state-dict keys so `jaxgen.io.text_encoder_import` maps them
mechanically: {embeddings/{token_embedding, position_embedding}, encoder/layers_i/{self_attn/
{q_proj,k_proj,v_proj,out_proj}, layer_norm1, mlp/{fc1,fc2}, layer_norm2}, final_layer_norm}
is `text_model.embeddings.token_embedding.weight`, `text_model.encoder.layers.0.self_attn.q_proj
.weight`, ... (Dense kernels are the transposed torch weights).

Textual inversion (Gal et al. 2023; Diff-Mix's "[V_i] [metaclass]" class names) learns new rows of
the token embedding only: `add_token_rows` appends them, initialised from existing tokens' rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError

__all__ = [
    "ACTIVATIONS", "TextEncoder", "TextEncoderConfig", "TextEncoderLayer", "add_token_rows",
    "causal_mask", "eos_positions", "quick_gelu", "token_embedding",
]

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
  """x * sigmoid(1.702 x): the sigmoid approximation of GELU that OpenAI CLIP was trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


def _gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # transformers' "gelu" is the exact erf form


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": _gelu}


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """Sizes of a CLIP text transformer (transformers' `CLIPTextConfig` names in brackets).

  vocab_size [vocab_size], max_length [max_position_embeddings], width [hidden_size], layers
  [num_hidden_layers], heads [num_attention_heads], intermediate_size [intermediate_size; None
  is 4 * width], activation [hidden_act], layer_norm_eps [layer_norm_eps].
  """

  vocab_size: int = 49408
  max_length: int = 77
  width: int = 768
  layers: int = 12
  heads: int = 12
  intermediate_size: int | None = None
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    for key in ("vocab_size", "max_length", "width", "layers", "heads"):
      value = getattr(self, key)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"text_encoder.{key}", value, "a positive int")
    if self.width % self.heads:
      raise ConfigError("text_encoder.heads", self.heads, f"a divisor of width={self.width}")
    if self.intermediate_size is not None and (
        not isinstance(self.intermediate_size, int) or self.intermediate_size < 1):
      raise ConfigError("text_encoder.intermediate_size", self.intermediate_size,
                        "a positive int or None (4 * width)")
    if self.activation not in ACTIVATIONS:
      raise ConfigError("text_encoder.activation", self.activation, f"one of {sorted(ACTIVATIONS)}")
    if not self.layer_norm_eps > 0:
      raise ConfigError("text_encoder.layer_norm_eps", self.layer_norm_eps, "a positive float")

  @classmethod
  def sd15(cls) -> "TextEncoderConfig":
    """The text model of openai/clip-vit-large-patch14 that Stable Diffusion 1.x conditions on
    (123,060,480 parameters)."""
    return cls()

  @classmethod
  def tiny(cls) -> "TextEncoderConfig":
    """Width 32, 2 layers of 2 heads, 16 positions, 512 tokens: for tests and CPU training."""
    return cls(vocab_size=512, max_length=16, width=32, layers=2, heads=2, intermediate_size=64)

  @property
  def mlp_width(self) -> int:
    return self.intermediate_size if self.intermediate_size is not None else 4 * self.width

  @property
  def head_dim(self) -> int:
    return self.width // self.heads


def causal_mask(length: int) -> jax.Array:
  """[L, L] bool, True where query i may attend to key j (j <= i)."""
  return jnp.tril(jnp.ones((length, length), bool))


def eos_positions(input_ids: jax.Array, eos_token_id: int | None = None) -> jax.Array:
  """[B] index of the end-of-text token in each row of `input_ids` [B, L].

  None takes the position of the largest id (the first one, on ties), as CLIP does: <|endoftext|>
  is the last entry of its vocabulary. That breaks once tokens are added after it (textual
  inversion), so pass the eos id then; a given id picks its first occurrence (position 0 if
  absent).
  """
  if eos_token_id is None:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax(input_ids == eos_token_id, axis=-1)


_dense_init = nn.initializers.normal(0.02)


class SelfAttention(nn.Module):
  """Multi-head attention softmax(Q K^T / sqrt(d_head) + mask) V with separate q/k/v/out
  projections (transformers' `CLIPAttention`)."""

  config: TextEncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    b, length, _ = x.shape
    dense = lambda name: nn.Dense(  # noqa: E731
        cfg.width, dtype=self.dtype, kernel_init=_dense_init, name=name)
    q, k, v = (dense(nm)(x).reshape(b, length, cfg.heads, cfg.head_dim)
               for nm in ("q_proj", "k_proj", "v_proj"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * cfg.head_dim ** -0.5
    # One `where` with the most negative finite value: a fully masked row (a padded query)
    # becomes uniform instead of NaN.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, cfg.width)
    return dense("out_proj")(y)


class MLP(nn.Module):
  """fc2(act(fc1(x))), width -> mlp_width -> width."""

  config: TextEncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = nn.Dense(cfg.mlp_width, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
    h = ACTIVATIONS[cfg.activation](h)
    return nn.Dense(cfg.width, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(h)


def _layer_norm(cfg: TextEncoderConfig, name: str, dtype: Dtype) -> nn.LayerNorm:
  # Two-pass variance, as torch.nn.LayerNorm computes it.
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=dtype, name=name)


class TextEncoderLayer(nn.Module):
  """Pre-LN block: x + self_attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""

  config: TextEncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    x = x + SelfAttention(cfg, self.dtype, name="self_attn")(
        _layer_norm(cfg, "layer_norm1", self.dtype)(x), mask)
    return x + MLP(cfg, self.dtype, name="mlp")(_layer_norm(cfg, "layer_norm2", self.dtype)(x))


class Embeddings(nn.Module):
  """token_embedding(ids) + position_embedding(0..L-1)."""

  config: TextEncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    cfg = self.config
    tok = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(0.02),
                   dtype=self.dtype, name="token_embedding")
    pos = nn.Embed(cfg.max_length, cfg.width, embedding_init=nn.initializers.normal(0.01),
                   dtype=self.dtype, name="position_embedding")
    return tok(input_ids) + pos(jnp.arange(input_ids.shape[-1]))[None]


class Encoder(nn.Module):
  """The stack of `layers` TextEncoderLayers (`layers_i` is transformers' `layers.i`)."""

  config: TextEncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    for i in range(self.config.layers):
      x = TextEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
    return x


class TextEncoder(nn.Module):
  """Token ids [B, L] (L <= max_length) -> last hidden states [B, L, width] after the final
  LayerNorm (what SD 1.x cross-attends to), and optionally the pooled [B, width] state at the
  end-of-text token (see `eos_positions`).

  `attention_mask` [B, L] (1 = real token) additionally hides padded keys, as transformers does
  when given one; SD 1.x passes none (its padding is <|endoftext|> tokens that the causal mask
  already keeps away from the real ones). Parameters are float32; `dtype` is the compute dtype
  (attention logits and softmax stay float32).
  """

  config: TextEncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
               return_pooled: bool = False, eos_token_id: int | None = None):
    cfg = self.config
    if input_ids.ndim != 2 or input_ids.shape[1] > cfg.max_length:
      raise ConfigError("text_encoder.input_ids.shape", tuple(input_ids.shape),
                        f"[batch, length <= max_length={cfg.max_length}]")
    length = input_ids.shape[1]
    mask = causal_mask(length)[None, None]  # [1, 1, Lq, Lk]
    if attention_mask is not None:
      mask = mask & (attention_mask[:, None, None, :] > 0)
    x = Embeddings(cfg, self.dtype, name="embeddings")(input_ids)
    x = Encoder(cfg, self.dtype, name="encoder")(x, mask)
    hidden = _layer_norm(cfg, "final_layer_norm", self.dtype)(x)
    if not return_pooled:
      return hidden
    pos = eos_positions(input_ids, eos_token_id)
    return hidden, hidden[jnp.arange(hidden.shape[0]), pos]


def token_embedding(params: dict) -> jax.Array:
  """The [vocab_size, width] token embedding inside `params` (or `{'params': params}`)."""
  tree = params["params"] if "params" in params else params
  return tree["embeddings"]["token_embedding"]["embedding"]


def add_token_rows(params: dict, n_new: int, init_ids: int | Sequence[int]) -> dict:
  """Returns `params` with `n_new` rows appended to the token embedding, row i a copy of the row
  of `init_ids[i]` (an int initialises all from one token, e.g. the metaclass word).

  Nothing else is copied or changed: old rows stay bit-identical and other leaves are the same
  objects. Apply the result with `dataclasses.replace(config, vocab_size=vocab_size + n_new)`; the
  new ids are vocab_size .. vocab_size + n_new - 1, what the tokenizers' `add_tokens` hands out
  when the tokenizer's vocabulary matches the embedding. Accepts `params` or `{'params': params}`.
  """
  table = token_embedding(params)
  vocab = table.shape[0]
  ids = [init_ids] * n_new if isinstance(init_ids, (int, np.integer)) else list(init_ids)
  if n_new < 1 or len(ids) != n_new:
    raise ConfigError("add_token_rows.init_ids", init_ids, f"one id or {n_new} ids (n_new >= 1)")
  if any(not 0 <= int(i) < vocab for i in ids):
    raise ConfigError("add_token_rows.init_ids", init_ids, f"ids in [0, {vocab})")
  new_table = jnp.concatenate([table, jnp.asarray(table)[jnp.asarray(ids, jnp.int32)]], axis=0)
  wrapped = "params" in params
  tree = params["params"] if wrapped else params
  emb = tree["embeddings"]
  tree = {**tree, "embeddings": {**emb, "token_embedding": {
      **emb["token_embedding"], "embedding": new_table}}}
  return {**params, "params": tree} if wrapped else tree
