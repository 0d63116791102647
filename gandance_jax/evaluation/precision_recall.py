"""Improved precision and recall (Kynkaanniemi et al. 2019) as ADM's evaluator computes them.

Each set's manifold is the union of balls around its points; a point's radius is its squared
Euclidean distance to its k-th nearest *other* point of the same set (k = 3; the k+1-th
smallest distance in its row, whose smallest is the self-distance 0). A point counts as
covered when it lies within (<=) any ball of the other set.

* precision = fraction of samples inside the reference manifold;
* recall    = fraction of reference points inside the sample manifold.

Distances are squared, `max(|u|^2 - 2 u.v + |v|^2, 0)`, in float32 (ADM tries float16 first
and falls back to float32 on overflow; at the boundary a few points may therefore differ from
its numbers), computed in jit-compiled row x column blocks (10,000 x 10,000 by default, so
50k x 50k never sits in memory). The k nearest neighbours are kept as a running top-k merged
block by block, so memory is O(row_batch * col_batch) rather than O(row_batch * N).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NHOOD_SIZE = 3
BATCH_SIZE = 10_000


def _sq_distances(u: jax.Array, v: jax.Array) -> jax.Array:
  """[R, D] x [C, D] -> [R, C] squared distances, clamped at 0 (round-off)."""
  norm_u = jnp.sum(u * u, axis=1)[:, None]
  norm_v = jnp.sum(v * v, axis=1)[None, :]
  uv = jnp.dot(u, v.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(norm_u - 2.0 * uv + norm_v, 0.0)


pairwise_sq_distances = jax.jit(_sq_distances)


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_step(running: jax.Array, rows: jax.Array, cols: jax.Array, num_valid_cols: jax.Array,
              k: int) -> jax.Array:
  """Merges one column block into the running k+1 smallest distances of each row."""
  d = _sq_distances(rows, cols)
  valid = jnp.arange(cols.shape[0]) < num_valid_cols
  d = jnp.where(valid[None, :], d, jnp.inf)  # padded columns are nobody's neighbour
  cand = jnp.concatenate([running, d], axis=1)
  neg_smallest, _ = jax.lax.top_k(-cand, k + 1)
  return -neg_smallest  # ascending


@jax.jit
def _in_balls_step(a: jax.Array, radii_a: jax.Array, b: jax.Array,
                   radii_b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(a_i within some ball of b [R], b_j within some ball of a [C]) for one block pair."""
  d = _sq_distances(a, b)
  a_in = jnp.any(d <= radii_b[None, :], axis=1)
  b_in = jnp.any(d <= radii_a[:, None], axis=0)
  return a_in, b_in


def _as_features(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contain NaN/Inf")
  return x


def _pad_rows(x: np.ndarray, multiple: int, value: float = 0.0) -> np.ndarray:
  n = x.shape[0]
  pad = (-n) % multiple
  if not pad:
    return x
  return np.concatenate([x, np.full((pad,) + x.shape[1:], value, x.dtype)], axis=0)


def manifold_radii(features: Any, *, k: int = NHOOD_SIZE, row_batch_size: int = BATCH_SIZE,
                   col_batch_size: int = BATCH_SIZE) -> np.ndarray:
  """Squared distance of each point to its k-th nearest other point: [N] float32.

  Args:
    features: [N, D], N > k.
  """
  x = _as_features(features, "features")
  n = x.shape[0]
  if n <= k:
    raise ValueError(f"need more than k={k} points for k-NN radii, got {n}")
  rb, cb = min(row_batch_size, n), min(col_batch_size, n)
  rows_p, cols_p = _pad_rows(x, rb), _pad_rows(x, cb)
  cols_dev = [jnp.asarray(cols_p[j:j + cb]) for j in range(0, n, cb)]
  radii = []
  for i in range(0, n, rb):
    rows = jnp.asarray(rows_p[i:i + rb])
    running = jnp.full((rb, k + 1), jnp.inf, jnp.float32)
    for jb, cols in enumerate(cols_dev):
      running = _knn_step(running, rows, cols, jnp.int32(n - jb * cb), k=k)
    radii.append(np.asarray(running[:, k]))
  return np.concatenate(radii)[:n]


def manifold_membership(features_a: Any, radii_a: Any, features_b: Any, radii_b: Any, *,
                        row_batch_size: int = BATCH_SIZE,
                        col_batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """Which points of each set lie inside the other set's manifold.

  Returns:
    (a_in [Na] bool: a_i within some ball of b; b_in [Nb] bool: b_j within some ball of a).
  """
  a = _as_features(features_a, "features_a")
  b = _as_features(features_b, "features_b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
  ra = np.asarray(radii_a, np.float32).reshape(-1)
  rbad = np.asarray(radii_b, np.float32).reshape(-1)
  if ra.shape[0] != a.shape[0] or rbad.shape[0] != b.shape[0]:
    raise ValueError("radii must have one entry per point")
  na, nb = a.shape[0], b.shape[0]
  bs_a, bs_b = min(row_batch_size, na), min(col_batch_size, nb)
  # Padding gets radius -1: distances are >= 0, so a padded ball contains nothing.
  a_p, ra_p = _pad_rows(a, bs_a), _pad_rows(ra, bs_a, -1.0)
  b_p, rb_p = _pad_rows(b, bs_b), _pad_rows(rbad, bs_b, -1.0)
  a_in = np.zeros(a_p.shape[0], bool)
  b_in = np.zeros(b_p.shape[0], bool)
  b_blocks = [(j, jnp.asarray(b_p[j:j + bs_b]), jnp.asarray(rb_p[j:j + bs_b]))
              for j in range(0, nb, bs_b)]
  for i in range(0, na, bs_a):
    a_blk, ra_blk = jnp.asarray(a_p[i:i + bs_a]), jnp.asarray(ra_p[i:i + bs_a])
    for j, b_blk, rb_blk in b_blocks:
      ai, bj = _in_balls_step(a_blk, ra_blk, b_blk, rb_blk)
      a_in[i:i + bs_a] |= np.asarray(ai)
      b_in[j:j + bs_b] |= np.asarray(bj)
  return a_in[:na], b_in[:nb]


def precision_recall(ref_features: Any, sample_features: Any, *, k: int = NHOOD_SIZE,
                     row_batch_size: int = BATCH_SIZE,
                     col_batch_size: int = BATCH_SIZE) -> tuple[float, float]:
  """Improved (precision, recall) of samples against a reference set, as ADM reports them.

  Args:
    ref_features: [N1, D] features of real images (e.g. pool3).
    sample_features: [N2, D] features of generated images.
    k: neighbourhood size (ADM and the paper: 3).

  Returns:
    (precision = mean over samples of "inside the reference manifold",
     recall = mean over references of "inside the sample manifold").
  """
  kw = dict(row_batch_size=row_batch_size, col_batch_size=col_batch_size)
  ref_radii = manifold_radii(ref_features, k=k, **kw)
  sample_radii = manifold_radii(sample_features, k=k, **kw)
  ref_in, sample_in = manifold_membership(ref_features, ref_radii, sample_features,
                                          sample_radii, **kw)
  return float(sample_in.mean()), float(ref_in.mean())
