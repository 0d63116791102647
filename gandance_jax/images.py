"""Image utilities: quantisation to uint8 and PNG grids.

Quantisation conventions (they matter for FID, see evaluation/):
  * ``'nvidia'`` (default here, NVIDIA's ``x * 127.5 + 128``, rounded down by the uint8 cast
    after clamping to [0, 255]);
  * ``'adm'`` (OpenAI ADM: ``(x + 1) * 127.5`` clamped to [0, 255] and truncated).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

QUANTIZATIONS = ("nvidia", "adm")


def to_uint8(images: np.ndarray, quantization: str = "nvidia") -> np.ndarray:
  """[..., C] float in [-1, 1] -> uint8 [0, 255] under the named convention."""
  x = np.asarray(images, dtype=np.float32)
  if quantization == "nvidia":
    x = x * 127.5 + 128.0
  elif quantization == "adm":
    x = (x + 1.0) * 127.5
  else:
    raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
  return np.clip(x, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, rows: int, cols: int, pad: int = 1,
              pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 images [rows*cols, H, W, C] (row-major) into one [rows*(H+pad)-pad, ..., C]."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  if n != rows * cols:
    raise ValueError(f"make_grid needs rows*cols = {rows * cols} images, got {n}")
  grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, images.dtype)
  for i in range(n):
    r, k = divmod(i, cols)
    grid[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray, upscale: int = 1) -> str:
  """Writes a uint8 [H, W, C] image (C in {1, 3}) as PNG, atomically; returns the path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"save_png expects uint8, got {image.dtype}")
  if upscale > 1:  # Nearest-neighbour, so 16x16 digits stay readable.
    image = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
  if image.shape[-1] == 1:
    image = image[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.png"
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)
  return path


def save_grid(path: str, images: np.ndarray, rows: int, cols: int,
              quantization: str = "nvidia", upscale: int | None = None) -> str:
  """Float images [rows*cols, H, W, C] in [-1, 1] -> a PNG grid at `path`.

  ``upscale=None`` picks an integer factor so that small images end up about 64 px tall.
  """
  images = to_uint8(images, quantization)
  if upscale is None:
    upscale = max(1, 64 // images.shape[1])
  return save_png(path, make_grid(images, rows, cols), upscale=upscale)


def class_rows_grid(path: str, images: np.ndarray, labels: Sequence[int], per_class: int,
                    **kwargs) -> str:
  """Saves a grid with one row per class: `images` sorted so row i holds `per_class` images."""
  labels = np.asarray(labels)
  classes = sorted(set(labels.tolist()))
  ordered = np.concatenate([images[labels == c][:per_class] for c in classes])
  return save_grid(path, ordered, rows=len(classes), cols=per_class, **kwargs)
