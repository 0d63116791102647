"""digits100: an embedded 100-class dataset, 10 digits x 10 appearance styles, 16x16 RGB.

The bundled digits (`digits.py`) have 10 well-separated classes, so a conditional generator
rarely draws the wrong class and guidance has little off-class mass to remove. The paper's
premise is a generator that confuses many classes (ImageNet's 1000). This dataset keeps the
scikit-learn digits (no download) and multiplies the classes by rendering every one of the 1797
source images in each of 10 styles: a foreground/background colour pair and, for two styles,
a stroke variant. Some styles are deliberately close to another, so that a small conditional
GAN can blend or swap them (see `STYLES`, `CLOSE_PAIRS` and docs/digits100/README.md):

  id  name                 ink            paper           stroke   close to
  0   white/black          (240,240,240)  ( 16, 16, 16)   normal   1 (stroke width)
  1   bold white/black     (240,240,240)  ( 16, 16, 16)   bold     0
  2   red/navy             (230, 60, 50)  ( 20, 30, 90)   normal   3 (ink hue), 4 (slant)
  3   orange/navy          (240,130, 40)  ( 20, 30, 90)   normal   2
  4   slanted red/navy     (230, 60, 50)  ( 20, 30, 90)   slanted  2
  5   yellow/green         (240,220, 60)  ( 20, 90, 40)   normal   6 (paper hue)
  6   yellow/teal          (240,220, 60)  ( 20, 90,100)   normal   5
  7   black/white          ( 20, 20, 20)  (235,235,235)   normal   8 (paper tint)
  8   black/pink           ( 20, 20, 20)  (235,175,185)   normal   7
  9   cyan/purple          ( 80,220,230)  ( 70, 20, 90)   normal   -

Labels: `label = digit * 10 + style` (`label_of`, `digit_of`, `style_of`), so labels 0..9 are
the digit 0 in the ten styles and `label // 10` is the digit.

Rendering (a deterministic function of `seed`, numpy only, about a second):
1. ink: the 8x8 intensities / 16 in [0, 1], resampled bilinearly (half-pixel centres, zero
   ink outside the 8x8 box) onto a 4x supersampled grid of the output resolution R; the
   slanted style shears it (row y moves right by SLANT * (centre - y): a forward slant); the
   bold style dilates the ink with a max over a disc of radius BOLD_RADIUS (in 16x16 pixels);
   then 4x4 box-averaged down to R x R (antialiasing).
2. colour: pixel = paper + ink * (ink_colour - paper), where both colours of each image get a
   per-channel uniform jitter of +-COLOUR_JITTER (on the 0..255 scale) drawn from `seed`; the
   jitter is well below the smallest intended colour difference (60), so every class stays
   separable by colour while two seeds give different bytes.
3. stored as uint8 [N, R, R, 3] (the ArraySource pipeline maps uint8 to [-1, 1] per batch).

Image order: source image s rendered in style t is image `s * 10 + t` (source-major), so
`images[t::10]` are all sources in style t. Class counts are 10 x the digit counts of the source
(174-183 per class, 17970 images).

The optional class-imbalanced variant (`imbalance=rho > 1`) keeps n_c = round(n_full_c *
rho ** (-rank_c / 99)) images of class c (at least 1), the long-tail profile of CIFAR-LT: the
rank of each class is a FIXED permutation of the 100 labels (independent of `seed`, so runs with
different seeds share head and tail classes; it mixes digits and styles in head and tail); which
images of a class are kept is drawn from `seed`.

Data pipeline registration (one line in `pipeline.make_source`, plus 'digits100' in the names):
`if name == "digits100": return digits100.make_source(resolution or 16, xflip=xflip, seed=seed)`
(data.seed orders the batches; the images are those of render seed 0, see `make_source`).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import numpy as np

from gandance_jax import images as images_lib
from gandance_jax.data.base import ArraySource

NUM_DIGITS = 10
NUM_STYLES = 10
NUM_CLASSES = NUM_DIGITS * NUM_STYLES
NUM_SOURCE_IMAGES = 1797
NUM_IMAGES = NUM_SOURCE_IMAGES * NUM_STYLES  # 17970
DEFAULT_RESOLUTION = 16

# (name, ink RGB, paper RGB, stroke) on the 0..255 scale; see the module docstring for why.
STYLES: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int], str], ...] = (
    ("white/black", (240, 240, 240), (16, 16, 16), "normal"),
    ("bold white/black", (240, 240, 240), (16, 16, 16), "bold"),
    ("red/navy", (230, 60, 50), (20, 30, 90), "normal"),
    ("orange/navy", (240, 130, 40), (20, 30, 90), "normal"),
    ("slanted red/navy", (230, 60, 50), (20, 30, 90), "slanted"),
    ("yellow/green", (240, 220, 60), (20, 90, 40), "normal"),
    ("yellow/teal", (240, 220, 60), (20, 90, 100), "normal"),
    ("black/white", (20, 20, 20), (235, 235, 235), "normal"),
    ("black/pink", (20, 20, 20), (235, 175, 185), "normal"),
    ("cyan/purple", (80, 220, 230), (70, 20, 90), "normal"),
)
STROKES = ("normal", "bold", "slanted")
# The deliberately confusable style pairs: same colours and another stroke (0-1, 2-4), or the
# same stroke and one colour moved by 60-80 on one or two channels (2-3, 5-6, 7-8).
CLOSE_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (2, 4), (5, 6), (7, 8))
STYLE_NAMES = tuple(s[0] for s in STYLES)
CLASS_NAMES = tuple(f"{d} {STYLE_NAMES[t]}" for d in range(NUM_DIGITS) for t in range(NUM_STYLES))

COLOUR_JITTER = 8.0  # +- per channel, 0..255 scale; far below the 60 of the closest colours
SLANT = 0.3  # shear: x shifts by SLANT pixels per pixel of height (about 17 degrees)
BOLD_RADIUS = 0.75  # dilation disc radius in pixels of a 16x16 image (scaled with R)
SUPERSAMPLE = 4

# Purpose tags of the numpy seed sequences (cf. pipeline.py's 'PERM' / 'FLIP').
_JITTER_TAG = 0x4A495454  # 'JITT'
_KEEP_TAG = 0x4B454550  # 'KEEP'
_RANK_SEED = 0x52414E4B  # 'RANK': the fixed class ranking of the imbalanced variant


def _int_or_array(x: np.ndarray) -> int | np.ndarray:
  return int(x) if x.ndim == 0 else x


def label_of(digit: int | np.ndarray, style: int | np.ndarray) -> int | np.ndarray:
  """Class label(s) of digit(s) in style(s): digit * 10 + style (an int, or an int array)."""
  return _int_or_array(np.asarray(digit) * NUM_STYLES + np.asarray(style))


def digit_of(label: int | np.ndarray) -> int | np.ndarray:
  """The digit (0..9) of class label(s): label // 10 (an int, or an int array)."""
  return _int_or_array(np.asarray(label) // NUM_STYLES)


def style_of(label: int | np.ndarray) -> int | np.ndarray:
  """The style id (0..9, an index into STYLES) of class label(s): label % 10."""
  return _int_or_array(np.asarray(label) % NUM_STYLES)


def colour_distances() -> np.ndarray:
  """float64 [10, 10]: Euclidean distance between the styles' (ink, paper) colours, 0..255 scale.

  The distance of the 6-vector (ink RGB, paper RGB): zero for the stroke variants (0-1, 2-4),
  60-80 for the colour-close pairs (2-3, 5-6, 7-8; and 3-4, both close to 2), at least 110
  between styles of different close groups ({0, 1}, {2, 3, 4}, {5, 6}, {7, 8}, {9}).
  """
  cols = np.array([s[1] + s[2] for s in STYLES], np.float64)
  return np.sqrt(((cols[:, None] - cols[None]) ** 2).sum(-1))


def _check_resolution(resolution) -> int:
  if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or (
      resolution < 8 or resolution & (resolution - 1)):
    raise ValueError(f"digits100 resolution must be a power of two >= 8, got {resolution!r}")
  return int(resolution)


@functools.lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
  """The scikit-learn digits: (ink float32 [1797, 8, 8] in [0, 1], digit int32 [1797])."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  return (bunch.images.astype(np.float32) / np.float32(16.0)), bunch.target.astype(np.int32)


def _bilinear_weights(coords: np.ndarray, size: int = 8) -> np.ndarray:
  """float64 [*coords.shape, size]: bilinear weights of `size` samples at continuous coords.

  Sample i sits at coordinate i; ink is zero outside [0, size - 1] (beyond the box), so a
  coordinate within one pixel outside the box gets a partial weight on the edge sample only.
  """
  lo = np.floor(coords)
  frac = coords - lo
  w = np.zeros(coords.shape + (size,))
  for tap, weight in ((lo, 1.0 - frac), (lo + 1, frac)):
    valid = (tap >= 0) & (tap <= size - 1)
    idx = np.nonzero(valid)
    w[idx + (tap[valid].astype(np.int64),)] += weight[valid]
  return w


def _ink(ink8: np.ndarray, resolution: int, stroke: str) -> np.ndarray:
  """float32 [N, R, R] ink in [0, 1] of one stroke variant (see the module docstring)."""
  n = ink8.shape[0]
  hi = resolution * SUPERSAMPLE
  # Centres of the hi-res pixels in 8x8 source pixel units (half-pixel convention).
  grid = (np.arange(hi, dtype=np.float64) + 0.5) * (8.0 / hi) - 0.5
  w_rows = _bilinear_weights(grid)  # [hi, 8]
  if stroke == "slanted":
    # Forward slant ('/'): row y shows the source shifted right by SLANT * (centre - y), so
    # the top moves right, the bottom left and the centre row stays.
    xs = grid[None, :] + SLANT * (grid[:, None] - 3.5)  # [hi (y), hi (x)] source x
  else:
    xs = np.broadcast_to(grid[None, :], (hi, hi))
  w_cols = _bilinear_weights(xs)  # [hi (y), hi (x), 8]
  rows = np.einsum("yi,nij->nyj", w_rows, ink8.astype(np.float64))
  out = np.einsum("yxj,nyj->nyx", w_cols, rows)  # [N, hi, hi]
  if stroke == "bold":
    r = BOLD_RADIUS * hi / 16.0
    k = int(np.floor(r))
    pad = np.pad(out, ((0, 0), (k, k), (k, k)))
    dil = out.copy()
    for dy in range(-k, k + 1):
      for dx in range(-k, k + 1):
        if (dy or dx) and dy * dy + dx * dx <= r * r:
          np.maximum(dil, pad[:, k + dy:k + dy + hi, k + dx:k + dx + hi], out=dil)
    out = dil
  out = out.reshape(n, resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(2, 4))
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def render(source_indices: np.ndarray, styles: np.ndarray, *, resolution: int = DEFAULT_RESOLUTION,
           seed: int = 0) -> np.ndarray:
  """uint8 [M, R, R, 3]: source images `source_indices` [M] rendered in `styles` [M].

  The colour jitter of (source s, style t) is the same as in `load_digits100(seed=seed)`, so
  `render(s, t)` reproduces image `s * 10 + t` of the dataset bit for bit; any style can be
  applied to any source (e.g. to build wrong-style images in tests).
  """
  resolution = _check_resolution(resolution)
  src = np.asarray(source_indices, np.int64).reshape(-1)
  sty = np.asarray(styles, np.int64).reshape(-1)
  if src.shape != sty.shape:
    raise ValueError(f"source_indices and styles must have the same length, got {src.shape} "
                     f"and {sty.shape}")
  if src.size and (src.min() < 0 or src.max() >= NUM_SOURCE_IMAGES):
    raise ValueError(f"source_indices must be in [0, {NUM_SOURCE_IMAGES}), got range "
                     f"[{src.min()}, {src.max()}]")
  if sty.size and (sty.min() < 0 or sty.max() >= NUM_STYLES):
    raise ValueError(f"styles must be in [0, {NUM_STYLES}), got range [{sty.min()}, {sty.max()}]")
  ink8, _ = source_digits()
  ink = np.empty((src.size, resolution, resolution), np.float32)
  stroke_of = np.array([STROKES.index(s[3]) for s in STYLES])
  for k, stroke in enumerate(STROKES):
    sel = stroke_of[sty] == k
    if sel.any():
      # Each source is inked once per stroke variant, whatever the number of styles sharing it.
      uniq, inverse = np.unique(src[sel], return_inverse=True)
      ink[sel] = _ink(ink8[uniq], resolution, stroke)[inverse]
  # One jitter table for all (source, style, ink/paper, channel): index it, never redraw, so a
  # subset of images gets the same colours as in the full dataset.
  jitter = _jitter_table(check_seed(seed))[src, sty]  # [M, 2, 3]
  base = np.array([(s[1], s[2]) for s in STYLES], np.float64)[sty]  # [M, 2, 3]
  cols = np.clip(base + jitter, 0.0, 255.0).astype(np.float32)
  fg, bg = cols[:, None, None, 0], cols[:, None, None, 1]  # [M, 1, 1, 3]
  img = bg + ink[..., None] * (fg - bg)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def check_seed(seed: int) -> int:
  """`seed` as an int if it is a non-negative int, else ValueError naming it."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"digits100 seed must be a non-negative int, got {seed!r}")
  return int(seed)


@functools.lru_cache(maxsize=4)
def _jitter_table(seed: int) -> np.ndarray:
  rng = np.random.default_rng([seed, _JITTER_TAG])
  return rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (NUM_SOURCE_IMAGES, NUM_STYLES, 2, 3))


