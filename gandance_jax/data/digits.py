"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

The digits ship inside scikit-learn (no download), as 8x8 grey images with integer
intensities 0..16. We map them to float32 [-1, 1] and upsample to the requested power-of-two
resolution bilinearly (half-pixel centres), so the StyleGAN2 networks see a proper image.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_CLASSES = 10
NUM_IMAGES = 1797


@functools.lru_cache(maxsize=8)
def _load(resolution: int) -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  if resolution < 8 or resolution & (resolution - 1):
    raise ValueError(
        f"digits resolution must be a power of two >= 8, got resolution={resolution}")
  bunch = load_digits()
  images = bunch.images.astype(np.float32) / 16.0 * 2.0 - 1.0  # [N, 8, 8] in [-1, 1]
  images = images[..., None]  # NHWC, one channel
  if resolution != 8:
    # A local device: in multi-process runs jax.devices()[0] belongs to process 0 only.
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      images = np.asarray(
          jax.image.resize(images, (images.shape[0], resolution, resolution, 1),
                           method="linear", antialias=False))
  images = np.clip(images, -1.0, 1.0).astype(np.float32)
  labels = bunch.target.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_digits(resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images [1797, R, R, 1] float32 in [-1, 1], labels [1797] int32 in [0, 10)).

  The arrays are cached and read-only; copy them before modifying.
  """
  return _load(int(resolution))
