"""The user's own labelled images: an ADM-layout .npz or a class-per-sub-folder image tree.

Both loaders return uint8 images [N, R, R, C] (kept as uint8 in memory; `ArraySource`
converts each batch to float32 [-1, 1]) and int32 labels [N].

  * .npz (the layout the ADM evaluator and this project's sampler write):
      arr_0 uint8 [N, H, W, C] (or [N, H, W] for grey), arr_1 integer labels [N].
  * folder: root/<class_name>/*.png|*.jpg|*.jpeg; classes sorted by name get ids 0..K-1.

Resizing: when the requested resolution differs from an image's size (or the image is
not square) the image is centre-cropped to a square and resized with PIL, LANCZOS when
shrinking and BICUBIC when enlarging. Channels: 1 (PIL 'L', ITU-R 601-2 luma) or 3 (RGB).
Invalid inputs raise errors.BadInputError (a ValueError) naming the offending field or file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gandance_jax import errors
from gandance_jax.data import base

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _resample(src_size: int, dst_size: int):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.Resampling.LANCZOS if dst_size < src_size else Image.Resampling.BICUBIC


def _square_resize(image, resolution: int):
  """Centre-crops a PIL image to a square and resizes it to resolution x resolution."""
  w, h = image.size
  side = min(w, h)
  if w != h:
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
  if side != resolution:
    image = image.resize((resolution, resolution), _resample(side, resolution))
  return image


def _to_mode(image, channels: int):
  return image.convert("L" if channels == 1 else "RGB")


def _pil_to_array(image) -> np.ndarray:
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _resolution(resolution: Any, size: tuple[int, int] | None, what: str, field: str) -> int:
  """The configured resolution, or the native one of square images of `size` (w, h)."""
  if resolution is not None:
    return base.check_resolution(resolution)
  w, h = size
  if w != h:
    raise errors.BadInputError(f"{what} are {w}x{h}, not square; set data.resolution to centre-crop "
                     "and resize them")
  return base.check_resolution(w, field=field)


def _check_exists(path: str | os.PathLike, field: str = "data.path") -> Path:
  path = Path(path).expanduser()
  if not path.exists():
    raise errors.BadInputError(f"{field}={str(path)!r} does not exist")
  return path


def load_npz(path: str | os.PathLike, *, resolution: int | None = None,
             channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads an ADM-layout .npz of labelled images.

  Args:
    path: .npz file with arr_0 uint8 [N, H, W, C] (C in {1, 3}, or [N, H, W]) and arr_1
      integer labels [N] (>= 0).
    resolution: output size R (power of two); None keeps H, which must then be a square
      power of two.
    channels: 1 or 3; None keeps C.
  Returns:
    images uint8 [N, R, R, channels], labels int32 [N].
  """
  path = _check_exists(path)
  if path.is_dir():
    raise errors.BadInputError(f"data.path={str(path)!r} is a directory, expected an .npz file")
  with np.load(path, allow_pickle=False) as data:
    if "arr_0" not in data.files:
      raise errors.BadInputError(f"{path}: missing arr_0 (uint8 images [N, H, W, C]); found "
                       f"{data.files}")
    if "arr_1" not in data.files:
      raise errors.BadInputError(f"{path}: missing arr_1 (integer class labels [N]); "
                       "class-conditional training needs labels")
    images, labels = data["arr_0"], data["arr_1"]
  if images.dtype != np.uint8:
    raise errors.BadInputError(f"{path}: arr_0 must be uint8 in [0, 255], got dtype {images.dtype}")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise errors.BadInputError(f"{path}: arr_0 must be [N, H, W, C] with C in (1, 3), got shape "
                     f"{images.shape}")
  if images.shape[0] == 0:
    raise errors.BadInputError(f"{path}: arr_0 holds no images")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise errors.BadInputError(f"{path}: arr_1 must be labels [{images.shape[0]}], got shape "
                     f"{labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise errors.BadInputError(f"{path}: arr_1 must hold integer labels, got dtype {labels.dtype}")
  if labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:
    raise errors.BadInputError(f"{path}: labels out of range: [{labels.min()}, {labels.max()}]; "
                     "they must be class ids >= 0")
  n, h, w, c = images.shape
  resolution = _resolution(resolution, (w, h), f"{path}: images", f"{path}: image size")
  channels = c if channels is None else channels
  if channels not in (1, 3):
    raise errors.BadInputError(f"data.channels must be 1 or 3, got {channels!r}")

  if (h, w) != (resolution, resolution):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    out = np.empty((n, resolution, resolution, c), np.uint8)
    for i in range(n):
      image = Image.fromarray(images[i, ..., 0] if c == 1 else images[i])
      out[i] = _pil_to_array(_square_resize(image, resolution))
    images = out
  if channels != c:
    if channels == 3:
      images = np.repeat(images, 3, axis=-1)
    else:
      # Same luma weights as PIL's convert('L') (ITU-R 601-2), rounded.
      luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      images = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
  return np.ascontiguousarray(images), labels.astype(np.int32)


def load_image_folder(root: str | os.PathLike, *, resolution: int | None = None,
                      channels: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Loads root/<class_name>/*.{png,jpg,jpeg}; classes sorted by name -> ids 0..K-1.

  Args:
    root: folder with one sub-folder per class (hidden entries are ignored).
    resolution: output size R (power of two); None requires all images to be the same
      square power-of-two size.
    channels: 1 or 3; None gives 1 if every image is greyscale, else 3.
  Returns:
    images uint8 [N, R, R, C], labels int32 [N], class_names (K names, id order).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  root = _check_exists(root)
  if not root.is_dir():
    raise errors.BadInputError(f"data.path={str(root)!r} is not a directory (expected "
                     "root/<class_name>/*.png)")
  class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not class_dirs:
    raise errors.BadInputError(f"data.path={str(root)!r} has no class sub-folders (expected "
                     "root/<class_name>/*.png|jpg|jpeg)")
  files: list[tuple[Path, int]] = []
  for label, class_dir in enumerate(class_dirs):
    class_files = sorted(
        p for p in class_dir.iterdir()
        if p.is_file() and not p.name.startswith(".")
        and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not class_files:
      raise errors.BadInputError(f"class folder {str(class_dir)!r} holds no {IMAGE_EXTENSIONS} "
                       "images (an empty class would shift the class ids)")
    files.extend((p, label) for p in class_files)

  # Pass 1 reads only the headers (size, mode) to settle resolution and channels.
  headers = []
  for path, _ in files:
    try:
      with Image.open(path) as image:
        headers.append((image.size, image.mode))
    except OSError as e:
      raise errors.BadInputError(f"cannot read image {str(path)!r}: {e}") from e

  if resolution is None:
    sizes = sorted({size for size, _ in headers})
    if len(sizes) > 1:
      raise errors.BadInputError(f"images under {str(root)!r} have different sizes {sizes[:4]}; set "
                       "data.resolution to centre-crop and resize them to one size")
  resolution = _resolution(resolution, sizes[0] if resolution is None else None,
                           f"images under {str(root)!r}", f"image size under {str(root)!r}")
  if channels is None:
    grey_modes = ("1", "L", "LA", "I", "I;16", "F")
    channels = 1 if all(mode in grey_modes for _, mode in headers) else 3
  elif channels not in (1, 3):
    raise errors.BadInputError(f"data.channels must be 1 or 3, got {channels!r}")

  # Pass 2 decodes one image at a time into the preallocated uint8 array.
  images = np.empty((len(files), resolution, resolution, channels), np.uint8)
  for i, (path, _) in enumerate(files):
    try:
      with Image.open(path) as image:
        images[i] = _pil_to_array(_square_resize(_to_mode(image, channels), resolution))
    except OSError as e:
      raise errors.BadInputError(f"cannot read image {str(path)!r}: {e}") from e
  labels = np.array([label for _, label in files], np.int32)
  return images, labels, tuple(p.name for p in class_dirs)
