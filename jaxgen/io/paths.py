"""One path layer for every file jaxgen reads or writes: local paths or fsspec URLs.

A workdir, a data folder or a weight file may be a local path or a URL such as `gs://bucket/run`
(Cloud Storage, through `gcsfs`: `pip install -e .[gcs]`), `s3://...` (`s3fs`) or any other
protocol fsspec knows (`memory://` in tests). Local paths go straight to `os` and the builtins,
so local behaviour is exactly Python's; URLs go through `fsspec`. Orbax checkpoints take the same
strings (orbax and tensorstore open `gs://` themselves).

Object stores have no rename and no append: `atomic_writer` (jaxgen.io.files) writes an object
in one upload, which appears whole or not at all, and appending (the metrics log) rewrites the
object. Joining and `basename` are `posixpath`'s (as `os.path`'s on POSIX), which keep
`gs://b/x` intact, so callers join paths with `os.path.join` whatever the path.
"""

from __future__ import annotations

import builtins
import collections.abc
import functools
import glob as _glob
import io
import os
import posixpath
import shutil
import threading
from typing import IO, Any, Callable

import numpy as np

# numpy parses every .npy header with ast.literal_eval, and CPython 3.11's ast keeps one recursion
# counter per interpreter: two threads parsing at once can fail with "SystemError: AST constructor
# recursion depth mismatch" (CPython gh-106905). Sources read records on grain's threads, so every
# .npy/.npz read in jaxgen holds this lock: an .npz member for its whole read (numpy parses the
# header inside it), so large compressed members read by several threads take turns.
NPY_HEADER_LOCK = threading.Lock()

join = posixpath.join
basename = posixpath.basename


def is_url(path: str) -> bool:
  """True for `protocol://...` other than `file://` (which is a local path)."""
  scheme, sep, _ = str(path).partition("://")
  return bool(sep) and scheme.isidentifier() and scheme != "file"


def local(path: str) -> str:
  """`file:///x` as `/x`; any other string unchanged."""
  path = os.fspath(path)
  return path[len("file://"):] if path.startswith("file://") else path


def filesystem(path: str) -> tuple[Any, str]:
  """(fsspec filesystem, path without its protocol) for a URL."""
  import fsspec  # only URL paths need it
  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    protocol = path.partition("://")[0]
    hint = " (pip install -e .[gcs])" if protocol == "gs" else ""
    raise OSError(f"{path}: no filesystem for '{protocol}://' ({e}){hint}") from None


def absolute(path: str) -> str:
  """An absolute local path; a URL unchanged (it is absolute already)."""
  return path if is_url(path) else os.path.abspath(local(path))


def _dispatch(path: str, local_fn: Callable[..., Any], fs_method: str, **fs_kwargs: Any) -> Any:
  """`local_fn(path)` for a local path, else the fsspec filesystem's `fs_method` on the URL."""
  if not is_url(path):
    return local_fn(local(path))
  fs, p = filesystem(path)
  return getattr(fs, fs_method)(p, **fs_kwargs)


def exists(path: str) -> bool:
  return _dispatch(path, os.path.exists, "exists")


def isdir(path: str) -> bool:
  return _dispatch(path, os.path.isdir, "isdir")


def isfile(path: str) -> bool:
  return _dispatch(path, os.path.isfile, "isfile")


def makedirs(path: str) -> None:
  """Creates `path` and its parents; existing is fine (object stores have no directories to make,
  fsspec turns this into a no-op or a marker as the store requires)."""
  _dispatch(path, functools.partial(os.makedirs, exist_ok=True), "makedirs", exist_ok=True)


def listdir(path: str) -> list[str]:
  """Entry names (not paths) in `path`, like os.listdir."""
  if not is_url(path):
    return os.listdir(local(path))
  fs, p = filesystem(path)
  return [posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False) if e.rstrip("/") != p.rstrip("/")]


def glob(pattern: str) -> list[str]:
  """Sorted matches; URLs come back as URLs."""
  if not is_url(pattern):
    return sorted(_glob.glob(local(pattern)))
  fs, p = filesystem(pattern)
  return sorted(fs.unstrip_protocol(m) for m in fs.glob(p))


