"""GANdance guided latents (ECCV 2024): the maths only (the runtime is sampler.py).

The maths (supplementary Alg. 2 and Alg. 3, ../shared/DESIGN.md)::

  w_c    = G_map(z, c)
  w_oppo = mean_{c' in C} G_map(z, c')      training-free: C an opposite condition set
  w_oppo = G_map(z, empty)                  learning-based: the extra "empty" class
  w'     = w_oppo + scale * (w_c - w_oppo)  scale: scalar or a [num_ws] vector (layer-wise)
  w''    = w_avg + psi * (w' - w_avg)       truncation (optional)
  x      = G_syn(w'')

Two numerical choices, both invisible in exact arithmetic:

* ``w'`` is computed as ``w_c + (scale - 1) * (w_c - w_oppo)`` behind a ``scale == 1`` select,
  so that scale 1 returns ``w_c`` bit for bit (the lerp form ``w_oppo + 1 * (w_c - w_oppo)``
  does not round-trip in floating point). Per layer for a vector scale, so layers at scale 1
  are untouched. A scale known to be 1 on the host (a Python / numpy / concrete value) is
  unguided sampling (`is_unguided`, the one place that decides it): the opposite mapping is
  skipped altogether, and `sampler.make_sampler` then compiles the unguided program: only
  that makes scale 1 bitwise equal to a *separately compiled* unguided run, because XLA on
  CPU may fuse the mapping's last layer differently in two programs and LLVM may then
  contract a multiply-add into an FMA in one but not the other (1-ulp differences).
* Truncation is applied to the guided ``w'``. Guidance is an affine combination whose
  weights sum to one (``scale * w_c + (1 - scale) * w_oppo``) and truncation is an affine map,
  so truncating ``w_c`` and ``w_oppo`` first and then guiding gives the same ``w''``; doing it
  last costs one op instead of two and matches NVIDIA's mapping (truncate the final ``w``).

The opposite mean is a `jax.vmap` of the mapping over the condition axis (one batched
matmul chain, z shared), averaged on the un-broadcast ``w`` [B, w_dim] when the mapping
callable returns it, and only then broadcast to [B, num_ws, w_dim]. When |C| * B exceeds
``max_pairs`` the condition axis is processed by a `lax.scan` over chunks that accumulates
the sum, so memory stays at ``max_pairs`` rows.

`guided_latents(G, variables, z, labels, mode=..., scale=...)` is the one guided-latents path
of the project for any `networks.base.ConditionalGenerator`: the sampler, the evaluators and
the post-processors all call it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax.networks import base
from gandance_jax.networks.base import w_avg_of

Array = jax.Array
MappingFn = Callable[[Array, Array], Array]
Variables = Mapping[str, Any]

# Guidance modes: plain conditional sampling, Alg. 2, Alg. 3.
MODES = ("none", "training_free", "learned")
# Default bound on (z, c') pairs mapped at once for the opposite mean (activation memory is
# max_pairs * max(z_dim + embed, w_dim) floats: 64k pairs * 1024 * 4 B = 256 MiB).
DEFAULT_MAX_PAIRS = 1 << 16


# --------------------------------------------------------------------------------------
# Validation (host side, before anything is traced or compiled).


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def validate_scale(scale: Any, num_ws: int | None = None, name: str = "scale") -> None:
  """Raises ValueError unless `scale` is a finite scalar or a finite [num_ws] vector."""
  if not _is_concrete(scale):
    return
  try:
    arr = np.asarray(scale, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a number or a [num_ws] vector, got {scale!r}") from e
  if arr.ndim > 1 or (arr.ndim == 1 and num_ws is not None and arr.shape[0] != num_ws):
    want = f"[{num_ws}]" if num_ws is not None else "[num_ws]"
    raise ValueError(f"{name} must be a scalar or a {want} vector (one entry per ws row), "
                     f"got shape {list(arr.shape)}")
  if arr.ndim == 1 and arr.shape[0] == 0:
    raise ValueError(f"{name} must not be an empty vector")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must be finite, got {arr.tolist()}")


def validate_opposite_labels(opposite_labels: Any, num_classes: int | None = None,
                             name: str = "opposite_labels") -> None:
  """Raises ValueError unless the opposite set is a non-empty set of real class ids.

  Accepts a shared set [M] or per-sample sets [B, M]. Ids must lie in [0, num_classes)
  (the empty class is not an opposite condition), without repeats (it is a set), and
  M <= num_classes.
  """
  if not _is_concrete(opposite_labels):
    return
  arr = np.asarray(opposite_labels)
  if arr.ndim not in (1, 2) or arr.shape[-1] == 0 or arr.size == 0:
    raise ValueError(f"{name} must be a non-empty set of class ids [M] (or [B, M]), got "
                     f"shape {list(arr.shape)}")
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
  if num_classes is not None:
    if arr.shape[-1] > num_classes:
      raise ValueError(f"{name} has {arr.shape[-1]} entries but the model has only "
                       f"{num_classes} classes")
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
      raise ValueError(f"{name} ids must be in [0, {num_classes}), got "
                       f"{sorted(set(bad.tolist()))[:8]}")
  rows = arr.reshape(-1, arr.shape[-1])
  if any(len(np.unique(r)) != len(r) for r in rows):
    raise ValueError(f"{name} must not repeat a class id (it is a set), got {arr.tolist()[:16]}")


def validate_psi(truncation_psi: Any, w_avg: Any, name: str = "truncation_psi") -> None:
  if not _is_concrete(truncation_psi):
    return
  psi = np.asarray(truncation_psi, dtype=np.float64)
  if psi.ndim != 0 or not np.isfinite(psi):
    raise ValueError(f"{name} must be a finite scalar, got {truncation_psi!r}")
  if psi != 1 and w_avg is None:
    raise ValueError(f"{name} = {float(psi)} needs w_avg (the truncation centre)")


# --------------------------------------------------------------------------------------
# The maths.


def opposite_mean(mapping: MappingFn, z: Array, opposite_labels: Array, *,
                  max_pairs: int = DEFAULT_MAX_PAIRS) -> Array:
  """Training-free w_oppo: mean over c' in the opposite set of mapping(z, c').

  Args:
    mapping: (z [B, z_dim], labels int [B]) -> w [B, w_dim] or ws [B, num_ws, w_dim].
    z: [B, z_dim].
    opposite_labels: int [M] (one set for the batch, as Alg. 2) or [B, M] (a set per sample).
    max_pairs: above M * B pairs, the M axis is scanned in chunks of max_pairs // B.
  Returns:
    the mean, same shape as mapping(z, labels).
  """
  batch = z.shape[0]
  opposite = jnp.asarray(opposite_labels, jnp.int32)
  if opposite.ndim == 1:
    opposite = jnp.broadcast_to(opposite[None, :], (batch, opposite.shape[0]))
  num_opposite = opposite.shape[1]
  # z is not batched over the conditions: the z-only part of the mapping (normalisation) is
  # computed once, and each MLP layer becomes one [M * B, features] matmul.
  per_condition = jax.vmap(mapping, in_axes=(None, 1))  # -> [M, B, ...]
  chunk = max(1, min(num_opposite, max_pairs // max(batch, 1)))
  if chunk >= num_opposite:
    return jnp.mean(per_condition(z, opposite), axis=0)

  num_chunks = -(-num_opposite // chunk)
  pad = num_chunks * chunk - num_opposite
  # Pad with a valid id (the last one) and give the padding zero weight.
  opposite = jnp.pad(opposite, ((0, 0), (0, pad)), mode="edge")
  opposite = opposite.reshape(batch, num_chunks, chunk).transpose(1, 0, 2)  # [n, B, chunk]
  weights = (jnp.arange(num_chunks * chunk) < num_opposite).astype(jnp.float32)
  weights = weights.reshape(num_chunks, chunk)
  out = jax.eval_shape(mapping, z, opposite[0, :, 0])

  def body(total: Array, xs: tuple[Array, Array]) -> tuple[Array, None]:
    labels_chunk, weights_chunk = xs
    w = per_condition(z, labels_chunk)  # [chunk, B, ...]
    if pad:
      w = w * weights_chunk.reshape((chunk,) + (1,) * (w.ndim - 1)).astype(w.dtype)
    return total + jnp.sum(w, axis=0), None

  total, _ = jax.lax.scan(body, jnp.zeros(out.shape, out.dtype), (opposite, weights))
  return total / num_opposite


def apply_guidance(w_c: Array, w_oppo: Array, scale: float | Array,
                   num_ws: int | None = None) -> Array:
  """w_oppo + scale * (w_c - w_oppo), exact (== w_c bitwise) wherever scale == 1.

  Args:
    w_c, w_oppo: [B, w_dim] or [B, num_ws, w_dim] (same shape).
    scale: scalar or [num_ws] vector.
    num_ws: rows to broadcast [B, w_dim] inputs to when `scale` is a vector (default:
      len(scale)).
  Returns:
    [B, w_dim] for 2-D inputs and a scalar scale, else [B, num_ws, w_dim].
  """
  scale = jnp.asarray(scale, jnp.float32)
  if scale.ndim == 1:
    if w_c.ndim == 2:  # Per-layer scales need the layer axis: broadcast (cheap) now.
      rows = scale.shape[0] if num_ws is None else num_ws
      w_c = jnp.broadcast_to(w_c[:, None, :], (w_c.shape[0], rows, w_c.shape[-1]))
      w_oppo = jnp.broadcast_to(w_oppo[:, None, :], w_c.shape)
    scale = scale[:, None]  # [num_ws, 1] against [B, num_ws, w_dim]
  guided = w_c + (scale - 1).astype(w_c.dtype) * (w_c - w_oppo)
  return jnp.where(scale == 1, w_c, guided)


def truncate(w: Array, w_avg: Array, truncation_psi: float | Array) -> Array:
  """w_avg + psi * (w - w_avg); exactly w where psi == 1 (psi may be traced)."""
  if _is_concrete(truncation_psi) and not isinstance(truncation_psi, jax.Array) and (
      float(truncation_psi) == 1.0):
    return w
  psi = jnp.asarray(truncation_psi, w.dtype)
  return jnp.where(psi == 1, w, w_avg + psi * (w - w_avg))


def is_unguided(mode: str, scale: Any) -> bool:
  """True when (mode, scale) is plain conditional sampling: mode 'none', or a scale known on
  the host to be 1 everywhere. The one place that decides "scale 1 = unguided"; a traced
  scale is never known to be 1 (`apply_guidance` then keeps scale-1 rows exact)."""
  if mode == "none":
    return True
  if not _is_concrete(scale):
    return False
  return bool(np.all(np.asarray(scale, np.float64) == 1.0))


def guided_ws(mapping: MappingFn, z: Array, labels: Array, *, scale: float | Array,
              opposite_labels: Array | None = None, empty_label: int | None = None,
              truncation_psi: float | Array = 1.0, w_avg: Array | None = None,
              num_ws: int | None = None, num_classes: int | None = None,
              max_pairs: int = DEFAULT_MAX_PAIRS) -> Array:
  """GANdance guided latents: Alg. 2 (training-free) or Alg. 3 (learning-based).

  Exactly one of `opposite_labels` (training-free) and `empty_label` (learning-based) is
  given. The mapping may return the broadcast ws [B, num_ws, w_dim] (as `G.mapping`) or the
  un-broadcast w [B, w_dim] (`G.mapping(..., broadcast=False)`): the latter makes the
  opposite mean |num_ws| times cheaper in memory; pass `num_ws` to broadcast the result.

  Args:
    mapping: (z [B, z_dim], labels int [B]) -> [B, num_ws, w_dim] or [B, w_dim]. Use an
      untruncated mapping: truncation is applied here, after guidance.
    z: [B, z_dim] latents.
    labels: int [B] target classes.
    scale: guidance scale lambda, a scalar or a [num_ws] vector (layer-wise; see
      `layerwise_scale`, `low_high`). 1 returns the unguided w_c exactly.
    opposite_labels: int [M] opposite condition set (shared by the batch) or [B, M].
    empty_label: id of the empty class (G.empty_label).
    truncation_psi: psi of the truncation trick (1 = off), applied to the guided w.
    w_avg: [w_dim] truncation centre (needed when psi != 1).
    num_ws: broadcast a [B, w_dim] result to [B, num_ws, w_dim].
    num_classes: if given, opposite ids are range-checked against it.
    max_pairs: chunking threshold of the opposite mean (see `opposite_mean`).
  Returns:
    [B, num_ws, w_dim] (or [B, w_dim] if the mapping returns that, `num_ws` is None and the
    scale is a scalar).
  """
  if (opposite_labels is None) == (empty_label is None):
    raise ValueError("guided_ws needs exactly one of opposite_labels (training-free) or "
                     "empty_label (learning-based)")
  validate_scale(scale, num_ws, "scale")
  if opposite_labels is not None:
    validate_opposite_labels(opposite_labels, num_classes, "opposite_labels")
  validate_psi(truncation_psi, w_avg)

  # Shape checks against the mapping's output by abstract evaluation (nothing is computed).
  out = jax.eval_shape(mapping, z, labels)
  if len(out.shape) not in (2, 3) or out.shape[0] != z.shape[0]:
    raise ValueError(f"mapping must return [B, w_dim] or [B, num_ws, w_dim], got {out.shape}")
  if len(out.shape) == 3 and num_ws is not None and out.shape[1] != num_ws:
    raise ValueError(f"num_ws={num_ws} but the mapping returns {out.shape[1]} ws rows")
  scale_ndim = np.ndim(scale) if _is_concrete(scale) else scale.ndim
  if len(out.shape) == 3 and scale_ndim == 1 and np.shape(scale)[0] != out.shape[1]:
    raise ValueError(f"scale has {np.shape(scale)[0]} entries but the mapping returns "
                     f"{out.shape[1]} ws rows")

  w_c = mapping(z, labels)
  mode = "training_free" if opposite_labels is not None else "learned"
  if is_unguided(mode, scale):
    w = w_c  # Skip the opposite mapping altogether: scale 1 is unguided sampling.
  else:
    if opposite_labels is not None:
      w_oppo = opposite_mean(mapping, z, opposite_labels, max_pairs=max_pairs)
    else:
      w_oppo = mapping(z, jnp.full(labels.shape, empty_label, jnp.int32))
    w = apply_guidance(w_c, w_oppo, scale, num_ws=num_ws)
  if w_avg is not None:
    w = truncate(w, jnp.asarray(w_avg, w.dtype), truncation_psi)
  if w.ndim == 2 and num_ws is not None:
    w = jnp.broadcast_to(w[:, None, :], (w.shape[0], num_ws, w.shape[-1]))
  return w


# --------------------------------------------------------------------------------------
# Layer-wise schedules (paper Sec. 3.4, Fig. 4: layers <= 16x16 take stronger guidance).


def _ws_resolutions(G_or_resolutions: base.ConditionalGenerator | Sequence[int]) -> list[int]:
  if hasattr(G_or_resolutions, "ws_resolutions"):
    return list(G_or_resolutions.ws_resolutions())
  return [int(r) for r in G_or_resolutions]


def layerwise_scale(G_or_resolutions: base.ConditionalGenerator | Sequence[int],
                    table: Mapping[int, float], default: float | None = None) -> np.ndarray:
  """A [num_ws] scale vector from a per-resolution table.

  Example: ``layerwise_scale(G, {4: 1.5, 8: 1.5, 16: 1.5, 32: 1.1, 64: 1.0})``. Each ws row
  takes the scale of the resolution it drives (`G.ws_resolutions()`); resolutions missing
  from the table take `default` (an error if None). With ``default=1.0`` a table of a few
  resolutions guides only those layers (Fig. 4a).
  """
  resolutions = _ws_resolutions(G_or_resolutions)
  table = {int(k): float(v) for k, v in dict(table).items()}
  unknown = sorted(set(table) - set(resolutions))
  if unknown:
    raise ValueError(f"layer scale table has resolutions {unknown} that drive no ws row; "
                     f"the generator's are {sorted(set(resolutions))}")
  missing = sorted(set(resolutions) - set(table))
  if missing and default is None:
    raise ValueError(f"layer scale table misses resolutions {missing} (or pass default=)")
  out = np.asarray([table.get(r, default) for r in resolutions], np.float32)
  validate_scale(out, len(resolutions), "layer scale table")
  return out


def low_high(G_or_resolutions: base.ConditionalGenerator | Sequence[int], low: float, high: float,
             split: int = 16) -> np.ndarray:
  """[num_ws] scales: `low` for ws rows driving resolutions <= split, `high` above."""
  resolutions = _ws_resolutions(G_or_resolutions)
  out = np.asarray([low if r <= split else high for r in resolutions], np.float32)
  validate_scale(out, len(resolutions), "low_high scales")
  return out


def parse_layer_scales(spec: str) -> dict[int, float]:
  """'4:1.5,8:1.5,16:1.5,32:1.1,64:1' -> {4: 1.5, ...} (the config's string form)."""
  table = {}
  for item in spec.replace(" ", "").split(","):
    if not item:
      continue
    try:
      res, value = item.split(":")
      table[int(res)] = float(value)
    except ValueError as e:
      raise ValueError(f"layer scales must look like '4:1.5,8:1.5,32:1.1', got {spec!r}") from e
  if not table:
    raise ValueError(f"layer scales spec {spec!r} is empty")
  return table


# --------------------------------------------------------------------------------------
# The guided latents of a generator (one path for the sampler, evaluators, post-processors).


def check_request(G: base.ConditionalGenerator, mode: str, scale: Any) -> None:
  """Raises ValueError naming the option unless `mode` / `scale` fit the generator."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
  if G.num_classes == 0:
    raise ValueError("guided sampling needs a class-conditional generator (num_classes > 0)")
  validate_scale(scale, G.num_ws, "scale")
  if mode == "none" and np.any(np.asarray(scale) != 1):
    raise ValueError(f"scale must be 1 in mode 'none' (no guidance), got "
                     f"{np.asarray(scale).tolist()}")
  if mode == "learned" and G.empty_label is None:
    raise ValueError("mode 'learned' needs a generator with the empty class (empty_class=True)")


def guided_latents(G: base.ConditionalGenerator, variables: Variables, z: Array, labels: Array,
                   *, mode: str, scale: float | Array = 1.0,
                   opposite_labels: Array | None = None, truncation_psi: float | Array = 1.0,
                   max_pairs: int = DEFAULT_MAX_PAIRS) -> Array:
  """Guided, truncated ws [B, num_ws, w_dim] of a conditional generator (pure, traceable).

  Args:
    G: any `networks.base.ConditionalGenerator` (its variables are `variables`).
    z: [B, z_dim]; labels: int [B].
    mode: 'none' (w = mapping(z, c)), 'training_free' (Alg. 2 with `opposite_labels`, int
      [M] or [B, M]) or 'learned' (Alg. 3 with G's empty class).
    scale: scalar or [num_ws] vector; unguided when `is_unguided(mode, scale)`.
    truncation_psi: applied after guidance, around the w_avg of `variables`.
  """
  mapping = lambda z_, c_: G.apply(variables, z_, c_, broadcast=False, method=G.mapping)
  w_avg = w_avg_of(variables)
  if is_unguided(mode, scale):
    w = mapping(z, labels)
    if w_avg is not None:
      w = truncate(w, w_avg, truncation_psi)
    if w.ndim == 3:  # per-layer rows already (BigGAN: one conditioning vector per block)
      return w
    return jnp.broadcast_to(w[:, None, :], (w.shape[0], G.num_ws, w.shape[-1]))
  kwargs = (dict(opposite_labels=opposite_labels) if mode == "training_free" else
            dict(empty_label=G.empty_label))
  return guided_ws(mapping, z, labels, scale=scale, truncation_psi=truncation_psi,
                   w_avg=w_avg, num_ws=G.num_ws, max_pairs=max_pairs, **kwargs)
