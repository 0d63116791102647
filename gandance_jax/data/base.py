"""The common input interface and the deterministic in-memory sources (no other module of
the package below it: the sources import this, and `pipeline.py` builds them).

Every source exposes

  num_classes, resolution, channels, num_examples (None if unknown or infinite),
  example_shape           shape of one 'image' entry: (H, W, C), or (2,) for 2D mixtures
  batches(global_batch_size, start_step=0, *, process_index=None, process_count=None)
      -> iterator over {'image': float32 [b, *example_shape], 'label': int32 [b]}

where b = global_batch_size // process_count is THIS process's share of the global batch
(the trainer assembles the global array with `jax.make_array_from_process_local_data`).

Determinism and resumption. The in-memory sources (digits, npz, folder, 2D mixtures) are
pure functions of (seed, step): `global_batch_at(step, B)` does not depend on any iterator
state, so a run restarted with `start_step=restored_step` sees bit-for-bit the batches an
uninterrupted run would have seen, and process p of P always takes the contiguous slice
[p * b, (p + 1) * b) of the same global batch, whatever P is. Concretely, for a dataset of N
examples the global stream is an endless concatenation of epochs; epoch e is the permutation
`np.random.default_rng([seed, PERM, e]).permutation(N)`; step s covers stream positions
[s * B, (s + 1) * B) (a step may straddle two epochs, nothing is dropped). The x-flip of the
example at position i of step s's global batch is `default_rng([seed, FLIP, s]).random(B)[i] < .5`:
drawn for the whole global batch and then sliced, so it is independent of the process count.

The tf.data sources (cifar10, imagenet_resized) live in `tfds_input.py`, which imports
TensorFlow only when a pipeline is built; the factory `make_source` is in `pipeline.py`.
"""

from __future__ import annotations

import abc
import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]

# Names accepted by `make_source` (the value of `data.name`).
IMAGE_ARRAY_NAMES = ("digits", "digits100", "npz", "folder")
TFDS_NAMES = ("cifar10", "imagenet_resized/32x32", "imagenet_resized/64x64")
MIXTURE_NAMES = ("mixture_8gaussians", "mixture_25gaussians")
SOURCE_NAMES = ("digits", "digits100") + TFDS_NAMES + ("npz", "folder") + MIXTURE_NAMES

# Purpose tags mixed into the numpy seed sequences, so that the permutation and the flips
# of the same (seed, step) are independent streams (mixtures2d adds 'MIXT').
_PERM_TAG = 0x5045524D  # 'PERM'
_FLIP_TAG = 0x464C4950  # 'FLIP'
_SUBSET_TAG = 0x53554253  # 'SUBS'
# The seed of `stratified_subset`: fixed, not data.seed, so that runs with different seeds
# (which reorder the batches) still train on the same images.
SUBSET_SEED = 0


# ----------------------------------------------------------------------------- validation


def check_resolution(value: Any, field: str = "data.resolution", minimum: int = 4) -> int:
  """Returns `value` as an int if it is a power of two >= minimum, else raises ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{field} must be an int power of two >= {minimum}, got {value!r}")
  value = int(value)
  if value < minimum or value & (value - 1):
    raise ValueError(f"{field} must be a power of two >= {minimum}, got {value}")
  return value


def check_seed(value: Any, field: str = "data.seed") -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{field} must be a non-negative int, got {value!r}")
  return int(value)


def check_bool(value: Any, field: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{field} must be True or False, got {value!r}")
  return bool(value)


def check_max_images(value: Any, num_examples: int, field: str = "data.max_images") -> int:
  """Returns `value` as an int if it is 0 (all images) or in [1, num_examples], else raises
  ValueError naming the field."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
      0 <= value <= num_examples):
    raise ValueError(f"{field} must be an int in [1, {num_examples}] (the dataset size) or 0 "
                     f"(all images), got {value!r}")
  return int(value)


