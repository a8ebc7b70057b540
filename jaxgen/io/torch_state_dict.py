"""Read PyTorch `.pth`/`.pt` state dicts into NumPy arrays without importing torch.

Two on-disk formats written by `torch.save` are understood:

* the zip format (default since torch 1.6): `<prefix>/data.pkl` holds a pickle whose persistent
  ids name storages stored as raw bytes in `<prefix>/data/<key>` (`<prefix>/byteorder` says
  "little" or "big");
* the legacy stream format (torch < 1.6, e.g. the lpips package's `weights/v0.1/*.pth`): five
  pickles in a row (magic number, protocol version, system info, the object, the list of storage
  keys), followed by each storage as a little-endian int64 element count and its raw bytes.

The pre-0.4 tar format is detected and rejected with a message. Unpickling is restricted: only
the tensor-rebuild functions, `OrderedDict` and storage types can be named by the pickle, so a
weight file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import tarfile
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io import paths

# Storage class name in the pickle -> element dtype.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Nestings used by training scripts around the actual state dict, outermost key first.
_WRAPPER_KEYS = ("params_ema", "state_dict", "model", "params")

_DEFAULT_HINT = ("jaxgen never downloads weights: fetch the file yourself (docs/"
                 "feature_networks.md lists where each weight file comes from) and point the "
                 "config at it")


class _StorageType:
  """Stands in for `torch.<Name>Storage`; only its element dtype matters."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype


class _Storage:
  """A (view of a) flat storage whose bytes are filled in once they have been read."""

  def __init__(self, key: str, dtype: np.dtype, offset: int = 0, numel: int | None = None):
    self.key, self.dtype, self.offset, self.numel = key, dtype, offset, numel


class _LazyTensor:
  """Arguments of `_rebuild_tensor_v2`, materialised after all storages are known."""

  def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class _ParameterType:
  """Stands in for `torch.nn.Parameter` in `_rebuild_from_type_v2`; parameters become arrays."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state
  return func(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): _ParameterType,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only tensor/dict globals and hands storages to `on_storage`."""

  def __init__(self, file: io.BufferedIOBase, on_storage: Callable[[tuple], _Storage]):
    super().__init__(file, encoding="utf-8")
    self._on_storage = on_storage

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name} (only tensors and dicts)")

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid:
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id type {kind!r}")
    return self._on_storage(pid[1:])


def _storage_from_pid(data: tuple) -> _Storage:
  """('storage', type, key, location, numel[, view_metadata]) -> `_Storage`."""
  storage_type, key, _location, numel = data[:4]
  if not isinstance(storage_type, _StorageType):
    raise pickle.UnpicklingError(f"storage type {storage_type!r} is not a known storage class")
  key = str(key)
  view = data[4] if len(data) > 4 else None
  if view is not None:  # legacy views share the root's bytes
    _view_key, offset, view_size = view
    return _Storage(key, storage_type.dtype, int(offset), int(view_size))
  return _Storage(key, storage_type.dtype, 0, int(numel))


def _materialise(obj: Any, buffers: dict[str, np.ndarray]) -> Any:
  """Replace every `_LazyTensor` inside dicts/lists/tuples by a contiguous NumPy array."""
  if isinstance(obj, _LazyTensor):
    st = obj.storage
    if st.key not in buffers:
      raise pickle.UnpicklingError(f"storage {st.key!r} has no data")
    flat = buffers[st.key]
    end = len(flat) if st.numel is None else st.offset + st.numel
    flat = flat[st.offset:end]
    if any(s == 0 for s in obj.size):
      return np.zeros(obj.size, flat.dtype)
    last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
    if obj.offset < 0 or any(s < 0 for s in obj.stride) or last >= len(flat):
      raise pickle.UnpicklingError(
          f"tensor of size {obj.size} reaches element {last} of a storage of {len(flat)}")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[obj.offset:], shape=obj.size, strides=[s * item for s in obj.stride], writeable=False)
    return np.array(view)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v, buffers)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, buffers) for v in obj)
  return obj


