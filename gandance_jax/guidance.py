"""GANdance guided sampling (ECCV 2024): the maths and the jit-compiled, sharded sampler.

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
  are untouched. A scale known to be 1 on the host (a Python / numpy / concrete value) skips
  the opposite mapping altogether, and `make_sampler` then compiles the unguided program:
  only that makes scale 1 bitwise equal to a *separately compiled* unguided run, because XLA
  on CPU may fuse the mapping's last layer differently in two programs and LLVM may then
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

The sampler (`make_sampler`) derives all randomness of sample ``i`` (its z, its random
opposite set, its synthesis noise) from ``fold_in(key, i)`` with ``i`` the global sample
index, so a request of N images gives the same images however it is chunked or sharded.
A random opposite set is therefore drawn per sample, where Alg. 2 draws one set for a whole
batch: both average to the all-class mean in expectation (the paper's argument for subsets),
per sample keeps a sample independent of its batch-mates and keeps one unlucky draw from
biasing a whole batch. A fixed set (``opposite_labels=``) is Alg. 2's shared set exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gandance_jax import multihost
from gandance_jax.networks import stylegan2

Array = jax.Array
MappingFn = Callable[[Array, Array], Array]
Variables = Mapping[str, Any]

MODES = ("none", "training_free", "learned")
NOISE_MODES = ("const", "random", "none")
# Default bound on (z, c') pairs mapped at once for the opposite mean (activation memory is
# max_pairs * max(z_dim + embed, w_dim) floats: 64k pairs * 1024 * 4 B = 256 MiB).
DEFAULT_MAX_PAIRS = 1 << 16

# fold_in tags of the per-sample key (sample i uses fold_in(key, i), then one of these).
_Z_TAG, _OPPOSITE_TAG, _NOISE_TAG = 0, 1, 2


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


def _validate_psi(truncation_psi: Any, w_avg: Any, name: str = "truncation_psi") -> None:
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


def _is_static_one(scale: Any) -> bool:
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
  _validate_psi(truncation_psi, w_avg)

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
  if _is_static_one(scale):
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


def _ws_resolutions(G_or_resolutions: stylegan2.Generator | Sequence[int]) -> list[int]:
  if isinstance(G_or_resolutions, stylegan2.Generator):
    return list(G_or_resolutions.ws_resolutions())
  return [int(r) for r in G_or_resolutions]


def layerwise_scale(G_or_resolutions: stylegan2.Generator | Sequence[int],
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


def low_high(G_or_resolutions: stylegan2.Generator | Sequence[int], low: float, high: float,
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
# The sampler.


def w_avg_of(variables: Variables) -> Array | None:
  """The truncation centre of a Generator's variables, or None if it has none."""
  return variables.get("buffers", {}).get("mapping_network", {}).get("w_avg")


def _per_sample_keys(key: Array, indices: Array, tag: int) -> Array:
  # Key of sample i for one purpose: fold_in(fold_in(key, i), tag); index-derived so
  # chunking and sharding never change which randomness a sample sees.
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), tag))(indices)


def sample_z(key: Array, indices: Array, z_dim: int) -> Array:
  """[B] global sample indices -> z [B, z_dim], sample i a function of (key, i) only."""
  keys = _per_sample_keys(key, indices, _Z_TAG)
  return jax.vmap(lambda k: jax.random.normal(k, (z_dim,), jnp.float32))(keys)


def sample_opposite_sets(key: Array, indices: Array, num_classes: int,
                         num_opposite: int) -> Array:
  """[B] indices -> int [B, num_opposite]: per sample a uniform subset without replacement."""
  keys = _per_sample_keys(key, indices, _OPPOSITE_TAG)
  return jax.vmap(lambda k: jax.random.choice(k, num_classes, (num_opposite,),
                                              replace=False))(keys).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Spec:
  """The static part of a sampler (one compiled program per spec and batch shape)."""
  G: stylegan2.Generator
  mode: str
  noise_mode: str
  num_opposite: int          # |C| of a random opposite set per sample; 0 = fixed set given.
  max_pairs: int
  devices: tuple[Any, ...]