def stratified_subset(labels: np.ndarray, num_images: int, num_classes: int,
                      seed: int = SUBSET_SEED) -> np.ndarray:
  """int64 [num_images]: sorted indices of a class-stratified subset of a labelled dataset.

  Each class c gets floor(num_images * n_c / N) images (n_c its count, N = len(labels)) and
  the images left over go one each to the classes with the largest remainders (ties to the
  lower class id), so class frequencies are kept to within one image. Within a class the
  images are the first of a permutation drawn from `default_rng([seed, SUBS, c])`: the subset
  depends only on (labels, num_images, seed), never on data.seed or the step, so every run
  with the same `data.max_images` trains on the same images (stylegan2-ada-pytorch's
  `--subset` draws a plain random subset; stratifying keeps a 300-image cut of 10 classes
  from being unbalanced by chance).

  Args:
    labels: int [N] class ids in [0, num_classes).
    num_images: subset size in [1, N].
    num_classes: number of classes K.
    seed: non-negative int (default `SUBSET_SEED`).
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  check_max_images(num_images, n)
  if num_images < 1:
    raise ValueError(f"stratified_subset needs num_images >= 1, got {num_images}")
  counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
  exact = num_images * counts  # quota * N, kept in integers so the remainders are exact
  quota = exact // n
  remainder = exact - quota * n
  # Largest remainder first; lexsort's last key is the primary one, ties go to the lower id.
  order = np.lexsort((np.arange(num_classes), -remainder))
  quota[order[:num_images - int(quota.sum())]] += 1
  picked = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    perm = np.random.default_rng([seed, _SUBSET_TAG, c]).permutation(len(members))
    picked.append(members[perm[:quota[c]]])
  return np.sort(np.concatenate(picked)).astype(np.int64)


def process_layout(global_batch_size: Any, process_index: int | None,
                    process_count: int | None) -> tuple[int, int, int]:
  """Validates the batch split; returns (per_process_batch, process_index, process_count)."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if isinstance(global_batch_size, bool) or not isinstance(global_batch_size,
                                                           (int, np.integer)):
    raise ValueError(f"global_batch_size must be an int, got {global_batch_size!r}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of the "
        f"process count {process_count}")
  return int(global_batch_size) // process_count, int(process_index), int(process_count)


def check_step(start_step: Any) -> int:
  if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or (
      start_step < 0):
    raise ValueError(f"start_step must be a non-negative int, got {start_step!r}")
  return int(start_step)


# ----------------------------------------------------------------------------- sources


class Source(abc.ABC):
  """Interface shared by all data sources (see the module docstring)."""

  name: str
  num_classes: int
  resolution: int | None
  channels: int
  num_examples: int | None

  @property
  def example_shape(self) -> tuple[int, ...]:
    """Shape of one 'image' entry: (H, W, C) for images."""
    return (self.resolution, self.resolution, self.channels)

  @abc.abstractmethod
  def batches(self, global_batch_size: int, start_step: int = 0, *,
              process_index: int | None = None,
              process_count: int | None = None) -> Iterator[Batch]:
    """Endless iterator of this process's batches for steps start_step, start_step+1, ...

    Yields {'image': float32 [b, *example_shape], 'label': int32 [b]} with
    b = global_batch_size // process_count.
    """

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
            f"example_shape={self.example_shape}, num_examples={self.num_examples})")


class StepSource(Source):
  """A source whose batches are a pure function of (seed, step)."""

  @abc.abstractmethod
  def process_batch_at(self, step: int, global_batch_size: int, process_index: int,
                       process_count: int) -> Batch:
    """Process `process_index`'s slice of global batch `step` (validated arguments)."""

  def global_batch_at(self, step: int, global_batch_size: int) -> Batch:
    """All processes' examples of step `step`: {'image': [B, ...], 'label': [B]}."""
    process_layout(global_batch_size, 0, 1)
    return self.process_batch_at(check_step(step), int(global_batch_size), 0, 1)

  def batches(self, global_batch_size: int, start_step: int = 0, *,
              process_index: int | None = None,
              process_count: int | None = None) -> Iterator[Batch]:
    _, process_index, process_count = process_layout(global_batch_size, process_index,
                                                      process_count)
    start_step = check_step(start_step)
    # Validate eagerly (above), then hand out a generator: errors surface at the call.
    return self._iterate(int(global_batch_size), start_step, process_index, process_count)

  def _iterate(self, global_batch_size: int, start_step: int, process_index: int,
               process_count: int) -> Iterator[Batch]:
    for step in itertools.count(start_step):
      yield self.process_batch_at(step, global_batch_size, process_index, process_count)


def _flip_bits(seed: int, step: int, global_batch_size: int) -> np.ndarray:
  """bool [B]: which examples of global batch `step` are mirrored."""
  return np.random.default_rng([seed, _FLIP_TAG, step]).random(global_batch_size) < 0.5