def _native(buf: bytes, dtype: np.dtype, big_endian: bool) -> np.ndarray:
  if len(buf) % dtype.itemsize:
    raise pickle.UnpicklingError(f"storage of {len(buf)} bytes is not a multiple of {dtype}")
  if big_endian and dtype.itemsize > 1:
    return np.frombuffer(buf, dtype.newbyteorder(">")).astype(dtype)
  return np.frombuffer(buf, dtype)


def _load_zip(f: io.BufferedIOBase) -> Any:
  with zipfile.ZipFile(f) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise pickle.UnpicklingError("zip archive has no single data.pkl (not a torch.save file)")
    prefix = pkl[0][: -len("data.pkl")]
    big = False
    if prefix + "byteorder" in names:
      big = zf.read(prefix + "byteorder").decode().strip() == "big"
    buffers: dict[str, np.ndarray] = {}

    def on_storage(data: tuple) -> _Storage:
      st = _storage_from_pid(data)
      if st.key not in buffers:
        buffers[st.key] = _native(zf.read(f"{prefix}data/{st.key}"), st.dtype, big)
      return st

    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), on_storage).load()
    return _materialise(obj, buffers)


def _load_legacy(f: io.BufferedIOBase) -> Any:
  roots: dict[str, np.dtype] = {}

  def on_storage(data: tuple) -> _Storage:
    st = _storage_from_pid(data)
    roots.setdefault(st.key, st.dtype)
    return st

  if _RestrictedUnpickler(f, on_storage).load() != _LEGACY_MAGIC:
    raise pickle.UnpicklingError("bad magic number")
  if _RestrictedUnpickler(f, on_storage).load() != _LEGACY_PROTOCOL:
    raise pickle.UnpicklingError("unsupported legacy protocol version")
  # System info (endianness and type sizes of the writer) is standard on every current machine.
  _RestrictedUnpickler(f, on_storage).load()

  obj = _RestrictedUnpickler(f, on_storage).load()
  keys = _RestrictedUnpickler(f, on_storage).load()
  buffers: dict[str, np.ndarray] = {}
  for key in keys:
    key = str(key)
    (numel,) = struct.unpack("<q", f.read(8))
    dtype = roots[key]
    raw = f.read(numel * dtype.itemsize)
    if numel < 0 or len(raw) != numel * dtype.itemsize:
      raise pickle.UnpicklingError(f"storage {key!r} is truncated")
    buffers[key] = _native(raw, dtype, big_endian=False)
  return _materialise(obj, buffers)


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  for k, v in obj.items():
    name = f"{prefix}{k}"
    if isinstance(v, np.ndarray):
      out[name] = v
    elif isinstance(v, dict):
      _flatten(v, name + ".", out)
    # Scalars and strings (epoch counters, config) are not weights.


def unwrap_state_dict(obj: Any) -> dict[str, np.ndarray]:
  """Returns the flat `{dotted.name: array}` weights inside a loaded checkpoint object.

  Descends through the nestings training scripts add ('params_ema' first, then 'state_dict',
  'model', 'params'), flattens nested dicts with dots, drops non-array entries and strips a
  'module.' prefix shared by every key (left by `torch.nn.DataParallel`).
  """
  while isinstance(obj, dict):
    inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, dict):
    raise pickle.UnpicklingError(f"top-level object is a {type(obj).__name__}, not a dict")
  out: dict[str, np.ndarray] = {}
  _flatten(obj, "", out)
  if not out:
    raise pickle.UnpicklingError("no tensors found")
  if all(k.startswith("module.") for k in out):
    out = {k[len("module."):]: v for k, v in out.items()}
  return out


