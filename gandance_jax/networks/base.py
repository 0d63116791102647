"""The conditional-generator interface every network family implements (StyleGAN2, the 2D
toy, BigGAN), and the label arithmetic they share.

Everything downstream (guidance, the sampler, evaluators, post-processors, sweeps, CLIs) is
written against `ConditionalGenerator` and never asks which family it drives. A family
implements, as a Flax module used functionally::

  ws  = G.apply(variables, z, labels, truncation_psi=1.0, broadcast=True, method=G.mapping)
        # z [B, z_dim], labels int [B] -> ws [B, num_ws, w_dim] (broadcast=False: w [B, w_dim])
  img = G.apply(variables, ws, noise_mode='const', method=G.synthesis)
        # ws [B, num_ws, w_dim] -> NHWC images in [-1, 1] (or [B, 2] points for the toy)
  G.num_ws, G.ws_resolutions(), G.z_dim, G.w_dim, G.num_classes, G.empty_class,
  G.empty_label

and keeps its truncation centre `w_avg` [w_dim] in the variables at
``buffers/mapping_network/w_avg`` (`w_avg_of`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Variables = Mapping[str, Any]

# Synthesis noise: per-call random, the stored constant, or none.
NOISE_MODES = ("random", "const", "none")


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


@runtime_checkable
class ConditionalGenerator(Protocol):
  """What guidance, the sampler and the evaluators use of a generator (see the module
  docstring). `mapping` and `synthesis` are Flax methods, called through `G.apply`."""
  z_dim: int
  w_dim: int
  num_classes: int
  empty_class: bool

  @property
  def num_ws(self) -> int: ...

  @property
  def empty_label(self) -> int | None: ...

  def ws_resolutions(self) -> list[int]: ...

  def mapping(self, z: Array, labels: Array, truncation_psi: Any = 1.0, *args: Any,
              **kwargs: Any) -> Array: ...

  def synthesis(self, ws: Array, noise_mode: str = "const") -> Array: ...


def w_avg_of(variables: Variables) -> Array | None:
  """The truncation centre [w_dim] of a generator's variables, or None if it has none."""
  return variables.get("buffers", {}).get("mapping_network", {}).get("w_avg")


def validate_labels(labels: Any, num_classes: int, empty_class: bool) -> None:
  """Raises ValueError if integer ``labels`` hold ids the network has no embedding row for.

  Valid ids are [0, num_classes), plus ``num_classes`` (the empty condition) when
  ``empty_class``. Traced labels (inside jit) cannot be checked here; callers such as the
  sampler check them on the host before compiling.
  """
  if not _is_concrete(labels):
    return
  arr = np.asarray(labels)
  if arr.size == 0:
    return
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"integer labels expected, got dtype {arr.dtype}")
  hi = num_classes + (1 if empty_class else 0)
  bad = arr[(arr < 0) | (arr >= hi)]
  if bad.size:
    allowed = f"[0, {num_classes})" + (f" or {num_classes} (empty class)" if empty_class else "")
    hint = ("" if empty_class or not np.any(bad == num_classes) else
            f"; id {num_classes} is the empty class, which needs empty_class=True")
    raise ValueError(f"label ids must be in {allowed}, got {sorted(set(bad.tolist()))[:8]}{hint}")




def check_classes(num_classes: int, empty_class: bool) -> None:
  """Raises ValueError for a negative class count or an empty class without classes."""
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0, got {num_classes}")
  if empty_class and num_classes == 0:
    raise ValueError("empty_class=True needs num_classes > 0")




class ConditionalLabels:
  """Label arithmetic of a class-conditional module with `num_classes` and `empty_class`
  fields (G and D here and in networks/toy2d.py)."""
  num_classes: int
  empty_class: bool

  @property
  def c_dim(self) -> int:
    """Label embedding inputs: the classes plus, with `empty_class`, the empty one."""
    return self.num_classes + (1 if self.empty_class else 0)

  @property
  def empty_label(self) -> int | None:
    """The id of the empty condition, or None without `empty_class`."""
    return self.num_classes if self.empty_class else None


# ----------------------------------------------------------------------------------------
# Importing reference (torch) state dicts: the key bookkeeping every family shares.


def flatten_tree(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
                 ) -> dict[tuple[str, ...], Any]:
  """Nested mappings -> {path tuple: leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten_tree(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten_tree(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  """The inverse of `flatten_tree`: {path tuple: leaf} -> nested dicts."""
  out: dict[str, Any] = {}
  for path, v in flat.items():
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return out


def import_state_dict(state: Mapping[str, Any], template: Mapping[str, Any],
                      torch_key: Callable[[tuple[str, ...]], str],
                      convert: Callable[[str, tuple[str, ...], Any, np.ndarray], np.ndarray],
                      mismatch: str) -> dict[str, Any]:
  """Fills `template` ({collection: tree of abstract arrays}) from a torch-keyed `state`.

  `torch_key(path)` names the state key of the leaf at `path` in a collection;
  `convert(key, path, leaf, value)` returns the value in this project's layout (and raises on a
  shape that does not fit `leaf`). Missing and unexpected keys (the first ten of each) raise
  ValueError(f"{mismatch}: missing keys [...]; unexpected keys [...]").
  """
  flat_t = {}
  for col, tree in template.items():
    for path, leaf in flatten_tree(tree).items():
      flat_t[torch_key(path)] = (col, path, leaf)
  missing = sorted(set(flat_t) - set(state))
  unexpected = sorted(set(state) - set(flat_t))
  if missing or unexpected:
    more = lambda keys: f"{keys[:10]}{' ...' if len(keys) > 10 else ''}"
    raise ValueError(f"{mismatch}: missing keys {more(missing)}; unexpected keys "
                     f"{more(unexpected)}")
  out: dict[str, dict[tuple[str, ...], Any]] = {}
  for key, (col, path, leaf) in flat_t.items():
    out.setdefault(col, {})[path] = jnp.asarray(convert(key, path, leaf, np.asarray(state[key])))
  return {col: unflatten_tree(flat) for col, flat in out.items()}
