"""tf.data / TFDS pipelines for cifar10 and imagenet_resized/{32x32,64x64}.

TensorFlow is imported only when a pipeline is built (`_tf()`), and is told not to use any
GPU, so it neither slows `import gandance_jax.data` nor grabs accelerator memory from JAX.

Pipeline, per process p of P (the shape every step of the trainer relies on):

  tfds split 'train' cut into P equal parts (`tfds.even_splits(..., drop_remainder=True)`,
  so process p reads only its files and all processes run the same number of steps)
  -> images left PNG/JPEG-encoded (`SkipDecoding`), so shuffling and skipping are cheap
  -> epoch e: shuffle with buffer `shuffle_buffer` and seed f(seed, e) (one fixed order per
     (seed, e), independent of how often the pipeline was restarted)
  -> epochs concatenated, examples enumerated (stream position i)
  -> decode, optional resize, to float32 [-1, 1], optional x-flip decided by a stateless
     rng from (seed, i)
  -> batch b = global_batch // P (drop_remainder) -> prefetch -> numpy.

Resumption: batch s of a run that starts at `start_step=s0` equals batch s of a run that
started at 0 (bit-for-bit, for the same process count and shuffle buffer). The restarted
pipeline starts directly at epoch e0 = (s0 * b) // n_p and skips (s0 * b) mod n_p encoded
records of that epoch, so the cost of a resume is reading (not decoding) at most one
epoch of this process's shard (ImageNet-64 on one host: ~1.28M records, some tens of
seconds of I/O; on P hosts 1/P of that). The stream depends on the process count (each
process shuffles its own shard), unlike the in-memory sources.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from gandance_jax.data import base

__all__ = ["TfdsSource", "DATASETS"]

# name -> (native resolution, num_classes, channels, train examples)
DATASETS = {
    "cifar10": (32, 10, 3, 50_000),
    "imagenet_resized/32x32": (32, 1000, 3, 1_281_167),
    "imagenet_resized/64x64": (64, 1000, 3, 1_281_167),
}


@functools.cache
def _tf():
  """Imports TensorFlow once, hiding GPUs from it (JAX owns the accelerators)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    # TF was already initialised by someone else; it may then see GPUs, but we can't
    # change that any more.
    pass
  return tf


class TfdsSource(base.Source):
  """A TFDS image-classification dataset as per-process numpy batches (see module doc)."""

  def __init__(self, name: str, *, resolution: int | None = None, xflip: bool = False,
               seed: int = 0, data_dir: str | None = None, split: str = "train",
               shuffle_buffer: int = 10_000, download: bool = True):
    """Args:
      name: one of DATASETS.
      resolution: output size (power of two); None = native. Other sizes are resized with
        antialiased bilinear (downsampling) or bicubic (upsampling) filtering.
      xflip: mirror each example with probability 1/2.
      seed: non-negative int: shuffle order and flips.
      data_dir: tfds data dir (None = TFDS default, ~/tensorflow_datasets).
      split: tfds split to read.
      shuffle_buffer: tf.data shuffle buffer size (encoded images, so cheap).
      download: let tfds download/prepare the dataset if missing (prepare it beforehand on
        multi-host jobs: `tfds build cifar10 --data_dir=...`).
    """
    if name not in DATASETS:
      raise ValueError(f"data.name must be one of {list(DATASETS)}, got {name!r}")
    native, num_classes, channels, num_examples = DATASETS[name]
    self.name = name
    self.native_resolution = native
    self.resolution = (native if resolution is None else
                       base.check_resolution(resolution))
    self.num_classes = num_classes
    self.channels = channels
    self.num_examples = num_examples if split == "train" else None
    self.xflip = base.check_bool(xflip, "data.xflip")
    self.seed = base.check_seed(seed)
    self.data_dir = data_dir
    self.split = split
    if shuffle_buffer < 1:
      raise ValueError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
    self.shuffle_buffer = int(shuffle_buffer)
    self.download = download

  def dataset(self, global_batch_size: int, start_step: int = 0, *,
              process_index: int | None = None, process_count: int | None = None):
    """The tf.data.Dataset of this process's batches (dicts of tf tensors)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tf = _tf()
    b, process_index, process_count = base.process_layout(
        global_batch_size, process_index, process_count)
    start_step = base.check_step(start_step)

    split = tfds.even_splits(self.split, n=process_count, drop_remainder=True)[process_index]
    records = tfds.load(self.name, split=split, data_dir=self.data_dir, shuffle_files=False,
                     download=self.download,
                     decoders={"image": tfds.decode.SkipDecoding()})
    records = records.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
    n_local = int(records.cardinality())
    if n_local < 1:
      raise ValueError(
          f"{self.name}: the '{self.split}' shard of process {process_index}/"
          f"{process_count} has unknown or zero size ({n_local})")

    start_example = start_step * b
    start_epoch, offset = divmod(start_example, n_local)
    seed = self.seed
    buffer = min(self.shuffle_buffer, n_local)

    def epoch(e):
      # A fresh seed per epoch: the order of epoch e never depends on where we started.
      epoch_seed = tf.random.stateless_uniform(
          [], seed=tf.stack([tf.constant(seed, tf.int64), e]), minval=None, maxval=None,
          dtype=tf.int64)
      return records.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    ds = ds.skip(offset).enumerate(start=start_example)
    ds = ds.map(functools.partial(self._preprocess, tf),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # One thread per op: tf.data's parallelism comes from the map, and the trainer's CPU
    # threads are left to JAX.
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)

  def _preprocess(self, tf, position, example):
    image = tf.io.decode_image(example["image"], channels=self.channels,
                               expand_animations=False)
    image.set_shape([None, None, self.channels])
    image = tf.cast(image, tf.float32)
    r = self.resolution
    if r != self.native_resolution:
      method = "bilinear" if r < self.native_resolution else "bicubic"
      image = tf.image.resize(image, [r, r], method=method, antialias=True)
    image = tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)
    image = tf.ensure_shape(image, [r, r, self.channels])
    if self.xflip:
      image = tf.image.stateless_random_flip_left_right(
          image, seed=tf.stack([tf.constant(self.seed, tf.int64), position]))
    return {"image": image, "label": tf.cast(example["label"], tf.int32)}

  def batches(self, global_batch_size: int, start_step: int = 0, *,
              process_index: int | None = None,
              process_count: int | None = None) -> Iterator[dict[str, Any]]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    ds = self.dataset(global_batch_size, start_step, process_index=process_index,
                      process_count=process_count)
    return iter(tfds.as_numpy(ds))
