"""Read and write the safetensors weight format with NumPy only (no torch, no safetensors package).

Layout of a file: an unsigned 64-bit little-endian header length N; N bytes of UTF-8 JSON mapping
each tensor name to `{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}` (offsets into
the byte buffer that follows the header) plus an optional `"__metadata__"` string-to-string map;
then the byte buffer with every tensor's raw little-endian, C-ordered bytes.

Reading validates the header the way the reference implementation does (known dtype, offsets in
range, byte size == prod(shape) * itemsize, tensors tiling the buffer without holes or overlap, a
file neither truncated nor padded) and raises a one-line `DataError` naming the file and tensor.
Tensors are memory-mapped views by default (read-only; nothing is read until used). Writing pads
the header with spaces to a multiple of 8 bytes and orders tensors by decreasing element size, so
every tensor starts at an address aligned for its dtype.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.files import atomic_writer
from jaxgen.io import paths

# safetensors dtype code <-> little-endian NumPy dtype.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
_CODES: dict[np.dtype, str] = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit
_METADATA = "__metadata__"


def _bad(path: str, what: str) -> DataError:
  return DataError(f"{path}: not a valid safetensors file ({what}); it may be truncated or corrupt")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
  out = dict(pairs)
  if len(out) != len(pairs):
    raise ValueError("duplicate key in a JSON object")
  return out


def read_header(path: str) -> tuple[dict[str, dict], dict[str, str], int]:
  """Returns `(tensor_entries, metadata, data_start)` of a safetensors file after validating it.

  `tensor_entries` maps each name to its header entry (dtype, shape, data_offsets); `data_start`
  is the byte offset of the data buffer in the file.

  Raises:
    DataError: the file is missing, or its header is malformed or disagrees with the file size.
  """
  if not paths.isfile(path):
    raise DataError(f"safetensors file {path} does not exist")
  file_size = paths.getsize(path)
  with paths.open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise _bad(path, f"{file_size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER or 8 + n > file_size:
      raise _bad(path, f"header length {n} does not fit a file of {file_size} bytes")
    raw = f.read(n)
  try:
    header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
  except (UnicodeDecodeError, ValueError) as err:
    raise _bad(path, f"header is not UTF-8 JSON: {err}") from None
  if not isinstance(header, dict):
    raise _bad(path, "header is not a JSON object")
  metadata = header.pop(_METADATA, None) or {}
  if not isinstance(metadata, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
    raise _bad(path, "__metadata__ is not a map of strings to strings")
  buffer_size = file_size - 8 - n
  spans = []
  for name, entry in header.items():
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
      raise _bad(path, f"tensor {name!r} entry {entry!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPES:
      raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r} (known: {', '.join(_DTYPES)})")
    if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
      raise _bad(path, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
      raise _bad(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    if offsets[1] > buffer_size:
      raise _bad(path, f"tensor {name!r} ends at byte {offsets[1]} of a {buffer_size}-byte "
                       "data buffer (truncated?)")
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
      raise _bad(path, f"tensor {name!r} has {offsets[1] - offsets[0]} bytes, its {dtype} shape "
                       f"{shape} needs {expected}")
    spans.append((offsets[0], offsets[1], name))
  pos = 0
  for begin, end, name in sorted(spans):
    if begin != pos:
      raise _bad(path, f"tensor {name!r} starts at byte {begin}, expected {pos} (hole or overlap)")
    pos = end
  if pos != buffer_size:
    raise _bad(path, f"tensors cover {pos} bytes of a {buffer_size}-byte data buffer")
  return header, dict(metadata), 8 + n


def load_safetensors(path: str, *, mmap: bool = True) -> dict[str, np.ndarray]:
  """Reads every tensor of a safetensors file as `{name: np.ndarray}` in file order.

  Dtypes: F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U64 U32 U16 U8 BOOL (bfloat16 and
  float8 as ml_dtypes). With `mmap=True` the arrays are read-only views of one memory map of the
  file (copy one with `np.array` to modify it); with `mmap=False` they are in-memory copies.

  Raises:
    DataError: missing file or invalid header (names the file and tensor).
  """
  header, _, start = read_header(path)
  if mmap and not paths.is_url(path) and paths.getsize(path) > start:
    buf = np.memmap(paths.local(path), dtype=np.uint8, mode="r")
  else:
    with paths.open(path, "rb") as f:
      buf = np.frombuffer(bytearray(f.read()), dtype=np.uint8)  # writable
  out: dict[str, np.ndarray] = {}
  for name, entry in header.items():
    dtype, shape = _DTYPES[entry["dtype"]], tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if begin == end:
      out[name] = np.zeros(shape, dtype)
      continue
    arr = buf[start + begin:start + end].view(dtype).reshape(shape)
    if not arr.dtype.isnative:
      arr = arr.astype(arr.dtype.newbyteorder("="))  # only on big-endian hosts
    out[name] = arr
  return out


def load_safetensors_metadata(path: str) -> dict[str, str]:
  """The `__metadata__` map of a safetensors file (empty if it has none)."""
  return read_header(path)[1]


def _code(name: str, arr: np.ndarray) -> str:
  code = _CODES.get(arr.dtype.newbyteorder("="))
  if code is None:
    raise DataError(f"tensor {name!r} has dtype {arr.dtype}, which safetensors cannot store "
                    f"(storable: {', '.join(_DTYPES)})")
  return code


def save_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` (NumPy or JAX arrays) to a safetensors file, atomically.

  Args:
    path: destination file.
    tensors: `{name: array}`; names must be non-empty strings other than '__metadata__'.
    metadata: optional `{str: str}` stored as the header's `__metadata__`.
  Raises:
    DataError: an unstorable dtype, a bad name, or non-string metadata.
  """
  arrays: dict[str, np.ndarray] = {}
  for name, value in tensors.items():
    if not isinstance(name, str) or not name or name == _METADATA:
      raise DataError(f"{path}: tensor name {name!r} is not allowed in a safetensors file")
    arrays[name] = np.asarray(value)
  header: dict[str, object] = {}
  if metadata:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
      raise DataError(f"{path}: safetensors metadata must map strings to strings, got {metadata!r}")
    header[_METADATA] = dict(metadata)
  # Larger elements first (then by name) keeps every tensor aligned for its dtype.
  order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
  pos = 0
  for name in order:
    arr = arrays[name]
    code = _code(name, arr)
    header[name] = {"dtype": code, "shape": list(arr.shape),
                    "data_offsets": [pos, pos + arr.nbytes]}
    pos += arr.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-(8 + len(raw)) % 8)
  # Streamed to a temporary file renamed into place: no second in-memory copy of the weights,
  # and a killed writer never leaves a half-written file under `path`.
  with atomic_writer(path) as f:
    f.write(struct.pack("<Q", len(raw)) + raw)
    for name in order:
      arr = np.ascontiguousarray(arrays[name], dtype=_DTYPES[header[name]["dtype"]])
      f.write(arr.reshape(-1).view(np.uint8).data)
