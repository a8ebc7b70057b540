"""The one path layer (jaxgen.io.paths): local paths unchanged, fsspec URLs for workdirs on
cloud storage, tested on fsspec's in-memory filesystem and on a fake `gs://` backed by a local
directory (no network here)."""

import json
import os
import sys
import threading

import fsspec
import numpy as np
import orbax.checkpoint as ocp
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from jaxgen import main as jaxgen_main
from jaxgen.data.folder import decode_image, list_class_folders
from jaxgen.io import files, paths
from jaxgen.io.images import encode_png
from jaxgen.train.writers import MetricWriter, read_metrics


@pytest.fixture
def memory_root():
  root = f"memory://jaxgen-test-{os.getpid()}-{np.random.randint(1 << 30)}"
  yield root
  fs, p = paths.filesystem(root)
  if fs.exists(p):
    fs.rm(p, recursive=True)


def test_local_paths_and_urls_are_told_apart():
  assert not paths.is_url("/tmp/x") and not paths.is_url("relative/x")
  assert not paths.is_url("file:///tmp/x") and paths.local("file:///tmp/x") == "/tmp/x"
  assert paths.is_url("gs://bucket/run") and paths.is_url("memory://a") and paths.is_url("s3://b/k")
  assert paths.absolute("gs://bucket/run") == "gs://bucket/run"
  assert paths.absolute("x") == os.path.abspath("x")
  assert os.path.join("gs://bucket/run", "stages", "a.json") == "gs://bucket/run/stages/a.json"


def test_file_operations_on_a_url(memory_root):
  run = f"{memory_root}/run"
  files.atomic_write_json(f"{run}/stages/a.json", {"step": np.int64(3)})
  files.atomic_save_npz(f"{run}/models/stats.npz", mean=np.arange(4.0))
  assert paths.exists(f"{run}/stages/a.json") and paths.isfile(f"{run}/stages/a.json")
  assert paths.isdir(f"{run}/stages") and not paths.isfile(f"{run}/stages")
  assert not paths.exists(f"{run}/nothing.json")
  assert sorted(paths.listdir(run)) == ["models", "stages"]
  assert files.read_json(f"{run}/stages/a.json") == {"step": 3}
  with paths.load_npz(f"{run}/models/stats.npz") as f:
    np.testing.assert_array_equal(f["mean"], np.arange(4.0))
  assert [paths.basename(p) for p in paths.glob(f"{run}/*/*.json")] == ["a.json"]
  assert paths.getsize(f"{run}/stages/a.json") == len(paths.read_bytes(f"{run}/stages/a.json"))
  for _ in range(2):  # append mode reopens and extends the object (object stores cannot append)
    with paths.open(f"{run}/log.txt", "a") as f:
      f.write("line\n")
  assert paths.read_text(f"{run}/log.txt") == "line\nline\n"
  paths.rename(f"{run}/stages", f"{run}/corrupt_stages")
  assert not paths.exists(f"{run}/stages/a.json") and paths.exists(f"{run}/corrupt_stages/a.json")
  paths.copy(f"{run}/log.txt", f"{run}/models")  # into a directory, like shutil.copy
  assert paths.read_text(f"{run}/models/log.txt") == "line\nline\n"
  paths.remove(f"{run}/log.txt")
  paths.rmtree(f"{run}/models")
  assert sorted(paths.listdir(run)) == ["corrupt_stages"]


def test_npz_reads_wait_for_the_header_lock(tmp_path):
  """numpy parses .npy headers with ast, which CPython 3.11 cannot run on two threads at once
  (CI failed once on grain's read threads): every member read and .npy load waits for the lock."""
  np.savez(tmp_path / "a.npz", x=np.arange(3), y=np.ones(2))
  np.save(tmp_path / "b.npy", np.arange(5))
  with paths.load_npz(str(tmp_path / "a.npz")) as f:
    assert sorted(f) == ["x", "y"] == sorted(f.files) and len(f) == 2 and "x" in f
    np.testing.assert_array_equal(dict(f.items())["x"], np.arange(3))
    done = []
    with paths.NPY_HEADER_LOCK:
      reader = threading.Thread(target=lambda: done.append(f["y"]))
      reader.start()
      reader.join(0.5)
      assert reader.is_alive() and not done  # blocked while another thread parses
    reader.join()
    np.testing.assert_array_equal(done[0], np.ones(2))
  with paths.NPY_HEADER_LOCK:
    loader = threading.Thread(target=lambda: done.append(paths.load_npz(str(tmp_path / "b.npy"))))
    loader.start()
    loader.join(0.5)
    assert loader.is_alive()
  loader.join()
  np.testing.assert_array_equal(done[1], np.arange(5))


def test_a_failed_write_leaves_no_object(memory_root):
  path = f"{memory_root}/results.json"
  with pytest.raises(RuntimeError):
    with files.atomic_writer(path) as f:
      f.write(b"half")
      raise RuntimeError("killed")
  assert not paths.exists(path)


def test_an_unknown_protocol_is_a_one_line_error():
  with pytest.raises(OSError, match=r"nosuchfs://x: no filesystem for 'nosuchfs://'"):
    paths.exists("nosuchfs://x")


