"""The networks that judge generated views: classifier (coherence), FID features, LPIPS.

Standard networks are used when their weight files are given in the config (FID InceptionV3 via
`evaluate.inception_path`; LPIPS-SqueezeNet, as paper 000 uses, via `evaluate.lpips_backbone_path`
and `evaluate.lpips_linear_path`). Offline, as here, the in-domain classifier trained by the
`train_classifier` stage provides FID features (its penultimate layer) and an uncalibrated
in-domain LPIPS on its four stage outputs; every report names which one produced each number.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen.errors import ConfigError
from jaxgen.mvld.evaluate import Judges
from jaxgen.parallel.batching import batched_apply

LPIPS_LAYERS = ("stage1", "stage2", "stage3", "stage4")


def _batched_pairs(fn, x: np.ndarray, y: np.ndarray, batch_size: int, mesh=None) -> np.ndarray:
  out = batched_apply(fn, (x, y), batch_size, pad="edge", mesh=mesh)
  return np.zeros((0,), np.float32) if out is None else out


def has_feature_layers(section: ml_collections.ConfigDict, image_size: int,
                       layers: tuple[str, ...]) -> bool:
  """Whether the classifier of config `section` has the submodules `layers` to take features
  from (traced on abstract shapes; nothing is computed)."""
  from jaxgen.classifier.config import build_model  # pylint: disable=import-outside-toplevel
  from jaxgen.metrics.lpips import capture_features  # pylint: disable=import-outside-toplevel
  model = build_model(section, 2, image_size=image_size)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
  try:
    jax.eval_shape(lambda v, x: capture_features(model.apply, v, x, layers, {"train": False}),
                   variables, x)
  except ValueError:
    return False
  return True


def check_judge_architecture(config: ml_collections.ConfigDict, section: str) -> None:
  """Before anything trains: without both LPIPS weight files, LPIPS is computed on the judge
  classifier's LPIPS_LAYERS, so the architecture of `config[section]` must have them."""
  ev = config.evaluate
  if ev.lpips_backbone_path and ev.lpips_linear_path:
    return
  if not has_feature_layers(config[section], config.data.image_size, LPIPS_LAYERS):
    raise ConfigError(f"{section}.arch", config[section].arch,
                      f"a judge with the submodules {', '.join(LPIPS_LAYERS)} for the in-domain LPIPS "
                      "(resnet18, resnet50), or both evaluate.lpips_backbone_path and "
                      "evaluate.lpips_linear_path")


def build_judges(config: ml_collections.ConfigDict, classifier, mesh,
                 section: str = "classifier") -> Judges:
  """Judges from the trained in-domain classifier (config section `section`) and any standard
  weight files configured in `config.evaluate`. Every judge splits its batches over the mesh's
  data axis (the classifier carries its own mesh)."""
  cfg = config.evaluate
  arch = config[section].arch
  bs = config[section].eval_batch_size  # every judge here runs the classifier's network

  if cfg.inception_path:
    from jaxgen.metrics.inception import inception_feature_fn, load_fid_inception
    inception = inception_feature_fn(load_fid_inception(cfg.inception_path), mesh=mesh)
    features = lambda images: inception(images)[0]  # noqa: E731
    feature_network = f"InceptionV3 pool3 (FID weights {cfg.inception_path})"
  else:
    features = lambda images: classifier.features(images)  # noqa: E731
    feature_network = (f"in-domain {arch} classifier trained by jaxgen on this data "
                       "(penultimate features), not InceptionV3: numbers are not comparable "
                       "with published FIDs")

  if cfg.lpips_backbone_path and cfg.lpips_linear_path:
    from jaxgen.metrics.lpips import load_lpips, lpips, lpips_label
    variables = load_lpips(cfg.lpips_backbone_path, cfg.lpips_linear_path, "squeeze")
    pair_fn = jax.jit(functools.partial(lpips, variables=variables, net="squeeze"))
    lpips_network = lpips_label("squeeze")
  else:
    from jaxgen.metrics.lpips import domain_lpips, domain_lpips_label
    pair_fn = jax.jit(functools.partial(domain_lpips, apply_fn=classifier.apply_fn,
                                        variables=classifier.variables, layer_names=LPIPS_LAYERS,
                                        apply_kwargs={"train": False},
                                        preprocess=classifier.preprocess))
    lpips_network = domain_lpips_label(arch, LPIPS_LAYERS)

  return Judges(logits=lambda images: classifier.logits(images, batch_size=bs),
                features=features,
                lpips=lambda x, y: _batched_pairs(pair_fn, x, y, bs, mesh),
                feature_network=feature_network, lpips_network=lpips_network)