def _latents(spec: _Spec, variables: Variables, key: Array, labels: Array, indices: Array,
             scale: Array, truncation_psi: Array, opposite_labels: Array | None) -> Array:
  """Guided, truncated ws [B, num_ws, w_dim] for samples `indices`."""
  G = spec.G
  z = sample_z(key, indices, G.z_dim)
  mapping = lambda z_, c_: G.apply(variables, z_, c_, broadcast=False, method=G.mapping)
  w_avg = w_avg_of(variables)
  if spec.mode == "none":
    w = mapping(z, labels)
    if w_avg is not None:
      w = truncate(w, w_avg, truncation_psi)
    return jnp.broadcast_to(w[:, None, :], (w.shape[0], G.num_ws, G.w_dim))
  if spec.mode == "training_free" and opposite_labels is None:
    opposite_labels = sample_opposite_sets(key, indices, G.num_classes, spec.num_opposite)
  kwargs = (dict(opposite_labels=opposite_labels) if spec.mode == "training_free" else
            dict(empty_label=G.empty_label))
  return guided_ws(mapping, z, labels, scale=scale, truncation_psi=truncation_psi,
                   w_avg=w_avg, num_ws=G.num_ws, max_pairs=spec.max_pairs, **kwargs)


def _synthesize(spec: _Spec, variables: Variables, key: Array, ws: Array,
                indices: Array) -> Array:
  """ws [B, num_ws, w_dim] -> images [B, H, W, C] float in about [-1, 1]."""
  G = spec.G
  if spec.noise_mode != "random":
    return G.apply(variables, ws, noise_mode=spec.noise_mode, method=G.synthesis)
  # Random noise is drawn per sample from its own key: vmap the synthesis over samples (the
  # weights are shared, so the convolutions still run as one batched convolution).
  keys = _per_sample_keys(key, indices, _NOISE_TAG)
  one = lambda w, k: G.apply(variables, w[None], noise_mode="random", rngs={"noise": k},
                             method=G.synthesis)[0]
  return jax.vmap(one)(ws, keys)


def _sample(spec: _Spec, variables: Variables, key: Array, labels: Array, indices: Array,
            scale: Array, truncation_psi: Array, opposite_labels: Array | None) -> Array:
  ws = _latents(spec, variables, key, labels, indices, scale, truncation_psi, opposite_labels)
  return _synthesize(spec, variables, key, ws, indices)


@functools.lru_cache(maxsize=64)
def _mesh(devices: tuple[Any, ...]) -> Mesh:
  return Mesh(np.asarray(devices, dtype=object), ("data",))


@functools.lru_cache(maxsize=64)
def _compiled(spec: _Spec, what: str) -> Callable[..., Any]:
  """The jitted program of a spec; shared by samplers that differ only in scale / psi."""
  mesh = _mesh(spec.devices)
  rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  if what == "sample":
    fn = functools.partial(_sample, spec)
    # variables, key, labels, indices, scale, psi, opposite_labels
    in_shardings = (rep, rep, data, data, rep, rep, rep)
  elif what == "latents":
    fn = functools.partial(_latents, spec)
    in_shardings = (rep, rep, data, data, rep, rep, rep)
  elif what == "synthesize":
    fn = functools.partial(_synthesize, spec)
    in_shardings = (rep, rep, data, data)  # variables, key, ws, indices
  else:
    raise ValueError(what)
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=data)


