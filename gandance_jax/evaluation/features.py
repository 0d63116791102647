"""Pluggable feature extractors, exact image resizing, and the batched extraction loop.

Every statistic this package computes (FID mean/covariance, precision/recall manifolds,
Inception/classifier scores) goes through one code path: a `FeatureExtractor` maps a batch of
images to `(features, logits)` and `extract` / `iterate_features` run it over many images in
jit-compiled fixed-size batches (the last batch is padded and the padding dropped, so there is
one compile), sharded over the local devices along a `data` mesh axis when the batch divides.

Preprocessing conventions (recorded with every statistic, see `fid.FIDStatistics`):

* ``pytorch_fid``: pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`:
  float input in [0, 1] (we take [-1, 1] and map it with `(x + 1) / 2`, or uint8 / 255 as
  torchvision's `ToTensor` does), bilinear resize with half-pixel centres
  (`F.interpolate(..., align_corners=False)`, no antialiasing, also when downsampling),
  then `2x - 1`. By default float images are not quantised (`quantize='none'`).
* ``tf1``: the TensorFlow-1 graph as used by ADM's evaluator (guided-diffusion), TTUR and
  torch-fidelity: uint8 input in [0, 255] as float, the legacy `ResizeBilinear`
  (`align_corners=False, half_pixel_centers=False`) which samples source row `i * in / out`
  with `lo = floor(.)`, `hi = min(lo + 1, in - 1)`, then `(x - 128) / 128`. Float images are
  first quantised to uint8 values; by default as ADM's sampler does
  (`quantize='adm'`: `((x + 1) * 127.5)` clamped to [0, 255] and truncated); NVIDIA's
  StyleGAN scripts use `quantize='nvidia'`: `x * 127.5 + 128` clamped and truncated.
  For 64 -> 299 the two resampling grids differ by a constant 0.39-pixel shift
  (`0.5 * in / out - 0.5`), so ADM's ImageNet-64 reference statistics are only comparable
  with statistics computed under ``tf1``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gandance_jax import errors, images, multihost


CONVENTIONS = ("pytorch_fid", "tf1")
QUANTIZE_MODES = ("none",) + images.QUANTIZATIONS
# Images a little outside [-1, 1] (float round-off in a generator's last layer) are accepted.
RANGE_TOLERANCE = 1e-3

ArrayLike = Any  # np.ndarray | jax.Array


# ----------------------------------------------------------------------------------------------
# Resizing. Both are separable gathers + lerps whose source indices and weights are computed in
# numpy at trace time (sizes are static), so they follow the reference formulas literally and
# never antialias (jax.image.resize antialiases when downsampling, which neither reference does).


def _half_pixel_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source taps of torch's bilinear `align_corners=False` (PyTorch `area_pixel_compute_*`)."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))  # torch clamps negative source coords to 0
  lo = src.astype(np.int64)  # floor, as src >= 0
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(np.float32)).astype(np.float32)
  return lo, hi, frac


def _tf1_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source taps of TF1's legacy ResizeBilinear (align_corners=False, no half-pixel centres)."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(np.float32)).astype(np.float32)
  return lo, hi, frac


def _lerp_axis(x: jax.Array, axis: int, taps: tuple[np.ndarray, np.ndarray,
                                                        np.ndarray]) -> jax.Array:
  lo, hi, frac = taps
  shape = [1] * x.ndim
  shape[axis] = frac.shape[0]
  frac = jnp.asarray(frac.reshape(shape), x.dtype)
  a = jnp.take(x, jnp.asarray(lo), axis=axis)
  b = jnp.take(x, jnp.asarray(hi), axis=axis)
  return a + (b - a) * frac


def resize_bilinear(images: jax.Array, size: tuple[int, int], *, method: str) -> jax.Array:
  """Bilinear resize of NHWC images without antialiasing.

  Args:
    images: [B, H, W, C] floating point.
    size: (out_H, out_W).
    method: 'half_pixel' (torch `F.interpolate(mode='bilinear', align_corners=False)`) or
      'tf1' (TensorFlow-1 legacy `tf.image.resize_bilinear(align_corners=False)`).

  Returns:
    [B, out_H, out_W, C] in the input dtype. The same size returns the input unchanged
    (both grids are then the identity).
  """
  if method == "half_pixel":
    taps_fn = _half_pixel_taps
  elif method == "tf1":
    taps_fn = _tf1_taps
  else:
    raise ValueError(f"resize method must be 'half_pixel' or 'tf1', got {method!r}")
  _, h, w, _ = images.shape
  out_h, out_w = size
  x = images
  if out_h != h:
    x = _lerp_axis(x, 1, taps_fn(h, out_h))
  if out_w != w:
    x = _lerp_axis(x, 2, taps_fn(w, out_w))
  return x


# ----------------------------------------------------------------------------------------------
# Quantisation to uint8 values (kept as float32 inside jit).


def quantize_uint8(images: jax.Array, mode: str) -> jax.Array:
  """Float images in [-1, 1] -> the uint8 values a sample writer would store, as float32.

  'adm': `((x + 1) * 127.5).clamp(0, 255).to(uint8)` (guided-diffusion's samplers);
  'nvidia': `(x * 127.5 + 128).clamp(0, 255).to(uint8)` (StyleGAN2-ADA's scripts).
  The uint8 cast truncates; the values are >= 0 after the clamp, so truncation is floor.
  """
  x = images.astype(jnp.float32)
  if mode == "adm":
    v = (x + 1.0) * 127.5
  elif mode == "nvidia":
    v = x * 127.5 + 128.0
  else:
    raise ValueError(f"quantize mode must be 'adm' or 'nvidia', got {mode!r}")
  return jnp.floor(jnp.clip(v, 0.0, 255.0))


def to_uint8(images: ArrayLike, mode: str = "adm") -> np.ndarray:
  """Float images in [-1, 1] -> uint8 numpy (for sample `.npz` files in ADM's `arr_0` layout)."""
  return np.asarray(quantize_uint8(jnp.asarray(images), mode)).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The extractor interface.


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor:
  """A feature network with everything an evaluator needs to know about it.

  Attributes:
    name: identifies the network and layer (recorded with statistics; statistics of different
      extractors are never compared).
    convention: the preprocessing convention (recorded likewise), e.g. 'pytorch_fid', 'tf1'.
    dim: feature dimension D.
    num_classes: K, the width of the second output.
    apply_fn: jittable `(params, images [B, H, W, channels]) -> (features [B, D] float32,
      logits [B, K] float32)`, images float in [-1, 1] or uint8 in [0, 255]. The logits are
      the pre-softmax class scores that `scores.py` uses. The weights travel as the `params`
      argument rather than closed-over constants, so compiles stay small and fast.
    params: the pytree passed to `apply_fn`.
    channels: the channel count `fn` wants; 1-channel images are tiled to 3 when it wants 3.
    min_samples: below this N the FID is strongly biased; the evaluator warns.
    quantize: how float images are quantised before the network ('none', 'adm', 'nvidia').
  """

  name: str
  convention: str
  dim: int
  num_classes: int
  apply_fn: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
  params: Any
  channels: int = 3
  min_samples: int = 0
  quantize: str = "none"

  def __call__(self, images: ArrayLike) -> tuple[jax.Array, jax.Array]:
    images = check_images(images, self.channels)
    return self.jitted_apply(self.params, jnp.asarray(images))

  @functools.cached_property
  def jitted_apply(self) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
    return jax.jit(self.apply_fn)

  def warn_if_few(self, num: int) -> None:
    """Warns when `num` samples give a strongly biased FID for this extractor."""
    limit = max(self.min_samples, self.dim + 1)
    if num < limit:
      warnings.warn(
          f"FID from N={num} samples with {self.name} (dim {self.dim}) is strongly biased "
          f"(upward); use N >= {limit} for comparable numbers", stacklevel=3)


def check_images(images: ArrayLike, channels: int) -> ArrayLike:
  """Validates an NHWC batch; tiles 1-channel images to 3 when `channels == 3`.

  Raises:
    ValueError: wrong rank, channel count, dtype, non-finite values, or values outside
      [-1, 1] (beyond a 1e-3 tolerance) for float images. Range checks need concrete values
      and are skipped for traced arrays.
  """
  shape = tuple(images.shape)
  if len(shape) != 4:
    raise ValueError(f"images must be NHWC [B, H, W, C], got shape {shape}")
  c = shape[-1]
  if c != channels:
    if channels == 3 and c == 1:
      warnings.warn("1-channel images: tiling the channel to 3 (grey -> RGB) for the "
                    "3-channel feature network", stacklevel=3)
      images = jnp.tile(jnp.asarray(images), (1, 1, 1, 3))
    else:
      raise ValueError(f"the feature network wants {channels} channels, images have {c} "
                       f"(shape {shape}); NHWC layout is expected")
  dtype = np.dtype(images.dtype)
  if dtype == np.uint8:
    return images
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"images must be float in [-1, 1] or uint8 in [0, 255], got dtype {dtype}")
  if isinstance(images, jax.core.Tracer) or shape[0] == 0:
    return images
  arr = images if isinstance(images, np.ndarray) else jnp.asarray(images)
  lo, hi = (float(v) for v in jax.device_get((arr.min(), arr.max())))
  if not (np.isfinite(lo) and np.isfinite(hi)):
    raise ValueError("images contain NaN or Inf")
  if lo < -1.0 - RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
    raise ValueError(f"float images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                     "clip them (jnp.clip(x, -1, 1)) or pass uint8 images in [0, 255]")
  return images


# ----------------------------------------------------------------------------------------------
# The batched loop.


def _progress(total: int | None, progress: bool | None, desc: str):
  """A tqdm bar when asked, or by default when stderr is a terminal; else None."""
  if progress is None:
    progress = sys.stderr.isatty()
  if not progress:
    return None
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm(total=total, desc=desc, unit="img")


def _rebatch(chunks: Iterable[ArrayLike], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Re-cuts a stream of [n_i, H, W, C] chunks into [batch_size, H, W, C] batches.

  Yields (batch, num_valid); only the last batch is padded (with zeros, a valid image in
  either input range), so the jitted function sees one shape.
  """
  buf: list[np.ndarray] = []
  buffered = 0
  for chunk in chunks:
    chunk = np.asarray(chunk)
    if chunk.ndim != 4:
      raise ValueError(f"image chunks must be NHWC [n, H, W, C], got shape {chunk.shape}")
    buf.append(chunk)
    buffered += chunk.shape[0]
    while buffered >= batch_size:
      whole = np.concatenate(buf, axis=0) if len(buf) > 1 else buf[0]
      yield whole[:batch_size], batch_size
      rest = whole[batch_size:]
      buf, buffered = ([rest] if rest.shape[0] else []), rest.shape[0]
  if buffered:
    whole = np.concatenate(buf, axis=0) if len(buf) > 1 else buf[0]
    pad = np.zeros((batch_size - buffered,) + whole.shape[1:], whole.dtype)
    yield np.concatenate([whole, pad], axis=0), buffered


def _data_sharding(batch_size: int) -> jax.sharding.Sharding | None:
  """NamedSharding over a 1-D `data` mesh of this process's devices, if the batch divides."""
  if jax.process_count() == 1:
    n = jax.device_count()
    if n == 1 or batch_size % n:
      return None
    mesh = jax.make_mesh((n,), ("data",))
  else:
    # Each process evaluates its own images on its own devices.
    devices = jax.local_devices()
    if len(devices) == 1 or batch_size % len(devices):
      return None
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def iterate_features(extractor: FeatureExtractor,
                     images: ArrayLike | Iterable[ArrayLike],
                     *,
                     batch_size: int = 64,
                     progress: bool | None = None,
                     desc: str | None = None,
                     total: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Streams `(features [n, D], logits [n, K])` numpy float32 batches over many images.

  Args:
    extractor: the feature network.
    images: one NHWC array [N, H, W, C] (numpy or jax; float in [-1, 1] or uint8), or an
      iterable of such arrays of any sizes (e.g. a generator producing samples), so the images
      need never be in memory at once.
    batch_size: images per jit call; a multiple of the device count to shard over devices.
    progress: a tqdm bar; default: only when stderr is a terminal.
    desc: the bar's label.
    total: the image count for the bar, when `images` is an iterable of unknown length.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if hasattr(images, "shape") and hasattr(images, "dtype"):
    total = int(images.shape[0])
    chunks = (images[i:i + batch_size] for i in range(0, total, batch_size))
  else:
    chunks = iter(images)
  sharding = _data_sharding(batch_size)
  bar = _progress(total, progress, desc or f"features ({extractor.name})")
  pending = None
  try:
    for batch, valid in _rebatch(chunks, batch_size):
      batch = check_images(batch, extractor.channels)
      if isinstance(batch, np.ndarray) or sharding is not None:
        batch = jax.device_put(batch, sharding) if sharding is not None else jnp.asarray(batch)
      out = extractor.jitted_apply(extractor.params, batch)
      # Dispatch the next batch before fetching this one, so host and device overlap.
      if pending is not None:
        yield _fetch(*pending, bar)
      pending = (out, valid)
    if pending is not None:
      yield _fetch(*pending, bar)
  finally:
    if bar is not None:
      bar.close()


def _fetch(out: tuple[jax.Array, jax.Array], valid: int, bar) -> tuple[np.ndarray, np.ndarray]:
  feats, logits = jax.device_get(out)
  feats = np.asarray(feats, np.float32)[:valid]
  logits = np.asarray(logits, np.float32)[:valid]
  if not np.isfinite(feats).all():
    raise ValueError("the feature network produced NaN/Inf features; check the weights and "
                     "the images")
  if bar is not None:
    bar.update(valid)
  return feats, logits


def extract(extractor: FeatureExtractor,
            images: ArrayLike | Iterable[ArrayLike],
            *,
            batch_size: int = 64,
            progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """All features and logits of `images`: ([N, D] float32, [N, K] float32) numpy arrays."""
  feats, logits = [], []
  for f, l in iterate_features(extractor, images, batch_size=batch_size, progress=progress):
    feats.append(f)
    logits.append(l)
  if not feats:
    return (np.zeros((0, extractor.dim), np.float32),
            np.zeros((0, extractor.num_classes), np.float32))
  return np.concatenate(feats), np.concatenate(logits)


def extract_shared(extractor: FeatureExtractor,
                   images: ArrayLike,
                   *,
                   batch_size: int = 64,
                   progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`extract` split over processes: each featurises its share, all receive everything.

  Args:
    images: [N, H, W, C], the same array on every process.
  Returns:
    (features [N, D], logits [N, K]) float32 numpy, on every process; with one process
    exactly `extract(extractor, images)`. A collective: every process must call it.
  """
  start, stop = multihost.process_share(int(images.shape[0]))
  feats, logits = extract(extractor, images[start:stop], batch_size=batch_size,
                          progress=progress)
  return multihost.gather_rows(feats), multihost.gather_rows(logits)


def run_cli(command: Callable[[], None], verbose: bool = False) -> int:
  """Runs a command-line action through `errors.run_cli`: 0, or the exit code of the error
  with one line on stderr for what a user can fix: a bad value or file content, a missing
  file or optional package (2), an unwritable output (4). Other errors keep their traceback."""
  def guarded() -> None:
    try:
      command()
    except errors.UserError:
      raise
    except (ValueError, ImportError, FileNotFoundError) as e:
      # These CLIs' own checks raise ValueError naming the file; a missing input is the
      # user's to fix as well.
      if isinstance(e, OSError) and e.errno in errors.IO_ERRNOS:
        raise
      raise errors.BadInputError(errors.one_line(e)) from e
  return errors.run_cli(guarded, verbose=verbose)
