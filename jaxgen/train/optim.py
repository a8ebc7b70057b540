"""Optimisers and learning-rate schedules from a config section (see `configlib.optim_config`)."""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """constant | cosine | warmup_cosine | linear, each with optional linear warm-up."""
  lr, warmup = cfg.lr, cfg.warmup_steps
  decay_steps = max(num_steps - warmup, 1)
  end = lr * cfg.end_lr_factor
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule in ("cosine", "warmup_cosine"):
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_factor)
  else:  # linear
    main = optax.linear_schedule(lr, end, decay_steps)
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """Adam / AdamW / SGD(momentum, nesterov, L2 weight decay) with optional global-norm clipping.

  SGD's weight decay is the classic L2 term added to the gradient (as torch.optim.SGD does, which
  the Diff-Mix recipe assumes); AdamW's is decoupled.
  """
  schedule = make_schedule(cfg, num_steps)
  if cfg.name == "adam":
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.weight_decay:
      opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
  elif cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  else:
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else
                      optax.identity(),
                      optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  if cfg.clip_norm and cfg.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt
