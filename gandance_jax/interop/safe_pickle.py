"""A pickle reader that rebuilds data only, for files written by other people.

Python's pickle calls whatever callable a file names (`posix.system`, `builtins.eval`, ...),
so loading a downloaded `.pth` or network pickle with `pickle.load` / `torch.load(...,
weights_only=False)` runs its author's code. `RestrictedUnpickler` resolves every global
through an explicit allow-list of *replacements* written here (plain data constructors that
check their arguments); anything else is refused before it is looked up, so nothing named
by the file is ever imported or called. The allow-lists themselves live with the formats
(`torch_files.TORCH_GLOBALS`, `nvidia.NVIDIA_GLOBALS`).

Errors: `UnsafePickleError` for a refused global or persistent id, `FormatError` for a file
that is not what the caller expected; both are `InteropError` (a ValueError) and name the file.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from gandance_jax import errors


class InteropError(errors.BadInputError):
  """A weight file could not be read; the message names the file and what was expected."""


class FormatError(InteropError):
  """The file is empty, truncated, corrupt, or not of the kind the reader expects."""


class UnsafePickleError(InteropError):
  """The pickle names a global or persistent id outside the allow-list (nothing was run)."""


class RestrictedUnpickler(pickle.Unpickler):
  """`pickle.Unpickler` whose globals come only from `allowed` (module, name) -> object.

  Args:
    file: a binary file object positioned at the pickle.
    source: the file's name, for error messages.
    allowed: the allow-list; its values are this package's replacements, never the objects
      the names refer to in the writer's environment.
    persistent_load: handler of persistent ids (torch's storages); None refuses them all.
  """

  def __init__(self, file: BinaryIO, *, source: str,
               allowed: Mapping[tuple[str, str], Any],
               persistent_load: Callable[[Any], Any] | None = None):
    # 'utf-8' as torch.load: Python 2 `str` pickles decode to text (keys, locations).
    super().__init__(file, encoding="utf-8")
    self._source = source
    self._allowed = allowed
    self._persistent = persistent_load

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._allowed[(module, name)]
    except (KeyError, TypeError):
      raise UnsafePickleError(f"refusing to load global '{module}.{name}' from "
                              f"{self._source}: it is not on the allow-list of this reader "
                              "(nothing in the file was run)") from None

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent is None:
      raise UnsafePickleError(f"refusing persistent id {str(pid)[:80]!r} in {self._source}: "
                              "this kind of file has none")
    return self._persistent(pid)


class NoBuild:
  """Mixin of the records the replacements return: the BUILD opcode (setstate) would
  overwrite their checked fields (a tensor's size after its bounds check), so it is refused."""

  def __setstate__(self, state: Any) -> None:
    raise UnsafePickleError(f"refusing to set the state of a {type(self).__name__} (BUILD): "
                            "the formats read here never do")


def restricted_loads(data: bytes, *, source: str, allowed: Mapping[tuple[str, str], Any],
                     persistent_load: Callable[[Any], Any] | None = None) -> Any:
  """Unpickles `data` with `RestrictedUnpickler` (see there)."""
  return RestrictedUnpickler(io.BytesIO(data), source=source, allowed=allowed,
                             persistent_load=persistent_load).load()


# ------------------------------------------------------------------------------------------
# Safe replacements for the few standard-library globals the formats use.


class PickledDict(dict):
  """`collections.OrderedDict` as read back: a dict (ordered) that drops the attributes
  torch pickles with it (a state dict's `_metadata`, set by the BUILD opcode)."""

  def __setstate__(self, state: Any) -> None:
    del state


def _safe_set(items: Any = ()) -> set:
  return set(items)


def _safe_frozenset(items: Any = ()) -> frozenset:
  return frozenset(items)


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
  """Protocol-2 pickles store `bytes` as `_codecs.encode(str, 'latin1')`; only that is
  accepted (other codecs are not needed by any format read here)."""
  if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1",):
    raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}): "
                            "only latin1-encoded bytes are expected")
  return text.encode("latin1", errors)


def allow_list(base: Mapping[tuple[str, str], Any],
               by_module: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], Any]:
  """An allow-list {(module, name): replacement}: `base` plus `by_module` ({module: {name:
  replacement}}, grouped so that a reader sees per module what a format may name)."""
  return {**base, **{(module, name): value for module, names in by_module.items()
                     for name, value in names.items()}}


STDLIB_GLOBALS = allow_list({}, {
    "collections": {"OrderedDict": PickledDict},
    "builtins": {"set": _safe_set, "frozenset": _safe_frozenset},
    "__builtin__": {"set": _safe_set},
    "_codecs": {"encode": _codecs_encode},
})