def load_state_dict(path: str, *, hint: str | None = None) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (`torch.save` zip or legacy format) as `{name: np.ndarray}`.

  Tensors keep their dtype (bfloat16 as `ml_dtypes.bfloat16`), shape and PyTorch layout (convs
  are OIHW); strided views are copied to contiguous arrays. Nothing is imported from torch and
  the pickle may only name tensor-rebuild functions, `OrderedDict` and storage types.

  Args:
    path: the `.pth`/`.pt` file.
    hint: where this particular file comes from, appended to the missing-file message.
  Raises:
    DataError: the file is missing (with `hint`), or is not a readable/complete torch.save file.
  """
  if not paths.isfile(path):
    raise DataError(f"weight file {path} does not exist; {hint or _DEFAULT_HINT}")
  try:
    with paths.open(path, "rb") as f:
      if zipfile.is_zipfile(f):
        f.seek(0)
        obj = _load_zip(f)
      else:
        f.seek(0)
        try:
          is_tar = tarfile.is_tarfile(path)
        except OSError:
          is_tar = False
        if is_tar:
          raise DataError(f"{path} uses the pre-0.4 tar format of torch.save; re-save it with a "
                          "recent torch (torch.save(torch.load(p), p)) and try again")
        obj = _load_legacy(f)
    return unwrap_state_dict(obj)
  except DataError:
    raise
  except Exception as err:  # any parse failure means the file is not what it claims to be
    raise DataError(f"{path} is not a readable PyTorch state dict ({type(err).__name__}: {err}); "
                    "it may be truncated or corrupt, download it again") from None


# Flax leaf name -> PyTorch parameter/buffer name.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def to_flax_variables(state_dict: dict[str, np.ndarray], target: dict[str, Any],
                      module_name: Callable[[tuple[str, ...]], str], source: str) -> dict[str, Any]:
  """Fills a Flax variable tree with PyTorch weights, converting layouts.

  Conv weights go OIHW -> HWIO, linear weights (out, in) -> (in, out); BatchNorm weight/bias/
  running_mean/running_var go to `params.scale/bias` and `batch_stats.mean/var`. Keys of the state
  dict that the model does not use (classifier heads, `num_batches_tracked`) are ignored.

  Args:
    state_dict: `{torch.name: array}` as returned by `load_state_dict`.
    target: the model's variables (arrays or `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape`).
    module_name: maps a Flax module path (without collection and leaf) to the PyTorch module name.
    source: what the state dict is, for error messages ("pt_inception-2015-12-05 weights").
  Raises:
    DataError: a needed key is missing or has the wrong shape.
  """
  from flax import traverse_util  # local: keeps the reader importable without flax

  flat = traverse_util.flatten_dict(target)
  out: dict[tuple[str, ...], np.ndarray] = {}
  missing = []
  for path, leaf in flat.items():
    name = f"{module_name(tuple(path[1:-1]))}.{_LEAF_NAMES.get(path[-1], path[-1])}"
    if name not in state_dict:
      missing.append(name)
      continue
    value = np.asarray(state_dict[name], dtype=np.float32)
    if path[-1] == "kernel" and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif path[-1] == "kernel" and value.ndim == 2:
      value = value.T
    if tuple(value.shape) != tuple(leaf.shape):
      raise DataError(f"{source}: {name} has shape {value.shape} (after layout change), the model "
                      f"expects {tuple(leaf.shape)}; is this the right weight file?")
    out[path] = value
  if missing:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise DataError(f"{source}: missing keys {shown}; is this the right weight file?")
  return traverse_util.unflatten_dict(out)


def to_torch_layout(leaf: str, value: Any) -> np.ndarray:
  """A Flax leaf in PyTorch's layout (float32): conv kernel HWIO -> OIHW, Dense kernel
  [in, out] -> Linear [out, in], anything else as it is (the inverse of the importers')."""
  value = np.asarray(value, np.float32)
  if leaf == "kernel" and value.ndim == 4:
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if leaf == "kernel" and value.ndim == 2:
    return np.ascontiguousarray(value.T)
  return value
