"""The NumPy safetensors reader/writer and `load_weights` dispatch.

The reader is checked against a file assembled byte by byte from the format description
(8-byte little-endian header length, JSON header, raw little-endian data), every dtype makes a
bit-exact round trip, and damaged files (truncated, bad offsets, bad JSON) are one-line
DataErrors naming the file and tensor. The opt-in torch test (-m torch) exchanges files with the
`safetensors` package itself and reads a Lightning-style `torch.save` checkpoint.
"""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from jaxgen.errors import DataError
from jaxgen.io.safetensors import load_safetensors, load_safetensors_metadata, save_safetensors
from jaxgen.io.weights import load_weights


def _examples():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(3, 4))
  return {
      "f64": f, "f32": f.astype(np.float32), "f16": f.astype(np.float16),
      "bf16": f.astype(ml_dtypes.bfloat16),
      "f8e4m3": f.astype(ml_dtypes.float8_e4m3fn), "f8e5m2": f.astype(ml_dtypes.float8_e5m2),
      "i64": rng.integers(-2**62, 2**62, size=(5,)),
      "i32": rng.integers(-2**30, 2**30, size=(2, 3)).astype(np.int32),
      "i16": np.array([-32768, 0, 32767], np.int16), "i8": np.array([[-128, 5], [7, 127]], np.int8),
      "u8": np.arange(7, dtype=np.uint8), "u16": np.array([65535, 1], np.uint16),
      "u32": np.array([2**32 - 1], np.uint32), "u64": np.array([2**64 - 1], np.uint64),
      "bool": np.array([True, False, True]),
      "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.float32),
      "big_endian": f.astype(">f4"),
  }


def _raw_file(path, header, data):
  raw = json.dumps(header).encode()
  with open(path, "wb") as fh:
    fh.write(struct.pack("<Q", len(raw)) + raw + data)


def _same_bits(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  assert a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=")
  native = lambda x: x.astype(x.dtype.newbyteorder("=")).tobytes()
  assert native(a) == native(b)


def test_reads_a_file_written_from_the_format_description(tmp_path):
  path = str(tmp_path / "spec.safetensors")
  w = np.array([[1.5, -2.0], [0.25, 8.0]], "<f4")
  ids = np.array([3, -1, 7], "<i8")
  half = np.array([1.0, -0.5, 65504.0], "<f2")
  header = {"__metadata__": {"format": "pt"},
            "b.ids": {"dtype": "I64", "shape": [3], "data_offsets": [16, 40]},
            "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "c.half": {"dtype": "F16", "shape": [3], "data_offsets": [40, 46]}}
  _raw_file(path, header, w.tobytes() + ids.tobytes() + half.tobytes())
  got = load_safetensors(path)
  assert list(got) == ["b.ids", "a.weight", "c.half"]
  np.testing.assert_array_equal(got["a.weight"], w)
  np.testing.assert_array_equal(got["b.ids"], ids)
  np.testing.assert_array_equal(got["c.half"], half)
  assert load_safetensors_metadata(path) == {"format": "pt"}
  assert isinstance(got["a.weight"], np.memmap) or isinstance(got["a.weight"].base, np.memmap)
  assert not got["a.weight"].flags.writeable
  in_memory = load_safetensors(path, mmap=False)["c.half"]
  assert in_memory.flags.c_contiguous and in_memory.flags.writeable


def test_every_dtype_round_trips_bit_exactly(tmp_path):
  path = str(tmp_path / "all.safetensors")
  tensors = _examples()
  save_safetensors(path, tensors, metadata={"note": "hi", "n": "3"})
  with open(path, "rb") as fh:
    (n,) = struct.unpack("<Q", fh.read(8))
    header = json.loads(fh.read(n))
  assert (8 + n) % 8 == 0  # header padded so the data buffer is 8-byte aligned
  for name, entry in header.items():
    if name != "__metadata__":
      assert entry["data_offsets"][0] % np.dtype(tensors[name].dtype).itemsize == 0, name
  assert header["bf16"]["dtype"] == "BF16" and header["bool"]["dtype"] == "BOOL"
  assert header["big_endian"]["dtype"] == "F32" and header["scalar"]["shape"] == []
  for mmap in (True, False):
    got = load_safetensors(path, mmap=mmap)
    assert set(got) == set(tensors)
    for name, value in tensors.items():
      _same_bits(got[name], value)
  assert load_safetensors_metadata(path) == {"note": "hi", "n": "3"}


def test_writer_rejects_what_the_format_cannot_hold(tmp_path):
  path = str(tmp_path / "x.safetensors")
  with pytest.raises(DataError, match="complex"):
    save_safetensors(path, {"c": np.ones(2, np.complex64)})
  with pytest.raises(DataError, match="metadata"):
    save_safetensors(path, {"a": np.ones(2)}, metadata={"n": 3})
  with pytest.raises(DataError, match="__metadata__"):
    save_safetensors(path, {"__metadata__": np.ones(2)})
  assert not os.path.exists(path)


@pytest.mark.parametrize("damage, match", [
    ("truncate", "'w'.*truncated"),
    ("short", "shorter than the 8-byte"),
    ("header_length", "header length"),
    ("json", "not UTF-8 JSON"),
    ("size", r"'w' has 16 bytes, its F32 shape \[6\] needs 24"),
    ("dtype", "unknown dtype 'F128'"),
    ("hole", "'w'.*hole or overlap"),
    ("overlap", "'w' starts at byte 16, expected 20"),
    ("extra", "cover 40 bytes of a 41-byte"),
])
def test_damaged_files_are_data_errors_naming_file_and_tensor(tmp_path, damage, match):
  path = str(tmp_path / "bad.safetensors")
  data = np.arange(10, dtype="<f4").tobytes()
  header = {"v": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "w": {"dtype": "F32", "shape": [6], "data_offsets": [16, 40]}}
  if damage == "size":
    header["w"]["data_offsets"] = [16, 32]
    data = data[:32]
  elif damage == "dtype":
    header["v"]["dtype"] = "F128"
  elif damage == "hole":
    header["w"]["data_offsets"] = [20, 40]
    header["w"]["shape"] = [5]
  elif damage == "overlap":
    header["v"]["data_offsets"] = [0, 20]
    header["v"]["shape"] = [5]
  elif damage == "extra":
    data += b"\0"
  _raw_file(path, header, data)
  if damage == "truncate":
    with open(path, "r+b") as fh:
      fh.truncate(os.path.getsize(path) - 4)
  elif damage == "short":
    with open(path, "wb") as fh:
      fh.write(b"\x01\x02")
  elif damage == "header_length":
    with open(path, "r+b") as fh:
      fh.write(struct.pack("<Q", 10**6))
  elif damage == "json":
    with open(path, "r+b") as fh:
      fh.seek(8)
      fh.write(b"{'v'")
  with pytest.raises(DataError, match=match) as err:
    load_safetensors(path)
  assert path in str(err.value) and "\n" not in str(err.value)


def test_load_weights_dispatch(tmp_path):
  a = {"conv.weight": np.ones((2, 3, 1, 1), np.float32)}
  b = {"conv.weight": np.zeros((2, 3, 1, 1), np.float32)}
  unet = tmp_path / "unet"
  save_safetensors(str(unet / "diffusion_pytorch_model.safetensors"), a)
  save_safetensors(str(unet / "model.safetensors"), b)  # lower priority than the diffusers name
  np.testing.assert_array_equal(load_weights(str(unet))["conv.weight"], a["conv.weight"])
  save_safetensors(str(unet / "diffusion_pytorch_model.fp16.safetensors"),
                   {"conv.weight": a["conv.weight"].astype(np.float16)})
  assert load_weights(str(unet), variant="fp16")["conv.weight"].dtype == np.float16
  te = tmp_path / "text_encoder"
  save_safetensors(str(te / "model-00001-of-00002.safetensors"), {"x": np.ones(2, np.float32)})
  save_safetensors(str(te / "model-00002-of-00002.safetensors"), {"y": np.ones(3, np.int64)})
  (te / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors",
                                      "y": "model-00002-of-00002.safetensors"}}))
  got = load_weights(str(te))
  assert set(got) == {"x", "y"} and got["y"].dtype == np.int64
  with pytest.raises(DataError, match=str(tmp_path / "nope.safetensors")):
    load_weights(str(tmp_path / "nope.safetensors"))
  with pytest.raises(DataError, match="no weight file"):
    load_weights(str(tmp_path))
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(DataError, match="unknown suffix"):
    load_weights(str(tmp_path / "w.npz"))
  (tmp_path / "w.ckpt").write_bytes(b"garbage")
  with pytest.raises(DataError, match="w.ckpt"):
    load_weights(str(tmp_path / "w.ckpt"))