class _ObjectAppender:
  """Append mode on an object store, which cannot append: the object is rewritten whole at each
  flush (fine for logs of kilobytes to a few megabytes). Text when `encoding` is given."""

  def __init__(self, path: str, encoding: str | None):
    self._path, self._encoding = path, encoding
    self._data = bytearray(read_bytes(path) if exists(path) else b"")
    self._dirty = False
    self.closed = False

  def write(self, data: bytes | str) -> int:
    self._data += data.encode(self._encoding) if isinstance(data, str) else data
    self._dirty = True
    return len(data)

  def flush(self) -> None:
    if self._dirty and not self.closed:
      write_bytes(self._path, bytes(self._data))
      self._dirty = False

  def close(self) -> None:
    if not self.closed:
      self.flush()
      self.closed = True

  def __enter__(self) -> "_ObjectAppender":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def open(path: str, mode: str = "r", encoding: str | None = None) -> IO[Any]:  # noqa: A001
  """A file object, like the builtin; text modes default to UTF-8. Append modes on a URL rewrite
  the object at each flush (object stores cannot append)."""
  if "b" not in mode and encoding is None:
    encoding = "utf-8"
  if not is_url(path):
    return builtins.open(local(path), mode, encoding=encoding)
  if mode.startswith("a"):
    return _ObjectAppender(path, None if "b" in mode else encoding)
  fs, p = filesystem(path)
  return fs.open(p, mode, encoding=encoding) if "b" not in mode else fs.open(p, mode)


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  with open(path, "r") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` in one piece (not atomic locally: use jaxgen.io.files.atomic_writer)."""
  if not is_url(path):
    with open(path, "wb") as f:
      f.write(data)
    return
  fs, p = filesystem(path)
  fs.pipe_file(p, data)


class LockedNpz(collections.abc.Mapping):
  """An NpzFile whose member reads hold NPY_HEADER_LOCK (each parses an .npy header); a context
  manager like the NpzFile, whose other attributes (`files`, `close`) it passes through."""

  def __init__(self, npz: Any):
    self._npz = npz

  def __getitem__(self, key: str) -> np.ndarray:
    with NPY_HEADER_LOCK:
      return self._npz[key]

  def __iter__(self):
    return iter(self._npz.files)

  def __len__(self) -> int:
    return len(self._npz.files)

  def __getattr__(self, name: str) -> Any:
    if name == "_npz":  # not yet set (copy / unpickle): no delegation loop
      raise AttributeError(name)
    return getattr(self._npz, name)

  def __enter__(self) -> "LockedNpz":
    return self

  def __exit__(self, *exc: Any) -> None:
    self._npz.close()


def load_npz(path: str, **kwargs: Any) -> Any:
  """`np.load(path, **kwargs)`: an NpzFile (as a LockedNpz, a context manager) or an array; URLs
  are read whole first."""
  source = local(path) if not is_url(path) else io.BytesIO(read_bytes(path))
  with NPY_HEADER_LOCK:  # an .npy's header is parsed here, an .npz member's on reading it
    loaded = np.load(source, **kwargs)
  return LockedNpz(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else loaded


def getsize(path: str) -> int:
  return int(_dispatch(path, os.path.getsize, "size"))


def remove(path: str) -> None:
  _dispatch(path, os.remove, "rm")


def rmtree(path: str) -> None:
  _dispatch(path, shutil.rmtree, "rm", recursive=True)


def rename(source: str, target: str) -> None:
  """os.replace locally; on an object store a copy then a delete (not atomic: used only to move
  a damaged checkpoint aside)."""
  if not is_url(source) and not is_url(target):
    os.replace(local(source), local(target))
    return
  fs, s = filesystem(source)
  _, t = filesystem(target)
  fs.mv(s, t, recursive=True)


def copy(source: str, target: str) -> None:
  """Copies one file to a file path or into an existing directory; either side may be a URL."""
  if isdir(target):
    target = join(target, basename(source))
  if not is_url(source) and not is_url(target):
    shutil.copy(local(source), local(target))
    return
  with open(source, "rb") as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
