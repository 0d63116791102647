"""Image utilities: quantisation to uint8 and PNG grids (labelled with small text).

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

# Grids show every class up to this many rows; above it, `grid_classes` spreads this many
# rows evenly over all classes (first and last included) and the caption says so.
MAX_GRID_CLASSES = 16

# A 3x5 bitmap font for the labels drawn into grids (class ids, guidance scales), so a grid
# read outside the report still says what it shows; built in, no font file needed. Each
# glyph: 5 rows of 3 bits, most significant bit on the left.
_GLYPHS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 3, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 2, 2),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0),
    "s": (0, 3, 6, 1, 6), "c": (0, 3, 4, 4, 3), "x": (0, 5, 2, 2, 5), " ": (0, 0, 0, 0, 0),
}
GLYPH_HEIGHT, GLYPH_WIDTH = 5, 3


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


def grid_classes(num_classes: int, limit: int = MAX_GRID_CLASSES) -> list[int]:
  """The class ids a grid shows, one per row: all of them when `num_classes <= limit`, else
  `limit` ids spread evenly over [0, num_classes - 1] (rounded; first and last included)."""
  if num_classes <= limit:
    return list(range(num_classes))
  return sorted(set(np.linspace(0, num_classes - 1, limit).round().astype(int).tolist()))


def classes_caption(classes: Sequence[int], num_classes: int) -> str:
  """'all 10 classes' or '16 of 100 classes, spread evenly: 0, 7, ...' (grid captions)."""
  classes = list(classes)
  if classes == list(range(num_classes)):
    return f"all {num_classes} classes"
  if len(classes) > 1 and classes == grid_classes(num_classes, len(classes)):
    return (f"{len(classes)} of {num_classes} classes, spread evenly: "
            f"{', '.join(map(str, classes))}")
  return f"classes {', '.join(map(str, classes))} of {num_classes}"


def render_text(text: str, scale: int = 1) -> np.ndarray:
  """`text` (digits, '.', '-', 's', 'c', 'x', ' ') as a bool mask [5 scale, (4 len - 1) scale].

  Raises:
    ValueError naming a character the built-in font lacks.
  """
  bad = sorted(set(text) - set(_GLYPHS))
  if bad:
    raise ValueError(f"render_text: no glyph for {bad} in {text!r}; the font has "
                     f"{''.join(sorted(_GLYPHS))!r}")
  width = max(0, 4 * len(text) - 1)
  mask = np.zeros((GLYPH_HEIGHT, width), bool)
  for i, ch in enumerate(text):
    rows = _GLYPHS[ch]
    for r, bits in enumerate(rows):
      for k in range(GLYPH_WIDTH):
        mask[r, 4 * i + k] = bool(bits >> (GLYPH_WIDTH - 1 - k) & 1)
  return mask.repeat(scale, axis=0).repeat(scale, axis=1)


def label_grid(grid: np.ndarray, cell: tuple[int, int], pad: int,
               row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, scale: int = 1) -> np.ndarray:
  """Adds a white margin with dark labels: row labels on the left, column labels on top.

  grid: uint8 [rows*(h+pad)-pad, cols*(w+pad)-pad, C] from `make_grid`; cell: (h, w).
  Returns uint8 [top + grid height, left + grid width, C]; labels centred on their row or
  column, drawn with the built-in 3x5 font enlarged `scale` times.
  """
  h, w = cell
  c = grid.shape[-1]
  glyph_h = GLYPH_HEIGHT * scale
  margin = 2 * scale
  left = (max((render_text(t, scale).shape[1] for t in row_labels), default=0) + 2 * margin
          if row_labels else 0)
  top = glyph_h + 2 * margin if col_labels else 0
  out = np.full((top + grid.shape[0], left + grid.shape[1], c), 255, np.uint8)
  out[top:, left:] = grid
  ink = np.uint8(32)
  for i, text in enumerate(row_labels or []):
    mask = render_text(text, scale)
    y = top + i * (h + pad) + max(0, (h - mask.shape[0]) // 2)
    x = left - margin - mask.shape[1]
    out[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = ink
  for k, text in enumerate(col_labels or []):
    mask = render_text(text, scale)
    x = left + k * (w + pad) + max(0, (w - mask.shape[1]) // 2)
    region = out[margin:margin + mask.shape[0], x:x + mask.shape[1]]
    region[mask[:, :region.shape[1]]] = ink
  return out


def save_png(path: str, image: np.ndarray, upscale: int = 1, caption: str | None = None
             ) -> str:
  """Writes a uint8 [H, W, C] image (C in {1, 3}) as PNG, atomically; returns the path.

  `caption` goes into the PNG's 'Description' text chunk (the run report shows it).
  """
  from PIL import Image, PngImagePlugin  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"save_png expects uint8, got {image.dtype}")
  if upscale > 1:  # Nearest-neighbour, so 16x16 digits stay readable.
    image = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
  if image.shape[-1] == 1:
    image = image[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.png"
  info = None
  if caption:
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", caption)
  Image.fromarray(image).save(tmp, pnginfo=info)
  os.replace(tmp, path)
  return path


def save_grid(path: str, images: np.ndarray, rows: int, cols: int,
              quantization: str = "nvidia", upscale: int | None = None,
              row_labels: Sequence[str] | None = None,
              col_labels: Sequence[str] | None = None, caption: str | None = None) -> str:
  """Float images [rows*cols, H, W, C] in [-1, 1] -> a PNG grid at `path`.

  ``upscale=None`` picks an integer factor so that small images end up about 64 px tall.
  `row_labels` / `col_labels` (e.g. class ids, guidance scales) are drawn in a margin, in
  text about a quarter of an image tall; `caption` goes into the PNG's text (save_png).
  """
  images = to_uint8(images, quantization)
  if upscale is None:
    upscale = max(1, 64 // images.shape[1])
  grid = make_grid(images, rows, cols)
  if row_labels or col_labels:
    # Glyphs 5 px tall at 16 px images: about a third of an image, at any resolution.
    grid = label_grid(grid, images.shape[1:3], 1, row_labels, col_labels,
                      scale=max(1, images.shape[1] // 16))
  return save_png(path, grid, upscale=upscale, caption=caption)


def class_rows_grid(path: str, images: np.ndarray, labels: Sequence[int], per_class: int,
                    num_classes: int | None = None, **kwargs) -> str:
  """Saves a grid with one row per class (labelled with its id): `images` sorted so row i
  holds `per_class` images. The caption names the classes shown (of `num_classes`)."""
  labels = np.asarray(labels)
  classes = sorted(set(labels.tolist()))
  ordered = np.concatenate([images[labels == c][:per_class] for c in classes])
  total = num_classes if num_classes is not None else len(classes)
  kwargs.setdefault("caption", f"rows: {classes_caption(classes, total)} (class id on the "
                               f"left); columns: {per_class} samples per class")
  return save_grid(path, ordered, rows=len(classes), cols=per_class,
                   row_labels=[str(c) for c in classes], **kwargs)