def class_ranks() -> np.ndarray:
  """int64 [100]: rank of each class in the imbalanced variant (0 = most frequent), fixed."""
  perm = np.random.default_rng(_RANK_SEED).permutation(NUM_CLASSES)  # perm[rank] = class
  ranks = np.empty(NUM_CLASSES, np.int64)
  ranks[perm] = np.arange(NUM_CLASSES)
  return ranks


def _check_imbalance(imbalance) -> float:
  if isinstance(imbalance, bool) or not isinstance(imbalance, (int, float, np.number)) or not (
      np.isfinite(imbalance) and imbalance >= 1.0):
    raise ValueError(f"digits100 imbalance must be a finite number >= 1 (1 = balanced), got "
                     f"{imbalance!r}")
  return float(imbalance)


@functools.lru_cache(maxsize=4)
def _selection(seed: int, imbalance: float) -> tuple[np.ndarray, np.ndarray]:
  """(source index, style) int64 [N] of the dataset's images, in dataset order."""
  src = np.repeat(np.arange(NUM_SOURCE_IMAGES), NUM_STYLES)
  sty = np.tile(np.arange(NUM_STYLES), NUM_SOURCE_IMAGES)
  if imbalance > 1.0:
    _, digits = source_digits()
    labels = digits[src] * NUM_STYLES + sty
    keep = np.zeros(labels.shape, bool)
    rng = np.random.default_rng([seed, _KEEP_TAG])
    ranks = class_ranks()
    for c in range(NUM_CLASSES):  # ascending class order: the draws are fixed by the seed
      members = np.flatnonzero(labels == c)
      n = max(1, int(round(members.size * imbalance ** (-ranks[c] / (NUM_CLASSES - 1)))))
      keep[rng.permutation(members)[:n]] = True
    src, sty = src[keep], sty[keep]
  src.setflags(write=False)
  sty.setflags(write=False)
  return src, sty


