"""DiffAugment: differentiable augmentation of D's inputs for small datasets.

The ops are those of DiffAugment (Zhao et al., NeurIPS 2020): 'color' (brightness,
saturation, contrast), 'translation' (up to 1/8 of the size, zero fill) and 'cutout' (a
square of half the size set to zero). Each op is applied to each image independently with
probability `p`, as ADA (Karras et al., NeurIPS 2020) gates every op of its pipeline:

  * `train.augment = 'diffaugment'`: p fixed at `train.augment_p` (1.0 = DiffAugment proper);
  * `train.augment = 'diffaugment_ada'`: these ops with p adapted by ADA's rule
    (`augment_pipe.adjust_p`). NVIDIA's ADA proper (its own op pipeline) is
    `train.augment = 'ada'`, in augment_pipe.py.

Everything is differentiable in the images (gathers and masks), so G receives gradients
through the augmented fakes and R1 is taken through the augmentation of the reals. All
random draws are global-batch shaped inside jit, so results do not depend on the device or
process count.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

OPS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
  """'color,translation' -> ('color', 'translation'); raises ValueError on unknown ops."""
  ops = tuple(op.strip() for op in policy.split(",") if op.strip())
  for op in ops:
    if op not in OPS:
      raise ValueError(f"unknown augmentation op {op!r}; allowed ops are {list(OPS)}")
  return ops


# Each sub-op reads its random numbers from one [B, NUM_DRAWS] uniform draw made per
# `augment` call: one threefry expansion instead of a dozen keeps the compiled step small.
# Columns: 0 gate, 1-2 parameters.
NUM_DRAWS = 3


def _column(u: Array, i: int) -> Array:
  return u[:, i][:, None, None, None]


def _randint(u: Array, lo: int, hi: int) -> Array:
  """Integers uniform in [lo, hi) from uniforms u in [0, 1): [B] -> [B, 1]."""
  return jnp.clip(jnp.floor(lo + u * (hi - lo)), lo, hi - 1).astype(jnp.int32)[:, None]


def brightness(x: Array, u: Array) -> Array:
  """x + U(-0.5, 0.5) per image. x [B, H, W, C] in [-1, 1]; u [B, NUM_DRAWS] uniforms."""
  return x + (_column(u, 1) - 0.5)


def saturation(x: Array, u: Array) -> Array:
  """Scales the deviation from the per-pixel channel mean by U(0, 2) (identity for C = 1)."""
  mean = jnp.mean(x, axis=3, keepdims=True)
  return (x - mean) * (_column(u, 1) * 2.0) + mean


def contrast(x: Array, u: Array) -> Array:
  """Scales the deviation from the per-image mean by U(0.5, 1.5)."""
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (_column(u, 1) + 0.5) + mean


def translation(x: Array, u: Array, ratio: float = TRANSLATION_RATIO) -> Array:
  """Integer shift in [-s, s] per axis and image (s = round(ratio * size)), zero fill."""
  b, h, w, _ = x.shape
  shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
  th = _randint(u[:, 1], -shift_h, shift_h + 1)                   # [B, 1]
  tw = _randint(u[:, 2], -shift_w, shift_w + 1)
  rows = jnp.arange(h)[None, :] + th                              # [B, H]
  cols = jnp.arange(w)[None, :] + tw                              # [B, W]
  valid = (((rows >= 0) & (rows < h))[:, :, None] &
           ((cols >= 0) & (cols < w))[:, None, :])                # [B, H, W]
  batch_idx = jnp.arange(b)[:, None, None]
  out = x[batch_idx, jnp.clip(rows, 0, h - 1)[:, :, None], jnp.clip(cols, 0, w - 1)[:, None, :]]
  return jnp.where(valid[..., None], out, 0.0)


def cutout(x: Array, u: Array, ratio: float = CUTOUT_RATIO) -> Array:
  """Zeroes a square of side round(ratio * size) at a random centre per image."""
  _, h, w, _ = x.shape
  size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
  oh = _randint(u[:, 1], 0, h + (1 - size_h % 2))                 # [B, 1]
  ow = _randint(u[:, 2], 0, w + (1 - size_w % 2))
  start_h, start_w = oh - size_h // 2, ow - size_w // 2
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  in_h = (rows >= start_h) & (rows < start_h + size_h)            # [B, H]
  in_w = (cols >= start_w) & (cols < start_w + size_w)            # [B, W]
  mask = ~(in_h[:, :, None] & in_w[:, None, :])                   # [B, H, W]
  return x * mask[..., None].astype(x.dtype)


_SUB_OPS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def augment(images: Array, key: Array, p: Array | float, ops: Sequence[str]) -> Array:
  """Applies each sub-op of `ops` to each image independently with probability `p`.

  Args:
    images: [B, H, W, C] float32.
    key: PRNG key (fold it by step and purpose; reals and fakes get different keys).
    p: [] probability of each op (traced: ADA's adaptive p lives in the train state).
    ops: op names from OPS, in application order.
  Returns:
    [B, H, W, C] augmented images, differentiable in `images`.
  """
  fns = [fn for op in ops for fn in _SUB_OPS[op]]
  if not fns:
    return images
  b = images.shape[0]
  draws = jax.random.uniform(key, (len(fns), b, NUM_DRAWS))
  x = images
  for fn, u in zip(fns, draws):
    x = jnp.where(_column(u, 0) < p, fn(x, u), x)
  return x

