"""Fine-tuning the backbone on a fine-grained target (Diff-Mix paper 001 sec. 3.3, Fig. 3).

Each target class i gets an identifier token "<v_i>" and the prompt "a photo of a <v_i>
[metaclass]". Three strategies (paper Table 5):

* `ti` (textual inversion, Gal et al. 2023): only the identifiers' embedding rows train
  (initialised from the metaclass word); every other row and every network weight stays
  bit-identical (`param_groups.mask_rows` and `freeze`).
* `db` (DreamBooth through LoRA, Ruiz et al. 2023): LoRA factors on the U-Net's attention
  projections train (rank 10, B = 0 at start); the identifiers are fixed, distinct rows (random
  rows at the embedding table's scale, standing in for DreamBooth's rare tokens).
* `ti_db`: both, each group with its own learning rate (`multi_lr_optimizer`); the paper's choice.

The loss is the denoising loss of pre-training on the target's latents; the U-Net's base
weights ride along in `TrainState.extra` (not differentiated), so the trained tree holds only the
LoRA factors and the text encoder, of which only the masked rows move.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxgen import configlib
from jaxgen.data.batches import training_batches
from jaxgen.errors import ConfigError
from jaxgen.nets.cond_unet import CondUNet
from jaxgen.nets.kl_autoencoder import sample_posterior
from jaxgen.nets.lora import LoRAConfig, apply_with_lora, init_lora, merge_lora
from jaxgen.nets.text_encoder import add_token_rows, token_embedding
from jaxgen.t2i import backbone as bb
from jaxgen.t2i.train import denoising_loss
from jaxgen.train import loop
from jaxgen.train.optim import make_optimizer
from jaxgen.train.param_groups import embedding_row_mask, label_params, mask_rows, multi_lr_optimizer
from jaxgen.train.state import TrainState

STRATEGIES = ("ti", "db", "ti_db")
EMBEDDING_PATH = r"text/embeddings/token_embedding/embedding"


def identifier_tokens(num_classes: int) -> list[str]:
  return [f"<v{i}>" for i in range(num_classes)]


def class_prompts(num_classes: int, metaclass: str) -> list[str]:
  """"a photo of a <v_i> metaclass" for each class (paper 3.3: "[V_i] [metaclass]")."""
  return [f"a photo of a {tok} {metaclass}" for tok in identifier_tokens(num_classes)]


@dataclasses.dataclass
class FineTuned:
  """What fine-tuning produced: the grown text config, its variables, the LoRA (or None)."""

  config: bb.BackboneConfig
  text: dict
  lora: Any
  lora_config: LoRAConfig
  token_ids: np.ndarray

  def unet(self, base_unet: dict) -> dict:
    """The U-Net variables for sampling: LoRA merged into the base weights (or the base)."""
    if self.lora is None:
      return base_unet
    return {"params": merge_lora(base_unet["params"], self.lora, self.lora_config)}


def add_identifiers(config: bb.BackboneConfig, text: dict, tokenizer, num_classes: int,
                    metaclass: str, strategy: str, key: jax.Array
                    ) -> tuple[bb.BackboneConfig, dict, np.ndarray]:
  """Adds "<v_i>" to `tokenizer` (in place) and rows to the embedding: copies of the metaclass
  word's row (ti, ti_db) or random rows with the table's per-entry std (db)."""
  if strategy not in STRATEGIES:
    raise ConfigError("finetune.strategy", strategy, f"one of {STRATEGIES}")
  meta_ids = tokenizer.tokenize(metaclass)
  if len(meta_ids) != 1 or meta_ids[0] == getattr(tokenizer, "unk_id", -1):
    raise ConfigError("finetune.metaclass", metaclass, "one word of the tokenizer's vocabulary")
  vocab = token_embedding(text["params"]).shape[0]
  if tokenizer.vocab_size != vocab:
    raise ConfigError("finetune.tokenizer", tokenizer.vocab_size,
                      f"a vocabulary as large as the embedding table ({vocab})")
  ids = np.asarray(tokenizer.add_tokens(identifier_tokens(num_classes)))
  params = add_token_rows(text["params"], num_classes, meta_ids[0])
  if strategy == "db":
    table = token_embedding(params)
    rows = jax.random.normal(key, (num_classes, table.shape[1])) * jnp.std(table[:vocab])
    emb = params["embeddings"]["token_embedding"]
    params = {**params, "embeddings": {**params["embeddings"], "token_embedding": {
        **emb, "embedding": table.at[vocab:].set(rows)}}}
  grown = dataclasses.replace(config, text=dataclasses.replace(config.text,
                                                               vocab_size=vocab + num_classes))
  return grown, {"params": params}, ids


def finetune(config: bb.BackboneConfig, params: dict, tokenizer, data: dict[str, np.ndarray],
             num_classes: int, metaclass: str, cfg: ml_collections.ConfigDict, *, workdir: str,
             mesh, key: jax.Array, writer, seed: int, name: str = "finetune") -> FineTuned:
  """Fine-tune on data {'mean', 'logvar', 'labels'} (the target's unscaled posterior moments).

  cfg: strategy, lora_rank, lora_alpha, lr_lora, lr_ti and `train` (a configlib.train_config
  whose optim section gives the schedule and optimiser of both groups).
  """
  k_tok, k_lora, k_train = jax.random.split(key, 3)
  config, text, token_ids = add_identifiers(config, params["text"], tokenizer, num_classes,
                                            metaclass, cfg.strategy, k_tok)
  prompt_ids = tokenizer.encode(class_prompts(num_classes, metaclass), config.text.max_length)
  lora_cfg = LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha or None)
  use_lora, use_ti = cfg.strategy in ("db", "ti_db"), cfg.strategy in ("ti", "ti_db")
  trained = {"text": text["params"]}
  if use_lora:
    trained["lora"] = init_lora(k_lora, params["unet"]["params"], lora_cfg)
  rules = []
  if use_ti:
    rules.append((EMBEDDING_PATH, "ti"))
  if use_lora:
    rules.append((r"lora/.*", "lora"))
  labels = label_params(trained, rules)
  tcfg = cfg.train
  groups = {}
  if use_ti:
    vocab = config.text.vocab_size
    groups["ti"] = mask_rows(_optimizer(tcfg, cfg.lr_ti), embedding_row_mask(vocab, token_ids))
  if use_lora:
    groups["lora"] = _optimizer(tcfg, cfg.lr_lora)
  state = TrainState.create(trained, multi_lr_optimizer(groups, labels),
                            extra={"unet": params["unet"]["params"]})
  prompt_table = jnp.asarray(prompt_ids)
  module = CondUNet(config.unet)
  scale = config.vae.scaling_factor

  def step_fn(state, batch, key):
    k_post, k_loss = jax.random.split(key)
    x0 = scale * sample_posterior(batch["mean"], batch["logvar"], k_post)
    ids = prompt_table[batch["labels"]]
    base = {"params": state.extra["unet"]}

    def loss_fn(p):
      context = bb.encode_prompts({"params": p["text"]}, config, ids)
      if use_lora:
        apply = lambda x, n, c: apply_with_lora(module, base, p["lora"], lora_cfg, x, n, c)  # noqa: E731
      else:
        apply = lambda x, n, c: module.apply(base, x, n, c)  # noqa: E731
      return denoising_loss(apply, config, x0, context, k_loss)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}

  batches = training_batches({k: data[k] for k in ("mean", "logvar", "labels")},
                             global_batch_size=tcfg.batch_size, seed=seed)
  state = loop.train(name=name, state=state, step_fn=step_fn, batches=batches, cfg=tcfg,
                     workdir=workdir, mesh=mesh, key=k_train, writer=writer)
  out = jax.device_get(state.params)
  return FineTuned(config, {"params": out["text"]}, out.get("lora"), lora_cfg, token_ids)


def restore(config: bb.BackboneConfig, saved: dict, tokenizer, num_classes: int,
            cfg: ml_collections.ConfigDict) -> FineTuned:
  """The `FineTuned` of a saved run ({'text', 'lora'} as the t2i / Diff-Mix runs save it): adds
  the identifiers to `tokenizer` (in place) and grows the text config to the saved table."""
  token_ids = np.asarray(tokenizer.add_tokens(identifier_tokens(num_classes)))
  rows = token_embedding(saved["text"]["params"]).shape[0]
  if rows != tokenizer.vocab_size:
    raise ConfigError("finetune.checkpoint", rows,
                      f"an embedding table of the tokenizer's {tokenizer.vocab_size} tokens")
  grown = dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=rows))
  lora = saved.get("lora") or None
  return FineTuned(grown, saved["text"], lora,
                   LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha or None), token_ids)


def validate_config(config: ml_collections.ConfigDict, prefix: str, data_parallel: int) -> None:
  """Check a fine-tuning section (strategy, lora_rank, lora_alpha, lr_lora, lr_ti, train)."""
  f = configlib.get_path(config, prefix)
  configlib.require_choice(config, f"{prefix}.strategy", STRATEGIES)
  configlib.require_positive_int(config, f"{prefix}.lora_rank")
  configlib.require(f.lora_alpha >= 0, f"{prefix}.lora_alpha", f.lora_alpha, "0 (= rank) or > 0")
  for key in ("lr_lora", "lr_ti"):
    configlib.require(f[key] > 0, f"{prefix}.{key}", f[key], "a positive number")
  configlib.validate_train(config, f"{prefix}.train", data_parallel)


def _optimizer(tcfg: ml_collections.ConfigDict, lr: float) -> optax.GradientTransformation:
  optim = ml_collections.ConfigDict(tcfg.optim.to_dict())
  optim.lr = lr
  return make_optimizer(optim, tcfg.num_steps)
