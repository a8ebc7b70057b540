"""The one input pipeline: `training_batches` backends, random-resized-crop, class-balanced
streams, classifier runs that stream TFDS / image folders through grain (and resume exactly
after a kill), and two processes joined by jax.distributed that split each global batch."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxgen import main as jaxgen_main
from jaxgen.data.batches import training_batches
from jaxgen.data.memory import ArrayBatches
from jaxgen.data.pipeline import Loader, augment_record, random_resized_crop_box
from jaxgen.data.sources import ArraySource
from jaxgen.errors import ConfigError
from processes import run_two

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _indexed_source(n=40, size=6):
  rng = np.random.default_rng(0)
  return ArraySource({"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                      "label": np.arange(n)}, num_classes=n)


def test_random_resized_crop_box_follows_torchvision_rules():
  rng = np.random.default_rng(0)
  fractions, ratios = [], []
  for _ in range(2000):
    top, left, h, w = random_resized_crop_box(60, 80, rng)
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80 and h > 0 and w > 0
    fractions.append(h * w / (60 * 80))
    ratios.append(w / h)
  # Rounding to whole pixels moves area and ratio slightly outside the drawn intervals.
  assert 0.07 <= min(fractions) and max(fractions) <= 1.0
  assert 0.7 <= min(ratios) and max(ratios) <= 1.4
  assert np.ptp(fractions) > 0.8 and np.ptp(np.log(ratios)) > 0.5  # the ranges are explored
  # Degenerate intervals pin the box: a quarter of the area at ratio 1 is a 500 x 500 square.
  top, left, h, w = random_resized_crop_box(1000, 1000, rng, scale=(0.25, 0.25), ratio=(1, 1))
  assert (h, w) == (500, 500) and 0 <= top <= 500 and 0 <= left <= 500
  # A strip no draw fits: the fallback is the centre crop with the ratio clamped to 3/4 .. 4/3.
  assert random_resized_crop_box(4, 400, rng) == (0, 197, 4, 5)
  assert random_resized_crop_box(400, 4, rng) == (197, 0, 5, 4)


def test_rrc_augment_resizes_the_crop_and_flips_every_view_alike():
  rng = np.random.default_rng(1)
  views = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
  out = augment_record({"images": views, "label": np.int32(0)}, np.random.default_rng(5),
                       "rrc", image_size=8)
  assert out["images"].shape == (3, 8, 8, 3)
  top, left, h, w = random_resized_crop_box(20, 30, np.random.default_rng(5))
  expect = np.asarray(Image.fromarray(views[1, top:top + h, left:left + w]).resize(
      (8, 8), Image.BILINEAR))
  np.testing.assert_array_equal(out["images"][1], expect)


def test_training_batches_uses_memory_for_arrays_and_grain_for_sources():
  arrays = {"image": np.zeros((10, 4, 4, 3), np.uint8), "label": np.arange(10)}
  assert isinstance(training_batches(arrays, global_batch_size=4, seed=0), ArrayBatches)
  loader = training_batches(_indexed_source(), global_batch_size=4, seed=0, augment="flip")
  assert isinstance(loader, Loader) and next(loader)["image"].shape == (4, 6, 6, 3)
  with pytest.raises(ConfigError, match="augment"):
    training_batches(arrays, global_batch_size=4, seed=0, augment="rrc")
  with pytest.raises(ConfigError, match="class_ids"):
    training_batches(arrays, global_batch_size=4, seed=0, sampling="class_balanced")


def test_class_balanced_stream_is_balanced_and_resumes_exactly():
  labels = np.asarray([0] * 90 + [1] * 10)
  src = ArraySource({"image": np.zeros((100, 2, 2, 3), np.uint8), "label": labels}, num_classes=2)
  kw = dict(global_batch_size=8, seed=3, sampling="class_balanced", class_ids=labels)
  loader = training_batches(src, **kw)
  drawn = np.concatenate([next(loader)["label"] for _ in range(50)])
  # 400 draws of a fair class coin: the minority share is 0.5 within 4 standard deviations.
  assert abs(np.mean(drawn == 1) - 0.5) < 4 * np.sqrt(0.25 / 400)
  first = training_batches(src, **kw)
  head = [next(first)["label"] for _ in range(3)]
  state = json.loads(json.dumps(first.get_state()))
  tail = [next(first)["label"] for _ in range(4)]
  resumed = training_batches(src, **kw)
  resumed.set_state(state)
  for want in tail:
    np.testing.assert_array_equal(next(resumed)["label"], want)
  fresh = training_batches(src, **kw)
  np.testing.assert_array_equal(np.concatenate([next(fresh)["label"] for _ in range(3)]),
                                np.concatenate(head))


_WORKER = r"""
import json
import jax
import numpy as np
from jaxgen.parallel.mesh import initialize_distributed
initialize_distributed()
from jaxgen.data.batches import training_batches
from jaxgen.data.sources import ArraySource
labels = np.arange(40)
src = ArraySource({"image": np.zeros((40, 2, 2, 3), np.uint8), "label": labels}, num_classes=40)
result = {"index": jax.process_index(), "count": jax.process_count()}
it = training_batches(src, global_batch_size=8, seed=5, augment="flip")
result["stream"] = [next(it)["label"].tolist() for _ in range(7)]
it = training_batches({"label": labels}, global_batch_size=8, seed=5)
result["memory"] = [next(it)["label"].tolist() for _ in range(7)]
print(json.dumps(result), flush=True)
jax.distributed.shutdown()
"""


def test_two_distributed_processes_see_disjoint_shares_of_each_global_batch():
  shares = [json.loads(out.strip().splitlines()[-1]) for out in run_two(_WORKER)]
  assert [s["index"] for s in shares] == [0, 1] and all(s["count"] == 2 for s in shares)
  labels = np.arange(40)
  src = ArraySource({"image": np.zeros((40, 2, 2, 3), np.uint8), "label": labels}, num_classes=40)
  single = {"stream": training_batches(src, global_batch_size=8, seed=5, augment="flip"),
            "memory": training_batches({"label": labels}, global_batch_size=8, seed=5)}
  for backend, it in single.items():
    for step in range(7):
      a, b = shares[0][backend][step], shares[1][backend][step]
      whole = next(it)["label"].tolist()
      assert len(a) == len(b) == 4 and not set(a) & set(b), (backend, step)
      assert sorted(a + b) == sorted(whole), (backend, step)
      if backend == "stream":  # the grain stream keeps the global order: p0 rows, then p1 rows
        assert a + b == whole


def _write_folder(root, n_per_class=12, classes=("disc", "square"), seed=0):
  """Class folders of PNGs at assorted sizes: discs and squares, told apart by shape."""
  rng = np.random.default_rng(seed)
  for c, name in enumerate(classes):
    os.makedirs(os.path.join(root, name))
    for i in range(n_per_class):
      h, w = int(rng.integers(18, 30)), int(rng.integers(18, 30))
      yy, xx = np.mgrid[:h, :w]
      inside = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2 if c == 0 else
                (abs(yy - h / 2) < min(h, w) / 3) & (abs(xx - w / 2) < min(h, w) / 3))
      image = np.where(inside[..., None], 230, 20).astype(np.uint8).repeat(3, -1)
      Image.fromarray(image).save(os.path.join(root, name, f"{i}.png"))


def _classifier_argv(workdir, data_dir, *extra):
  return ["jaxgen", "--config=configs/classifier.py:tiny", f"--workdir={workdir}",
          "--config.data.name=folder", f"--config.data.data_dir={data_dir}",
          "--config.data.num_train=0", "--config.data.num_test=0", "--config.data.augment=rrc_flip",
          "--config.classifier.train.steps_per_call=5", "--config.classifier.train.checkpoint_every=5",
          "--config.classifier.train.async_checkpoints=false", *extra]


def _metrics(workdir):
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    return json.load(f)


def test_classifier_streams_an_image_folder_and_resumes_exactly_after_a_kill(tmp_path):
  """Training only (--stages=train): the final parameters of a run SIGKILLed at step 15 and
  resumed equal those of an uninterrupted run, which needs the grain iterator's position
  restored as well as the weights (other batches would give other weights)."""
  from jaxgen.classifier.inference import load_classifier_variables
  data = str(tmp_path / "images")
  _write_folder(data)
  full = str(tmp_path / "full")
  assert jaxgen_main.run(_classifier_argv(full, data, "--stages=train")) == 0
  killed = str(tmp_path / "killed")
  env = dict(os.environ, JAXGEN_KILL_AT="classifier:15", PYTHONPATH=ROOT)
  first = subprocess.run([sys.executable, "-m", "jaxgen.main",
                          *_classifier_argv(killed, data, "--stages=train")[1:]],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert first.returncode == -9, first.stderr[-2000:]
  assert os.path.isdir(os.path.join(killed, "checkpoints", "classifier", "15"))
  assert not os.path.isdir(os.path.join(killed, "checkpoints", "classifier", "20"))
  assert jaxgen_main.run(_classifier_argv(killed, data, "--stages=train")) == 0
  want = load_classifier_variables(full, "classifier")
  got = load_classifier_variables(killed, "classifier")
  leaves = list(zip(jax.tree.leaves(want), jax.tree.leaves(got)))
  assert leaves and len(jax.tree.leaves(want)) == len(jax.tree.leaves(got))
  for a, b in leaves:
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_classifier_streams_a_tfds_data_set(tmp_path, capsys):
  tfds = pytest.importorskip("tensorflow_datasets")
  argv = ["jaxgen", "--config=configs/classifier.py:tiny", f"--workdir={tmp_path}",
          "--config.data.name=tfds", "--config.data.tfds_name=cifar10",
          "--config.data.num_train=40", "--config.data.num_test=16"]
  with tfds.testing.mock_data(num_examples=48):
    assert jaxgen_main.run(argv) == 0
  m = _metrics(str(tmp_path))
  assert "TFDS cifar10" in m["data"] and "40 train (streamed by grain" in m["data"]
  assert m["num_examples"] == 16


def test_decode_time_augmentation_is_refused_for_in_memory_data(tmp_path, capsys):
  argv = ["jaxgen", "--config=configs/classifier.py:tiny", f"--workdir={tmp_path}",
          "--config.data.augment=rrc"]
  assert jaxgen_main.run(argv) == 2
  err = capsys.readouterr().err.strip()
  assert "data.augment" in err and len(err.splitlines()) == 1
  assert not os.listdir(tmp_path) or not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def _write_nmr_tree(root, synsets=("02691156", "02958343"), objects=10, size=24, seed=0):
  """The NMR layout: <root>/<synset>/<object>/image/0000..0023.png (no list files: seeded split)."""
  rng = np.random.default_rng(seed)
  for c, synset in enumerate(synsets):
    for o in range(objects):
      odir = os.path.join(root, synset, f"obj{o:03d}", "image")
      os.makedirs(odir)
      base = np.asarray([200, 60, 40] if c == 0 else [40, 90, 200], np.float64)
      for v in range(24):
        yy, xx = np.mgrid[:size, :size]
        shade = 0.6 + 0.4 * np.cos(2 * np.pi * v / 24 + xx / size)
        image = base * shade[..., None] + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            os.path.join(odir, f"{v:04d}.png"))


def test_nmr_each_view_records_match_the_object_records(tmp_path):
  from jaxgen.data.nmr import nmr_source
  _write_nmr_tree(str(tmp_path), objects=3)
  objects = nmr_source("train", data_dir=str(tmp_path), image_size=8, split_fractions=(1, 0, 0))
  views = nmr_source("train", data_dir=str(tmp_path), image_size=8, view_mode="each",
                     split_fractions=(1, 0, 0))
  assert len(views) == 4 * len(objects) and views.image_shape == (8, 8, 3)
  np.testing.assert_array_equal(views.labels(), np.repeat(objects.labels(), 4))
  record = views[4 * 2 + 3]
  np.testing.assert_array_equal(record["image"], objects[2]["images"][3])
  assert int(record["view"]) == 3 and int(record["label"]) == int(objects[2]["label"])


def test_mvld_nmr_path_streams_training_data_end_to_end(tmp_path):
  """MVLD with data.name=nmr on a written NMR tree (the tiny preset's networks, fewer steps):
  the training views and objects stay sources, streamed by grain into the autoencoder and read
  in order for the latent encoding that the diffusion trains on. (The judge classifier takes
  the same per-view source through fit_classifier, streamed as in the folder test above.)"""
  data = str(tmp_path / "nmr")
  _write_nmr_tree(data)
  workdir = tmp_path / "run"
  argv = ["jaxgen.main", "--config=configs/mvld.py:tiny", f"--workdir={workdir}",
          "--config.data.name=nmr", f"--config.data.data_dir={data}",
          "--config.autoencoder.train.num_steps=10", "--config.diffusion.train.num_steps=10",
          "--stages=data,train_autoencoder,train_diffusion"]
  assert jaxgen_main.run(argv) == 0
  with np.load(workdir / "models" / "latent_stats.npz") as f:
    assert f["mean"].shape == (16,) and np.all(np.isfinite(f["std"])) and np.all(f["std"] > 0)
  assert (workdir / "samples" / "data.png").stat().st_size > 0
  assert (workdir / "models" / "score_net.msgpack").stat().st_size > 0


@pytest.mark.slow  # ~30 s (the classifier's folder streaming and resume stay in the default suite): the default suite's 15-min CI budget
def test_softlabel_gan_streams_an_image_folder_through_classifier_soft_labels_and_gans(tmp_path):
  """Softlabel-GAN on an on-disk folder: the training split is a Source (never read whole); its
  classifier and soft labels stream through grain, and so do the GAN's real batches, each record
  with its own label vector. The streamed soft labels equal the classifier's probabilities on the
  same images decoded in memory (same resize; float32, bit for bit). (GAN training itself is the
  same step as on arrays; here its batches are checked, not a compile of the GAN.)"""
  from configs.softlabel_gan import get_config  # pylint: disable=import-outside-toplevel
  from jaxgen.data.memory import source_arrays  # pylint: disable=import-outside-toplevel
  from jaxgen.data.sources import with_fields  # pylint: disable=import-outside-toplevel
  from jaxgen.softlabel_gan import main as sg_main  # pylint: disable=import-outside-toplevel
  from jaxgen.softlabel_gan import train as sg_train  # pylint: disable=import-outside-toplevel
  from jaxgen.softlabel_gan.labels import VARIANTS  # pylint: disable=import-outside-toplevel
  data = str(tmp_path / "folder")
  _write_folder(os.path.join(data, "train"), n_per_class=10)
  _write_folder(os.path.join(data, "test"), n_per_class=4, seed=1)
  # An imbalanced training split: 10 discs, 3 squares.
  for i in range(3, 10):
    os.remove(os.path.join(data, "train", "square", f"{i}.png"))
  config = get_config("tiny")
  config.data.update(name="folder", data_dir=data, imbalance="none", num_test=8)
  config.variants = ("soft",)
  config.log_images = False
  workdir = str(tmp_path / "run")
  sg_main.main(config, workdir, stages=("data", "train_classifier", "soft_labels"))

  run = sg_main.Run(config, workdir)
  source, labels = run.data["train"]
  assert run.streamed and len(source) == 13 and np.bincount(labels).tolist() == [10, 3]
  probs = run.soft_labels()
  in_memory = source_arrays(source, config.data.image_size)["image"]
  np.testing.assert_array_equal(probs, run.classifier().probabilities(
      in_memory, config.classifier.eval_batch_size).astype(np.float32))
  # The GAN's real batches: decoded at image_size, each image with its own row of T_y.
  batches = sg_train.real_batches(source, probs, labels,
                                  config.gan.train.batch_size * config.gan.d_steps,
                                  VARIANTS["soft"].sampling, seed=0,
                                  image_size=config.data.image_size)
  batch = next(batches)
  size = config.gan.train.batch_size * config.gan.d_steps
  assert batch["image"].shape == (size, 32, 32, 3) and batch["image"].dtype == np.uint8
  for image, vector in zip(batch["image"], batch["label"]):
    i = int(np.argmin(np.abs(in_memory.astype(int) - image.astype(int)).sum(axis=(1, 2, 3))))
    np.testing.assert_array_equal(image, in_memory[i])
    np.testing.assert_array_equal(vector, probs[i])
  with pytest.raises(Exception, match="one per record"):
    with_fields(source, label=np.zeros((4, 1)))