@functools.lru_cache(maxsize=4)
def _load(resolution: int, seed: int, imbalance: float) -> tuple[np.ndarray, np.ndarray]:
  src, sty = _selection(seed, imbalance)
  labels = (source_digits()[1][src] * NUM_STYLES + sty).astype(np.int32)
  images = render(src, sty, resolution=resolution, seed=seed)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_digits100(resolution: int = DEFAULT_RESOLUTION, *, seed: int = 0,
                   imbalance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, R, R, 3] in [0, 255], labels int32 [N] in [0, 100)).

  N = 17970 when balanced (`imbalance=1`), image `s * 10 + t` being source digit s in style t;
  with `imbalance=rho > 1` a long-tailed subset (largest / smallest class about rho), in the
  same order. A deterministic function of (resolution, seed, imbalance); the arrays are cached
  (a few per process) and read-only; copy them before modifying.
  """
  return _load(_check_resolution(resolution), check_seed(seed), _check_imbalance(imbalance))


def source_and_style(seed: int = 0, imbalance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """int64 [N] each: the scikit-learn source image and the style of each dataset image.

  For splits by source image (all renderings of one handwritten digit on the same side).
  """
  return _selection(check_seed(seed), _check_imbalance(imbalance))


def make_source(resolution: int = DEFAULT_RESOLUTION, *, xflip: bool = False, seed: int = 0,
                imbalance: float = 1.0, render_seed: int = 0) -> Any:
  """The data-pipeline source (`base.ArraySource`, name 'digits100', 100 classes).

  `seed` (the config's data.seed) orders the batches, as for every source; the images are
  rendered with `render_seed`, 0 by default whatever data.seed is, so every run trains on the
  images that the classifier (`evaluation.digits100_classifier`) and FID references were made
  from. With `imbalance > 1` the kept images are also drawn with `render_seed`.
  xflip mirrors digits (not advisable).
  """
  images, labels = load_digits100(resolution, seed=render_seed, imbalance=imbalance)
  return ArraySource(images, labels, num_classes=NUM_CLASSES, xflip=xflip, seed=seed,
                     name="digits100", class_names=CLASS_NAMES)


def style_grid(resolution: int = DEFAULT_RESOLUTION, *, seed: int = 0,
               sources: tuple[int, ...] | None = None) -> np.ndarray:
  """uint8 [100, R, R, 3]: one image per class, row-major (row = digit, column = style).

  `sources` names the source image of each digit (default: the first of each digit), so the
  ten styles of a row are the same handwriting.
  """
  _, digits = source_digits()
  if sources is None:
    sources = tuple(int(np.flatnonzero(digits == d)[0]) for d in range(NUM_DIGITS))
  if len(sources) != NUM_DIGITS or any(int(digits[s]) != d for d, s in enumerate(sources)):
    raise ValueError(f"sources must be 10 source indices of the digits 0..9 in order, got "
                     f"{sources!r} (digits {[int(digits[s]) for s in sources]})")
  src = np.repeat(np.asarray(sources), NUM_STYLES)
  sty = np.tile(np.arange(NUM_STYLES), NUM_DIGITS)
  return render(src, sty, resolution=resolution, seed=seed)


def main(argv: list[str] | None = None) -> None:
  """Writes the 10x10 class grid PNG: python -m gandance_jax.data.digits100 OUT.png."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("out", help="PNG path, e.g. docs/digits100/classes.png")
  parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--upscale", type=int, default=4, help="nearest-neighbour magnification")
  args = parser.parse_args(argv)
  grid = images_lib.make_grid(style_grid(args.resolution, seed=args.seed), NUM_DIGITS,
                              NUM_STYLES, pad=1, pad_value=255)
  print(images_lib.save_png(args.out, grid, upscale=args.upscale))


if __name__ == "__main__":
  main()
