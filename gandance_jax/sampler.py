"""The GANdance sampler runtime: jit-compiled, sharded, streamed (the maths is guidance.py).

`make_sampler(G, mode=..., scale=...)` builds a `Sampler` for any
`networks.base.ConditionalGenerator`: ``sampler(variables, key, labels) -> images``, plus
``.latents``, ``.synthesize`` and ``.stream`` (chunked, one chunk computed while the previous
one is handed over). Samplers that differ only in scale, psi or fixed opposite set share one
compiled program per batch shape (the compilation cache below).

All randomness of sample ``i`` (its z, its random opposite set, its synthesis noise) comes
from ``fold_in(key, i)`` with ``i`` the global sample index, so a request of N images gives
the same images however it is chunked or sharded. A random opposite set is therefore drawn
per sample, where Alg. 2 draws one set for a whole batch: both average to the all-class mean
in expectation (the paper's argument for subsets), per sample keeps a sample independent of
its batch-mates and keeps one unlucky draw from biasing a whole batch. A fixed set
(``opposite_labels=``) is Alg. 2's shared set exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gandance_jax import guidance, multihost
from gandance_jax.networks import base

Array = jax.Array
Variables = Mapping[str, Any]

# fold_in tags of the per-sample key (sample i uses fold_in(key, i), then one of these).
_Z_TAG, _OPPOSITE_TAG, _NOISE_TAG = 0, 1, 2


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
  G: base.ConditionalGenerator
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
  if spec.mode == "training_free" and opposite_labels is None:
    opposite_labels = sample_opposite_sets(key, indices, G.num_classes, spec.num_opposite)
  return guidance.guided_latents(G, variables, z, labels, mode=spec.mode, scale=scale,
                                 opposite_labels=opposite_labels,
                                 truncation_psi=truncation_psi, max_pairs=spec.max_pairs)


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

  def program(self, what: str = "sample") -> Callable[..., Any]:
    """The jitted program behind `__call__` ('sample'), `latents` or `synthesize`, shared
    by every sampler of the same spec (for inspection: cache size, lowering)."""
    return _compiled(self.spec, what)

  def lower(self, variables: Variables, key: Array, labels: Any) -> Any:
    """The lowered 'sample' program for labels [B] (B a multiple of the device count), e.g.
    ``sampler.lower(v, key, labels).compile().cost_analysis()`` in benchmarks."""
    labels = self._check_labels(labels)
    indices = np.arange(len(labels), dtype=np.int32)
    return self.program("sample").lower(self.place(variables), key, self._batch(labels),
                                        self._batch(indices), *self._args())

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
      base.validate_labels(arr, G.num_classes, G.empty_class)
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
    share and local devices, see evaluation/evaluators/common.py.)

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


def make_sampler(G: base.ConditionalGenerator, *, mode: str = "training_free",
                 scale: float | Sequence[float] | np.ndarray = 1.0,
                 opposite_labels: Sequence[int] | np.ndarray | None = None,
                 num_opposite: int = 0, truncation_psi: float = 1.0,
                 noise_mode: str = "const", devices: Sequence[Any] | None = None,
                 max_pairs: int = guidance.DEFAULT_MAX_PAIRS) -> Sampler:
  """Builds a jit-compiled, data-sharded GANdance sampler for one setting.

  Args:
    G: the Generator module (its variables are passed at call time).
    mode: 'none' (plain conditional sampling), 'training_free' (Alg. 2) or 'learned'
      (Alg. 3, needs G.empty_class).
    scale: guidance scale, scalar or [num_ws] vector (`guidance.layerwise_scale`,
      `guidance.low_high`).
      Must be 1 in mode 'none'.
    opposite_labels: a fixed opposite set [M] for 'training_free'; if None, each sample
      draws its own uniform subset of `num_opposite` classes without replacement (from its
      own key), and num_opposite = 0 (or = num_classes) means all classes (no randomness).
    num_opposite: |C| when the set is drawn.
    truncation_psi: truncation psi (1 = off), applied to the guided w.
    noise_mode: 'const', 'random' (per-sample noise from each sample's key) or 'none'.
    devices: devices of the 1-D `data` mesh (default: all). Batches are sharded over them.
    max_pairs: chunking threshold of the opposite mean (see `guidance.opposite_mean`).
  Returns:
    a `Sampler`: ``sampler(variables, key, labels) -> images`` [B, H, W, C] float, plus
    ``.latents``, ``.synthesize`` and ``.stream``. Samplers that differ only in scale (same
    shape), psi or fixed opposite set share one compiled program per batch shape.
  Raises:
    ValueError naming the option, before anything is compiled.
  """
  guidance.check_request(G, mode, scale)
  if noise_mode not in base.NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {list(base.NOISE_MODES)}, got {noise_mode!r}")
  scale = np.asarray(scale, np.float32)
  if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, (int, float, np.floating)):
    raise ValueError(f"truncation_psi must be a finite number, got {truncation_psi!r}")
  # A family without `w_avg_beta` keeps w_avg in its variables (networks/base.py).
  has_w_avg = getattr(G, "w_avg_beta", True) is not None
  guidance.validate_psi(truncation_psi, True if has_w_avg else None)
  if not isinstance(max_pairs, (int, np.integer)) or max_pairs <= 0:
    raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")

  if mode == "training_free":
    if opposite_labels is not None:
      guidance.validate_opposite_labels(opposite_labels, G.num_classes, "opposite_labels")
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

  if guidance.is_unguided(mode, scale):
    # Scale 1 is unguided sampling: run the unguided program (bitwise equal to mode 'none',
    # and without the cost of the opposite mapping).
    mode, opposite_labels, num_opposite = "none", None, 0
  devices = tuple(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices must not be empty")
  spec = _Spec(G=G, mode=mode, noise_mode=noise_mode, num_opposite=int(num_opposite),
               max_pairs=int(max_pairs), devices=devices)
  return Sampler(spec, scale, float(truncation_psi), opposite_labels)
