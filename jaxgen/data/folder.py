"""Image-folder source: `<root>/<class_name>/*.png|jpg|jpeg`, decoded lazily with PIL.

Layout: if `<data_dir>/<split>/` is a folder, its class folders are read (e.g. train/ and
test/ side by side); otherwise `<data_dir>` itself holds the class folders and the split is
'all' or a seeded stratified 'train'/'test' split of it. Class names are the sorted folder
names; label = position in that sorted list.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError, DataError
from jaxgen.io import paths

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def decode_image(path: str, *, channels: int = 3, alpha: str = "error") -> np.ndarray:
  """Reads one image file as uint8 [H, W, channels].

  Accepted modes: RGB; L and 1 (gray, repeated to RGB when channels=3); P (palette, expanded);
  with alpha='white' an alpha channel (RGBA/LA) is composited over white, with alpha='drop'
  it is discarded, with alpha='error' (default) it is a wrong channel count. Anything else
  (CMYK, 16-bit, RGB when channels=1) raises DataError naming the file.
  """
  if alpha not in ("error", "white", "drop"):
    raise ConfigError("data.alpha", alpha, "'error', 'white' or 'drop'")
  try:
    with paths.open(path, "rb") as f, Image.open(f) as img:
      img.load()  # decode now: a truncated file must fail here, naming its path
      if img.mode == "1":
        img = img.convert("L")
      if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
      mode = img.mode
      if mode in ("RGBA", "LA") and alpha != "error":
        if alpha == "white":
          base = Image.new("RGBA", img.size, (255, 255, 255, 255))
          img = Image.alpha_composite(base, img.convert("RGBA"))
        img = img.convert("RGB" if mode == "RGBA" else "L")
        mode = img.mode
      if mode == "L" and channels == 3:
        img, mode = img.convert("RGB"), "RGB"
      array = np.asarray(img)
  except FileNotFoundError:
    raise DataError(f"{path}: image file does not exist") from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
    raise DataError(f"{path}: unreadable or truncated image ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
  expected = {1: "L", 3: "RGB"}.get(channels)
  if expected is None:
    raise ConfigError("data.channels", channels, "1 (grayscale) or 3 (RGB)")
  if mode != expected or array.dtype != np.uint8:
    got = array.shape[-1] if array.ndim == 3 else 1
    raise DataError(f"{path}: image mode {mode} ({got} channels, {array.dtype}); expected "
                    f"{channels}-channel 8-bit {'RGB or grayscale' if channels == 3 else 'gray'}")
  return array.reshape(array.shape[0], array.shape[1], channels)


def list_class_folders(root: str) -> tuple[list[str], list[tuple[str, int]]]:
  """Returns (sorted class names, [(file path, label)]) for `root/<class>/*.<ext>`.

  Raises DataError for a missing root, a root without class folders, or a class folder that
  holds no image with one of IMAGE_EXTENSIONS.
  """
  if not paths.isdir(root):
    raise DataError(f"{root}: image folder does not exist")
  classes = sorted(d for d in paths.listdir(root)
                   if paths.isdir(os.path.join(root, d)) and not d.startswith("."))
  if not classes:
    raise DataError(f"{root}: no class folders found; expected {root}/<class_name>/*.png|jpg")
  files: list[tuple[str, int]] = []
  for label, name in enumerate(classes):
    folder = os.path.join(root, name)
    images = sorted(f for f in paths.listdir(folder)
                    if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not images:
      raise DataError(f"{folder}: class '{name}' has no images (.png, .jpg, .jpeg)")
    files.extend((os.path.join(folder, f), label) for f in images)
  return classes, files


class FolderSource(Source):
  """Lazily decoded image folder; records {'image' uint8 [H, W, C], 'label' int32}.

  Without `image_size` the images keep their own size (image_shape (None, None, C)) and the
  pipeline must resize them before batching; with `image_size` each image is resized so the
  shorter side is image_size and then centre-cropped to a square (bilinear, PIL).
  """

  def __init__(self, root: str, files: list[tuple[str, int]], class_names: list[str], *,
               channels: int = 3, image_size: int | None = None, alpha: str = "error",
               name: str = "folder"):
    self.root, self.files, self.name = root, files, name
    self.class_names = tuple(class_names)
    self.num_classes = len(class_names)
    self.channels, self.alpha, self.size = int(channels), alpha, image_size
    self.image_shape = ((image_size, image_size, channels) if image_size
                        else (None, None, channels))
    self._labels = np.asarray([lab for _, lab in files], np.int32)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    path, label = self.files[self._index(index)]
    image = decode_image(path, channels=self.channels, alpha=self.alpha)
    if self.size:
      from jaxgen.data.pipeline import resize_center_crop  # pylint: disable=import-outside-toplevel
      image = resize_center_crop(image, self.size)
    return {"image": image, "label": self._check_label(label, path)}

  def labels(self) -> np.ndarray:
    return self._labels

  def check_files(self) -> None:
    """Decodes every file once so bad images fail before training starts (DataError)."""
    for i in range(len(self)):
      self[i]  # pylint: disable=pointless-statement


def folder_source(split: str, *, data_dir: str | None = None, image_size: int | None = None,
                  channels: int = 3, seed: int = 0, test_fraction: float = 0.2,
                  alpha: str = "error", check_files: bool = False) -> FolderSource:
  """An image-folder split (layout in the module docstring).

  Options: image_size (resize + centre crop), channels (3 or 1), seed/test_fraction (used only
  when `<data_dir>/<split>` does not exist), alpha (see `decode_image`), check_files (decode
  every image now instead of when first read).
  """
  if not data_dir:
    raise ConfigError("data.data_dir", data_dir, "the root folder of <class_name>/*.png images")
  split_dir = os.path.join(data_dir, split)
  if paths.isdir(split_dir):
    classes, files = list_class_folders(split_dir)
    root = split_dir
  else:
    if split not in ("train", "test", "all"):
      raise DataError(f"{split_dir}: split folder does not exist (and '{split}' is not one of "
                      "train/test/all for a seeded split of the class folders)")
    classes, files = list_class_folders(data_dir)
    root = data_dir
    if split != "all":
      if not 0.0 < test_fraction < 1.0:
        raise ConfigError("data.test_fraction", test_fraction, "a fraction in (0, 1)")
      is_test = _seeded_test_mask(np.asarray([lab for _, lab in files]), seed, test_fraction)
      keep = is_test if split == "test" else ~is_test
      files = [f for f, k in zip(files, keep) if k]
  source = FolderSource(root, files, classes, channels=channels, image_size=image_size,
                        alpha=alpha, name=f"folder:{root}")
  if check_files:
    source.check_files()
  return source


def _seeded_test_mask(labels: np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
  """Per class, round(test_fraction * n) seeded-random files go to test (at least one stays)."""
  rng = np.random.default_rng(seed)
  mask = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    n_test = min(int(round(test_fraction * len(idx))), len(idx) - 1)
    mask[rng.permutation(idx)[:n_test]] = True
  return mask
