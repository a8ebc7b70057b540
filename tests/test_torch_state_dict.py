"""The torch-free state-dict reader on files written here by hand in torch.save's formats.

The files follow the documented layouts (zip: `archive/data.pkl` with persistent storage ids and
`archive/data/<key>`; legacy: five pickles then raw storages) and are pickled with protocol 2
against stand-in `torch` modules, so the real parsing path runs without torch. The round trip
against real `torch.save` files is in tests/test_parity_features.py (-m torch). Arrays must
come back bit-exact.
"""

import collections
import io
import pickle
import struct
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxgen.errors import DataError
from jaxgen.io.torch_state_dict import load_state_dict, to_flax_variables

_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
          np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.float64): "DoubleStorage",
          np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
          np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


class _Storage:

  def __init__(self, key, data):
    self.key, self.data = key, data


class _Tensor:
  """Pickles like torch.Tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  def __reduce__(self):
    return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


@pytest.fixture
def fake_torch(monkeypatch):
  """Stand-in `torch` / `torch._utils` modules so pickle can name their globals."""
  torch_mod = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled, never called")

  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in _NAMES.values():
    setattr(torch_mod, name, type(name, (), {"__module__": "torch"}))
  torch_mod._utils = utils
  monkeypatch.setitem(sys.modules, "torch", torch_mod)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  return torch_mod


def _tensor(storage, array, offset=0, stride=None):
  if stride is None:
    stride = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
  return _Tensor(storage, offset, array.shape, stride)


def _pickle(obj, torch_mod, legacy):
  buf = io.BytesIO()
  pickler = pickle.Pickler(buf, protocol=2)

  def persistent_id(o):
    if isinstance(o, _Storage):
      stype = getattr(torch_mod, _NAMES[o.data.dtype])
      pid = ("storage", stype, o.key, "cpu", o.data.size)
      return pid + (None,) if legacy else pid
    return None

  pickler.persistent_id = persistent_id
  pickler.dump(obj)
  return buf.getvalue()


def _write_zip(path, obj, storages, torch_mod, big_endian=False):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", _pickle(obj, torch_mod, legacy=False))
    zf.writestr("archive/byteorder", "big" if big_endian else "little")
    for st in storages:
      data = st.data.astype(st.data.dtype.newbyteorder(">")) if big_endian else st.data
      zf.writestr(f"archive/data/{st.key}", data.tobytes())
    zf.writestr("archive/version", "3\n")


def _write_legacy(path, obj, storages, torch_mod):
  with open(path, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(_pickle(obj, torch_mod, legacy=True))
    pickle.dump([st.key for st in storages], f, protocol=2)
    for st in storages:
      f.write(struct.pack("<q", st.data.size))
      f.write(st.data.tobytes())


def _example():
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
  shared = rng.normal(size=24).astype(np.float32)  # two tensors view one storage
  half = rng.normal(size=5).astype(np.float16)
  bf16 = rng.normal(size=(2, 3)).astype(ml_dtypes.bfloat16)
  ints = np.arange(6, dtype=np.int64)
  flags = np.array([True, False, True])
  st = {"0": _Storage("0", conv.ravel()), "1": _Storage("1", shared),
        "2": _Storage("2", half), "3": _Storage("3", bf16.ravel()), "4": _Storage("4", ints),
        "5": _Storage("5", flags)}
  expected = {
      "conv.weight": conv,
      "a": shared[:12].reshape(3, 4).T,  # transposed: strides (1, 4)
      "b": shared[13:13 + 6].reshape(2, 3),  # offset 13 into the same storage
      "half": half, "bf16": bf16, "ints": ints.reshape(2, 3), "flags": flags,
      "scalar": shared[23:24].reshape(()),
  }
  sd = collections.OrderedDict([
      ("module.conv.weight", _tensor(st["0"], conv)),
      ("module.a", _Tensor(st["1"], 0, (4, 3), (1, 4))),
      ("module.b", _Tensor(st["1"], 13, (2, 3), (3, 1))),
      ("module.half", _tensor(st["2"], half)),
      ("module.bf16", _tensor(st["3"], bf16)),
      ("module.ints", _Tensor(st["4"], 0, (2, 3), (3, 1))),
      ("module.flags", _tensor(st["5"], flags)),
      ("module.scalar", _Tensor(st["1"], 23, (), ())),
  ])
  return {"state_dict": sd, "epoch": 3}, list(st.values()), expected


def _check(got, expected):
  assert set(got) == set(expected)  # nesting unwrapped, 'module.' stripped, 'epoch' dropped
  for k, v in expected.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize("big_endian", [False, True])
def test_zip_format_round_trip(tmp_path, fake_torch, big_endian):
  obj, storages, expected = _example()
  path = tmp_path / "w.pth"
  _write_zip(path, obj, storages, fake_torch, big_endian)
  _check(load_state_dict(str(path)), expected)


def test_legacy_format_round_trip(tmp_path, fake_torch):
  obj, storages, expected = _example()
  path = tmp_path / "w.pth"
  _write_legacy(path, obj, storages, fake_torch)
  _check(load_state_dict(str(path)), expected)


def test_missing_file_names_path_and_source(tmp_path):
  path = str(tmp_path / "nope.pth")
  with pytest.raises(DataError, match="nope.pth.*never downloads"):
    load_state_dict(path)
  with pytest.raises(DataError, match="get it from X"):
    load_state_dict(path, hint="get it from X")


def test_truncated_and_garbage_files(tmp_path, fake_torch):
  obj, storages, _ = _example()
  good = tmp_path / "good.pth"
  _write_zip(good, obj, storages, fake_torch)
  raw = good.read_bytes()
  for name, data in (("trunc.pth", raw[: len(raw) // 2]), ("garbage.pth", b"\x00hello" * 10),
                     ("empty.pth", b"")):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=name):
      load_state_dict(str(tmp_path / name))
  legacy = tmp_path / "legacy.pth"
  _write_legacy(legacy, obj, storages, fake_torch)
  (tmp_path / "legacy_trunc.pth").write_bytes(legacy.read_bytes()[:-7])
  with pytest.raises(DataError, match="legacy_trunc.pth"):
    load_state_dict(str(tmp_path / "legacy_trunc.pth"))


def test_refuses_arbitrary_globals(tmp_path):
  # A pickle that would call os.system on load must be rejected, not executed.
  payload = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
  with zipfile.ZipFile(tmp_path / "evil.pth", "w") as zf:
    zf.writestr("archive/data.pkl", payload)
  with pytest.raises(DataError, match="refusing to load global os.system"):
    load_state_dict(str(tmp_path / "evil.pth"))


def test_out_of_bounds_view_is_an_error(tmp_path, fake_torch):
  st = _Storage("0", np.zeros(4, np.float32))
  _write_zip(tmp_path / "oob.pth", {"w": _Tensor(st, 2, (3,), (1,))}, [st], fake_torch)
  with pytest.raises(DataError, match="oob.pth"):
    load_state_dict(str(tmp_path / "oob.pth"))


def test_to_flax_variables_layouts():
  rng = np.random.default_rng(0)
  sd = {"c.weight": rng.normal(size=(8, 3, 5, 2)), "c.bias": rng.normal(size=8),
        "d.weight": rng.normal(size=(4, 8)), "n.weight": rng.normal(size=4),
        "n.bias": rng.normal(size=4), "n.running_mean": rng.normal(size=4),
        "n.running_var": rng.uniform(size=4)}
  sd = {k: v.astype(np.float32) for k, v in sd.items()}
  sd["n.num_batches_tracked"] = np.array(3)  # buffers the model does not use are ignored
  target = {"params": {"c": {"kernel": np.zeros((5, 2, 3, 8)), "bias": np.zeros(8)},
                       "d": {"kernel": np.zeros((8, 4))},
                       "n": {"scale": np.zeros(4), "bias": np.zeros(4)}},
            "batch_stats": {"n": {"mean": np.zeros(4), "var": np.zeros(4)}}}
  out = to_flax_variables(sd, target, ".".join, "test weights")
  np.testing.assert_array_equal(out["params"]["c"]["kernel"][4, 1, 2, 7],
                                sd["c.weight"][7, 2, 4, 1])
  np.testing.assert_array_equal(out["params"]["d"]["kernel"], sd["d.weight"].T)
  np.testing.assert_array_equal(out["params"]["n"]["scale"], sd["n.weight"])
  np.testing.assert_array_equal(out["batch_stats"]["n"]["var"], sd["n.running_var"])
  with pytest.raises(DataError, match="missing keys d.weight"):
    to_flax_variables({k: v for k, v in sd.items() if k != "d.weight"}, target, ".".join, "t")
  with pytest.raises(DataError, match="c.bias has shape"):
    to_flax_variables({**sd, "c.bias": np.zeros(9)}, target, ".".join, "t")