class Sampler:
  """A guided sampler: ``sampler(variables, key, labels) -> images`` (see `make_sampler`)."""

  def __init__(self, spec: _Spec, scale: np.ndarray, truncation_psi: float,
               opposite_labels: np.ndarray | None):
    self.spec = spec
    self.scale = scale
    self.truncation_psi = truncation_psi
    self.opposite_labels = opposite_labels
    self.num_devices = len(spec.devices)

  @property
  def mesh(self) -> Mesh:
    return _mesh(self.spec.devices)

  def place(self, variables: Variables) -> Variables:
    """The variables replicated over this sampler's devices (a no-op if they already are;
    e.g. checkpoint.load_generator replicates over all devices, a sampler may use fewer)."""
    target = NamedSharding(self.mesh, P())
    if all(d.process_index == jax.process_index() for d in self.spec.devices):
      # A sampler on this process's devices given (multi-process) global variables:
      # start from this process's copy (a global array cannot move to local devices).
      variables = multihost.local_copy(variables)
    return jax.device_put(variables, target)

  @property
  def spans_processes(self) -> bool:
    """True when the devices belong to several processes (one global program)."""
    return len({d.process_index for d in self.spec.devices}) > 1

  def _batch(self, x: np.ndarray) -> Any:
    """A host batch [B, ...] (the same on every process) as the program's input.

    Numpy is fine for local devices; a mesh over several processes needs a global array,
    of which each process supplies its devices' rows.
    """
    if not self.spans_processes:
      return x
    return multihost.to_global(x, NamedSharding(self.mesh, P("data")))

  def _check_labels(self, labels: Any) -> np.ndarray:
    G = self.spec.G
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] == 0:
      raise ValueError(f"labels must be a non-empty int vector [B], got shape {list(arr.shape)}")
    try:
      stylegan2.validate_labels(arr, G.num_classes, G.empty_class)
    except ValueError as e:
      raise ValueError(f"labels: {e}") from None
    return arr.astype(np.int32)

  def _pad(self, labels: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The batch must split evenly over the devices: pad with copies of sample 0.
    pad = -len(labels) % self.num_devices
    if pad:
      labels = np.concatenate([labels, np.repeat(labels[:1], pad)])
      indices = np.concatenate([indices, np.repeat(indices[:1], pad)])
    return labels, indices

  def _args(self) -> tuple[Any, Any, Any]:
    return (jnp.asarray(self.scale, jnp.float32), jnp.asarray(self.truncation_psi, jnp.float32),
            None if self.opposite_labels is None else jnp.asarray(self.opposite_labels))

  def _indices(self, n: int, start_index: int, indices: Any | None) -> np.ndarray:
    if indices is None:
      return np.arange(start_index, start_index + n, dtype=np.int32)
    indices = np.asarray(indices, np.int32)
    if indices.shape != (n,):
      raise ValueError(f"indices must have shape [{n}], got {list(indices.shape)}")
    return indices

  def __call__(self, variables: Variables, key: Array, labels: Any, *, start_index: int = 0,
               indices: Any | None = None) -> Array:
    """labels int [B] -> images [B, H, W, C] float (device array, batch-sharded).

    Sample b uses global index ``start_index + b`` (or ``indices[b]``) for its randomness.
    With devices of several processes the result is a global array: every process must
    call with the same labels, and `multihost.to_host` gathers it.
    """
    return self._run("sample", variables, key, labels, start_index, indices)

  def latents(self, variables: Variables, key: Array, labels: Any, *, start_index: int = 0,
              indices: Any | None = None) -> Array:
    """labels int [B] -> the guided, truncated ws [B, num_ws, w_dim] the sampler would use."""
    return self._run("latents", variables, key, labels, start_index, indices)

  def _run(self, what: str, variables: Variables, key: Array, labels: Any, start_index: int,
           indices: Any | None) -> Array:
    """The compiled program `what` ('sample' or 'latents') on labels [B], padded to the
    device count and trimmed back."""
    labels = self._check_labels(labels)
    n = len(labels)
    labels, idx = self._pad(labels, self._indices(n, start_index, indices))
    out = _compiled(self.spec, what)(self.place(variables), key, self._batch(labels),
                                     self._batch(idx), *self._args())
    return out[:n] if len(labels) != n else out

  def synthesize(self, variables: Variables, key: Array, ws: Array, *, start_index: int = 0,
                 indices: Any | None = None) -> Array:
    """ws [B, num_ws, w_dim] -> images [B, H, W, C], with the noise of samples `indices`."""
    n = ws.shape[0]
    idx = self._indices(n, start_index, indices)
    if self.spans_processes:
      ws = multihost.to_host(ws)
    pad = -n % self.num_devices
    if pad:
      ws = (np.concatenate if isinstance(ws, np.ndarray) else jnp.concatenate)(
          [ws, ws[:1].repeat(pad, axis=0)])
      idx = np.concatenate([idx, np.repeat(idx[:1], pad)])
    out = _compiled(self.spec, "synthesize")(self.place(variables), key,
                                             self._batch(ws) if self.spans_processes else ws,
                                             self._batch(idx))
    return out[:n] if pad else out

  def stream(self, variables: Variables, key: Array, labels: Any, *, chunk_size: int,
             start_index: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (offset, images float32 numpy [n, H, W, C]) for labels [N] in chunks.

    A sampler whose devices span several processes is one global program: every process
    must call this with the same arguments, each computes its devices' rows of a chunk, and
    every process receives the whole chunk. (Evaluation instead gives each process its own
    share and local devices, see evaluation/evaluator.py.)

    Every chunk has the same compiled shape (`chunk_size` rounded up to a multiple of the
    device count; the last one is padded and trimmed), sample i uses global index
    ``start_index + i``, and one chunk is computed while the previous one is handed to the
    caller, so host memory holds at most two chunks whatever N is.
    """
    labels = self._check_labels(labels)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
      raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk = -(-int(chunk_size) // self.num_devices) * self.num_devices
    fn = _compiled(self.spec, "sample")
    variables = self.place(variables)  # Once, not per chunk.
    args = self._args()
    pending = None
    for offset in range(0, len(labels), chunk):
      n = min(chunk, len(labels) - offset)
      chunk_labels = np.zeros((chunk,), np.int32)
      chunk_labels[:n] = labels[offset:offset + n]
      if n < chunk:
        chunk_labels[n:] = labels[offset]
      idx = np.arange(start_index + offset, start_index + offset + chunk, dtype=np.int32)
      # Dispatched asynchronously.
      out = fn(variables, key, self._batch(chunk_labels), self._batch(idx), *args)
      if pending is not None:
        yield pending[0], multihost.to_host(pending[2])[:pending[1]]
      pending = (offset, n, out)
    if pending is not None:
      yield pending[0], multihost.to_host(pending[2])[:pending[1]]


def make_sampler(G: stylegan2.Generator, *, mode: str = "training_free",
                 scale: float | Sequence[float] | np.ndarray = 1.0,
                 opposite_labels: Sequence[int] | np.ndarray | None = None,
                 num_opposite: int = 0, truncation_psi: float = 1.0,
                 noise_mode: str = "const", devices: Sequence[Any] | None = None,
                 max_pairs: int = DEFAULT_MAX_PAIRS) -> Sampler:
  """Builds a jit-compiled, data-sharded GANdance sampler for one setting.

  Args:
    G: the Generator module (its variables are passed at call time).
    mode: 'none' (plain conditional sampling), 'training_free' (Alg. 2) or 'learned'
      (Alg. 3, needs G.empty_class).
    scale: guidance scale, scalar or [num_ws] vector (`layerwise_scale`, `low_high`).
      Must be 1 in mode 'none'.
    opposite_labels: a fixed opposite set [M] for 'training_free'; if None, each sample
      draws its own uniform subset of `num_opposite` classes without replacement (from its
      own key), and num_opposite = 0 (or = num_classes) means all classes (no randomness).
    num_opposite: |C| when the set is drawn.
    truncation_psi: truncation psi (1 = off), applied to the guided w.
    noise_mode: 'const', 'random' (per-sample noise from each sample's key) or 'none'.
    devices: devices of the 1-D `data` mesh (default: all). Batches are sharded over them.
    max_pairs: chunking threshold of the opposite mean (see `opposite_mean`).
  Returns:
    a `Sampler`: ``sampler(variables, key, labels) -> images`` [B, H, W, C] float, plus
    ``.latents``, ``.synthesize`` and ``.stream``. Samplers that differ only in scale (same
    shape), psi or fixed opposite set share one compiled program per batch shape.
  Raises:
    ValueError naming the option, before anything is compiled.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {list(NOISE_MODES)}, got {noise_mode!r}")
  if G.num_classes == 0:
    raise ValueError("guided sampling needs a class-conditional generator (num_classes > 0)")
  validate_scale(scale, G.num_ws, "scale")
  scale = np.asarray(scale, np.float32)
  if mode == "none" and np.any(scale != 1):
    raise ValueError(f"scale must be 1 in mode 'none' (no guidance), got {scale.tolist()}")
  if mode == "learned" and not G.empty_class:
    raise ValueError("mode 'learned' needs a generator with the empty class (empty_class=True)")
  if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, (int, float, np.floating)):
    raise ValueError(f"truncation_psi must be a finite number, got {truncation_psi!r}")
  _validate_psi(truncation_psi, None if G.w_avg_beta is None else True)
  if not isinstance(max_pairs, (int, np.integer)) or max_pairs <= 0:
    raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")

  if mode == "training_free":
    if opposite_labels is not None:
      validate_opposite_labels(opposite_labels, G.num_classes, "opposite_labels")
      opposite_labels = np.asarray(opposite_labels, np.int32)
      if opposite_labels.ndim != 1:
        raise ValueError("opposite_labels must be one set [M] for the sampler")
      num_opposite = 0
    else:
      if isinstance(num_opposite, bool) or not isinstance(num_opposite, (int, np.integer)) or (
          not 0 <= num_opposite <= G.num_classes):
        raise ValueError(f"num_opposite must be an integer in [0, {G.num_classes}] "
                         f"(0 = all classes), got {num_opposite!r}")
      if num_opposite in (0, G.num_classes):
        # All classes: the mean does not depend on any draw (Alg. 2 with C = all classes).
        opposite_labels, num_opposite = np.arange(G.num_classes, dtype=np.int32), 0
  else:
    if opposite_labels is not None:
      raise ValueError(f"opposite_labels is only used in mode 'training_free', not {mode!r}")
    num_opposite = 0

  if mode != "none" and np.all(scale == 1):
    # Scale 1 is unguided sampling: run the unguided program (bitwise equal to mode 'none',
    # and without the cost of the opposite mapping).
    mode, opposite_labels, num_opposite = "none", None, 0
  devices = tuple(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices must not be empty")
  spec = _Spec(G=G, mode=mode, noise_mode=noise_mode, num_opposite=int(num_opposite),
               max_pairs=int(max_pairs), devices=devices)
  return Sampler(spec, scale, float(truncation_psi), opposite_labels)
