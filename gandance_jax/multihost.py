"""Cross-process helpers for sampling and evaluation (all are no-ops with one process).

Multi-host evaluation follows one pattern: every process takes its contiguous share of the
N samples (`process_share`), generates and featurises them on its own devices with no
communication at all, and only the small results are exchanged at the end: the running FID
statistics (count, mean, scatter), the logits and, when precision/recall needs them, the
features (`gather_rows`). Sample i's randomness depends only on its global index i, so the
result is the same whatever the number of processes.

The exchanges are bit-exact for any dtype: arrays travel as raw uint32 words (JAX would
otherwise cast float64 statistics to float32 when x64 is off).

Every function here that communicates is a collective: all processes must call it, in the
same order.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

_HEADER_LEN = 16  # ndim + up to 15 dims of the per-process array shape


def is_main() -> bool:
  """True on process 0, the one that writes files and metrics."""
  return jax.process_index() == 0


def process_share(n: int, process_index: int | None = None,
                  process_count: int | None = None) -> tuple[int, int]:
  """[start, stop) of this process's contiguous share of n items (sizes differ by <= 1)."""
  p = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= p < count:
    raise ValueError(f"process_index {p} is not in [0, {count})")
  return n * p // count, n * (p + 1) // count


def allgather(x: Any) -> np.ndarray:
  """x (the same shape and dtype on every process) -> [process_count, *x.shape], bit-exact."""
  x = np.ascontiguousarray(np.asarray(x))
  if jax.process_count() == 1:
    return x[None]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  raw = np.frombuffer(x.tobytes(), np.uint8)
  words = np.zeros(-(-raw.size // 4) * 4, np.uint8)
  words[:raw.size] = raw
  got = np.asarray(multihost_utils.process_allgather(words.view(np.uint32)))  # [P, W]
  got = np.ascontiguousarray(got).view(np.uint8)[:, :raw.size]
  return np.ascontiguousarray(got).view(x.dtype).reshape((got.shape[0],) + x.shape)


def _header(x: np.ndarray) -> np.ndarray:
  if x.ndim >= _HEADER_LEN:
    raise ValueError(f"gather_rows supports up to {_HEADER_LEN - 1} dims, got {x.ndim}")
  h = np.full((_HEADER_LEN,), -1, np.int64)
  h[0] = x.ndim
  h[1:1 + x.ndim] = x.shape
  return h


def gather_rows(x: Any) -> np.ndarray:
  """Per-process rows [n_p, ...] -> their concatenation [sum n_p, ...] in process order.

  Every process receives the whole result. Row counts may differ between processes (even
  be 0); the trailing shape and the dtype must agree.

  Raises:
    ValueError naming the processes whose trailing shape differs.
  """
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  headers = allgather(_header(x))  # [P, 16]
  ndims = headers[:, 0]
  trailing = [tuple(int(d) for d in h[2:1 + int(h[0])]) for h in headers]
  if len(set(ndims.tolist())) != 1 or len(set(trailing)) != 1:
    raise ValueError(f"gather_rows: processes disagree on the trailing shape: {trailing}")
  counts = headers[:, 1]
  padded = np.zeros((int(counts.max()),) + x.shape[1:], x.dtype)
  padded[:x.shape[0]] = x
  everything = allgather(padded)
  return np.concatenate([everything[p, :int(c)] for p, c in enumerate(counts)], axis=0)


def all_true(flag: bool) -> bool:
  """True iff `flag` is true on every process (e.g. 'my cache file exists')."""
  return bool(allgather(np.asarray([bool(flag)], np.int32)).min())


def local_copy(tree: Any) -> Any:
  """Replicated (possibly multi-process) jax.Arrays -> this process's copy, on one device.

  A replicated global array is not fully addressable in a multi-process run; any of its
  local shards holds the whole value, which local-device programs can then use.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError(f"local_copy needs replicated arrays, got sharding {x.sharding}")
      return x.addressable_data(0)
    return x
  return jax.tree.map(one, tree)


def to_global(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array (the same value on every process) -> a global jax.Array with `sharding`;
  each process supplies the shards of its own devices."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process, batch-sharded) array -> the whole value as numpy.

  Collective when `x` spans several processes: every process must call it.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str) -> None:
  """A barrier across processes (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