def test_metric_writer_and_images_on_a_url(memory_root):
  logdir = f"{memory_root}/logs"
  for step in (1, 2):  # a resumed run appends to the same log
    writer = MetricWriter(logdir)
    writer.write_scalars(step, {"loss": 1.0 / step})
    writer.close()
  assert [r["loss"] for r in read_metrics(logdir)] == [1.0, 0.5]
  assert any(name.startswith("events.out.tfevents") for name in paths.listdir(logdir))
  writer = MetricWriter(logdir, tensorboard=False)
  writer.write_images(3, {"samples/grid": np.zeros((4, 4, 3), np.uint8)})
  assert paths.listdir(f"{logdir}/images") == ["samples_grid_00000003.png"]


def test_an_image_folder_on_a_url(memory_root):
  image = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
  for name in ("cat/0.png", "cat/1.png", "dog/0.png"):
    files.atomic_write_bytes(f"{memory_root}/data/{name}", encode_png(image))
  classes, items = list_class_folders(f"{memory_root}/data")
  assert classes == ["cat", "dog"] and [label for _, label in items] == [0, 0, 1]
  np.testing.assert_array_equal(decode_image(items[0][0], channels=3), image)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """`gs://` served by a local directory: fsspec's registry maps the protocol to it, and orbax
  (whose tensorstore opens gs:// with its own driver, unreachable here) is pointed at the same
  directory. Returns the local root that stands for `gs://`."""
  root = tmp_path / "gcs"
  root.mkdir()

  class FakeGCS(DirFileSystem):
    protocol = "gs"

    def __init__(self, *args, **kwargs):
      super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))

  fsspec.register_implementation("gs", FakeGCS, clobber=True)
  real_manager = ocp.CheckpointManager

  def manager(directory, *args, **kwargs):
    return real_manager(str(directory).replace("gs://", f"{root}/"), *args, **kwargs)

  monkeypatch.setattr(ocp, "CheckpointManager", manager)
  yield root
  sys.modules["fsspec.registry"]._registry.pop("gs", None)  # back to "install gcsfs" afterwards


def test_a_classifier_run_with_its_workdir_on_gs_matches_a_local_run(fake_gcs, tmp_path):
  """The classifier's tiny preset with --workdir=gs://...: every file (stage markers, config,
  metrics log, TensorBoard events, checkpoints, results, report) lands in the bucket, the numbers
  equal a local run's, and a second invocation resumes from the bucket (nothing retrains)."""
  args = ["jaxgen.main", "--config=configs/classifier.py:tiny", "--config.classifier.train.num_steps=4",
          "--config.classifier.train.log_every=1", "--config.classifier.train.checkpoint_every=2"]
  local = tmp_path / "local"
  assert jaxgen_main.run([*args, f"--workdir={local}"]) == 0
  assert jaxgen_main.run([*args, "--workdir=gs://bucket/runs/classifier"]) == 0
  in_bucket = fake_gcs / "bucket" / "runs" / "classifier"
  for name in ("stages/train.json", "logs/metrics.jsonl", "checkpoints/classifier/4", "eval/metrics.json",
               "eval/confusion.png", "results.json", "report.md"):
    assert (in_bucket / name).exists(), name
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(in_bucket / "logs"))
  ours = json.loads((in_bucket / "eval" / "metrics.json").read_text())
  theirs = json.loads((local / "eval" / "metrics.json").read_text())
  assert ours == theirs
  losses = lambda d: [r["classifier/loss"] for r in read_metrics(str(d / "logs")) if "classifier/loss" in r]
  assert losses(in_bucket) == losses(local) and len(losses(local)) == 4
  assert jaxgen_main.run([*args, "--workdir=gs://bucket/runs/classifier"]) == 0  # resumes: done
  assert losses(in_bucket) == losses(local)  # no step was trained again


_TINY_RUN_FLAGS = {  # method -> flags that keep its tiny run short
    "mvld": (),
    "lrgmm": (),
    "softlabel_gan": ("--config.variants=('soft',)", "--config.log_images=False"),
    "dimvida": (),
    "t2i": (),
    "diffmix": (),
}


@pytest.mark.slow  # ~1-4 min per method on 2 cores
@pytest.mark.parametrize("method", sorted(_TINY_RUN_FLAGS))
def test_every_method_runs_and_resumes_with_its_workdir_on_gs(method, fake_gcs, tmp_path, monkeypatch):
  """Each method's tiny preset with --workdir=gs://...: runs to its report, every file in the
  bucket and none beside it, and a second invocation finds every stage done."""
  config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        f"{method}.py")
  monkeypatch.chdir(tmp_path)  # a URL mistaken for a local path would write here
  args = ["jaxgen.main", f"--config={config}:tiny", *_TINY_RUN_FLAGS[method],
          f"--workdir=gs://bucket/{method}"]
  assert jaxgen_main.run(args) == 0
  in_bucket = fake_gcs / "bucket" / method
  assert (in_bucket / "results.json").exists() and (in_bucket / "report.md").exists()
  assert sorted(os.listdir(tmp_path)) == ["gcs"]  # nothing written beside the bucket
  done = sorted(os.listdir(in_bucket / "stages"))
  stamps = {name: (in_bucket / "stages" / name).stat().st_mtime_ns for name in done}
  assert jaxgen_main.run(args) == 0
  assert {name: (in_bucket / "stages" / name).stat().st_mtime_ns for name in done} == stamps
