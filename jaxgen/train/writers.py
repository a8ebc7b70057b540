"""Metric writers in clu's style, without TensorFlow.

`MetricWriter` offers clu's `write_scalars(step, dict)` / `write_images(step, dict)` interface and
writes both TensorBoard event files (through tensorboardX, which needs no TensorFlow; clu's own
writers would pull in TF and TensorBoard, +1.4 GB) and a JSON-lines file `metrics.jsonl` that
scripts and tests read directly. Only process 0 writes; other processes get a no-op writer.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import numpy as np

from jaxgen.io import paths
from jaxgen.io.images import save_png


class MetricWriter:
  """TensorBoard event files + `<logdir>/metrics.jsonl` + PNGs under `<logdir>/images/`."""

  def __init__(self, logdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.logdir = logdir
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    paths.makedirs(logdir)
    self._jsonl = paths.open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
      if paths.is_url(logdir):
        _event_files_through_path_layer(logdir)
      self._tb = SummaryWriter(logdir=logdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in values.items():
        self._tb.add_scalar(key, value, int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Each value is one uint8 HWC image (e.g. a grid from `jaxgen.io.images.image_grid`)."""
    if not self.enabled:
      return
    for key, image in images.items():
      image = np.asarray(image)
      save_png(os.path.join(self.logdir, "images", f"{key.replace('/', '_')}_{int(step):08d}.png"),
               image)
      if self._tb is not None:
        self._tb.add_image(key, image, int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class _PathLayerRecordFiles:
  """tensorboardX's writer-factory interface over jaxgen.io.paths (its own gs:// writer needs
  google-cloud-storage; this one works for any fsspec URL)."""

  def open(self, path: str) -> Any:
    return paths.open(path, "ab")

  def directory_check(self, path: str) -> None:
    paths.makedirs(path)


def _event_files_through_path_layer(logdir: str) -> None:
  from tensorboardX import record_writer
  record_writer.register_writer_factory(logdir.partition("://")[0], _PathLayerRecordFiles())


def read_metrics(logdir: str) -> list[dict]:
  """All records of `<logdir>/metrics.jsonl`, in order."""
  path = os.path.join(logdir, "metrics.jsonl")
  if not paths.exists(path):
    return []
  with paths.open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