@pytest.mark.torch
def test_interoperates_with_the_safetensors_package_and_torch_checkpoints(tmp_path):
  torch = pytest.importorskip("torch")
  st_torch = pytest.importorskip("safetensors.torch")
  theirs = {"w": torch.randn(3, 5), "h": torch.randn(4).half(), "b": torch.randn(2, 2).bfloat16(),
            "i": torch.arange(6).reshape(2, 3), "m": torch.tensor([True, False]),
            "u": torch.arange(5, dtype=torch.uint8), "d": torch.randn(2, dtype=torch.float64)}
  path = str(tmp_path / "theirs.safetensors")
  st_torch.save_file(theirs, path, metadata={"format": "pt"})
  got = load_safetensors(path)
  assert load_safetensors_metadata(path) == {"format": "pt"}
  for name, t in theirs.items():
    bf16 = t.dtype == torch.bfloat16  # numpy has no bfloat16: compare the bits
    want = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if bf16 else t.numpy()
    _same_bits(got[name], want)
  ours = str(tmp_path / "ours.safetensors")
  save_safetensors(ours, {k: np.asarray(v) for k, v in got.items()}, metadata={"k": "v"})
  back = st_torch.load_file(ours)
  for name, t in theirs.items():
    assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
  with st_torch.safe_open(ours, framework="pt") as fh:
    assert fh.metadata() == {"k": "v"}
  # A Lightning-style .ckpt (weights under 'state_dict', plus counters) through load_weights.
  ckpt = str(tmp_path / "model.ckpt")
  torch.save({"state_dict": {"model.diffusion_model.out.weight": theirs["w"]}, "global_step": 7,
              "epoch": 1}, ckpt)
  np.testing.assert_array_equal(load_weights(ckpt)["model.diffusion_model.out.weight"],
                                theirs["w"].numpy())
  folder = tmp_path / "te"
  folder.mkdir()
  torch.save({"a": theirs["w"]}, str(folder / "pytorch_model.bin"))
  np.testing.assert_array_equal(load_weights(str(folder))["a"], theirs["w"].numpy())