class ArraySource(StepSource):
  """Labelled images held in memory (digits, npz, image folder), deterministic per step.

  Images are kept as given (uint8 in [0, 255] or float32 in [-1, 1]) and converted per batch,
  so a uint8 dataset costs 1 byte per value in memory.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int,
               xflip: bool = False, seed: int = 0, name: str = "array",
               class_names: tuple[str, ...] | None = None):
    """Args:
      images: [N, H, W, C] uint8 (0..255) or float32 ([-1, 1]), H == W.
      labels: [N] integer class ids in [0, num_classes).
      num_classes: number of classes K.
      xflip: mirror each example horizontally with probability 1/2.
      seed: non-negative int; with the step it determines every batch.
      name: the data.name this source was made for.
      class_names: optional K names, id order.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
      raise ValueError(f"images must be [N, R, R, C], got shape {images.shape}")
    if images.dtype not in (np.uint8, np.float32):
      raise ValueError(f"images must be uint8 or float32, got {images.dtype}")
    if labels.shape != images.shape[:1]:
      raise ValueError(
          f"labels must have shape [{images.shape[0]}], got {labels.shape}")
    if images.shape[0] == 0:
      raise ValueError("the dataset is empty")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"labels must be in [0, {num_classes}), got range "
                       f"[{labels.min()}, {labels.max()}]")
    self.name = name
    self.images = images
    self.labels = labels.astype(np.int32)
    self.num_classes = int(num_classes)
    self.resolution = int(images.shape[1])
    self.channels = int(images.shape[3])
    self.num_examples = int(images.shape[0])
    self.xflip = check_bool(xflip, "data.xflip")
    self.seed = check_seed(seed)
    self.class_names = tuple(class_names) if class_names is not None else None
    self._perm_cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  def _permutation(self, epoch: int) -> np.ndarray:
    # A step touches at most a couple of consecutive epochs: keep the last two.
    perm = self._perm_cache.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, _PERM_TAG, epoch]).permutation(
          self.num_examples)
      self._perm_cache[epoch] = perm
      while len(self._perm_cache) > 2:
        self._perm_cache.popitem(last=False)
    return perm

  def indices_at(self, step: int, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> np.ndarray:
    """int64 [b]: dataset indices of this process's slice of global batch `step`."""
    b = global_batch_size // process_count
    first = step * global_batch_size + process_index * b  # Python int: no overflow
    positions = first + np.arange(b, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty(b, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      indices[sel] = self._permutation(int(epoch))[offsets[sel]]
    return indices

  def process_batch_at(self, step: int, global_batch_size: int, process_index: int,
                       process_count: int) -> Batch:
    b = global_batch_size // process_count
    idx = self.indices_at(step, global_batch_size, process_index, process_count)
    images = self.images[idx]  # fancy indexing copies: never a view of the storage
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    if self.xflip:
      flip = _flip_bits(self.seed, step, global_batch_size)[
          process_index * b:(process_index + 1) * b]
      images[flip] = images[flip, :, ::-1]
    return {"image": images, "label": self.labels[idx]}


# ----------------------------------------------------------------------------- device feed


def prefetch_to_device(iterator: Iterable[Batch], size: int, sharding: Any) -> Iterator[Any]:
  """Turns per-process numpy batches into global jax.Arrays, `size` batches ahead.

  Each leaf goes through `jax.make_array_from_process_local_data(sharding, leaf)`, so with
  a `NamedSharding(mesh, P('data'))` the result is the global batch sharded over the data
  axis (global leading dim = b * process_count). Transfers are asynchronous, so keeping
  `size` batches in flight overlaps host->device copies with the train step.

  Args:
    iterator: yields pytrees (e.g. {'image': [b, ...], 'label': [b]}) of numpy arrays.
    size: number of batches to keep on device ahead of consumption (>= 1; 2 is typical).
    sharding: a `jax.sharding.Sharding` used for every leaf, or a pytree of shardings with
      the structure of a batch.
  Yields:
    The same pytrees with jax.Array leaves.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"prefetch size must be an int >= 1, got {size!r}")

  def put(batch):
    if isinstance(sharding, jax.sharding.Sharding):
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
    return jax.tree.map(
        lambda s, x: jax.make_array_from_process_local_data(s, np.asarray(x)),
        sharding, batch)

  iterator = iter(iterator)
  queue: collections.deque = collections.deque()

  def enqueue(n: int) -> None:
    for batch in itertools.islice(iterator, n):
      queue.append(put(batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
