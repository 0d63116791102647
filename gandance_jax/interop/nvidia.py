"""stylegan2-ada-pytorch network pickles and StyleGAN2 `.pth` files, without torch.

`load_nvidia_pickle` reads the `network-snapshot-*.pkl` dict NVIDIA's training loop writes
(`training_set_kwargs`, `G`, `D`, `G_ema`, `augment_pipe`). Each network there is pickled by
`torch_utils.persistence` as `_reconstruct_persistent_obj(meta)`, meta = {type: 'class',
version, module_src: the module's source text, class_name, state: the torch module's
__dict__}; tensors are `_rebuild_parameter(_rebuild_tensor_v2(storage, ...))` and every
storage is `torch.storage._load_from_bytes(<a legacy-format torch file>)`. Here each of those
globals resolves to a replacement that records data: `module_src` is kept as text and never
executed or imported, nested storage files are read with the same restricted reader.

The networks are rebuilt with `stylegan2.generator_from_torch_state_dict` /
`discriminator_from_torch_state_dict`, their settings taken from the constructor arguments
that `persistence` pickles with every object (`_init_args`, `_init_kwargs`).

`stylegan2_torch_state_dict` is the inverse of that import (this project's variables ->
NVIDIA's key names and layouts); `export_stylegan2` writes G_ema (and D) as a `.pth` file
that `torch.load` reads and `load_stylegan2_torch_file` reads back.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from gandance_jax.interop import torch_files
from gandance_jax.interop.safe_pickle import (FormatError, NoBuild, UnsafePickleError,
                                              allow_list)
from gandance_jax.networks import stylegan2

# ------------------------------------------------------------------------------------------
# Replacements of the globals an NVIDIA snapshot names.


class PersistentObject(NoBuild):
  """A `torch_utils.persistence` object as pickled: class name and state, nothing run.

  Attributes:
    class_name: e.g. 'Generator' (NVIDIA's class, not imported).
    module_src: the source text of the module that defined it (kept as text only).
    state: the object's __dict__ (for a torch module: _parameters, _buffers, _modules,
      _init_args, _init_kwargs, ...).
  """

  def __init__(self, class_name: str, module_src: str, state: dict[str, Any]):
    self.class_name, self.module_src, self.state = class_name, module_src, state

  def __repr__(self) -> str:
    return f"PersistentObject({self.class_name})"

  @property
  def init_args(self) -> tuple[Any, ...]:
    return tuple(self.state.get("_init_args", ()))

  @property
  def init_kwargs(self) -> dict[str, Any]:
    return _plain(self.state.get("_init_kwargs", {}))


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
  if not isinstance(meta, dict) or meta.get("type") != "class":
    raise FormatError(f"persistent object metadata of an unknown kind: "
                      f"{str(meta)[:100] if not isinstance(meta, dict) else meta.get('type')!r}")
  class_name, src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
  if not isinstance(class_name, str) or not isinstance(src, str):
    raise FormatError("persistent object without a class name / module source")
  if not isinstance(state, dict):
    raise FormatError(f"persistent object {class_name} has no state dict")
  return PersistentObject(class_name, src, state)


class EasyDict(dict):
  """dnnlib.util.EasyDict as read back: a plain dict (NEWOBJ needs a class)."""


class _DtypeSpec:
  """numpy.dtype as pickled (name, then BUILD with the byte order); checked, not numpy's."""

  def __init__(self, name: Any, align: Any = False, copy: Any = True):
    del align, copy
    if not isinstance(name, str) or len(name) > 4 or name[:1] not in tuple("biufc") or not (
        name[1:].isdigit() or name in ("b1",)):
      raise UnsafePickleError(f"refusing numpy dtype {name!r}: only numeric dtypes are "
                              "expected")
    self.dtype = np.dtype(name)

  def __setstate__(self, state: Any) -> None:
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
      self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(spec: Any, data: Any = None) -> Any:
  if not isinstance(spec, _DtypeSpec) or not isinstance(data, bytes):
    raise UnsafePickleError(f"refusing numpy scalar of {type(spec).__name__}: only numeric "
                            "scalars stored as bytes are expected")
  if len(data) != spec.dtype.itemsize:
    raise FormatError(f"numpy scalar of {spec.dtype} with {len(data)} bytes")
  return np.frombuffer(data, spec.dtype)[0].astype(spec.dtype.newbyteorder("="))


def _storage_from_bytes(blob: Any, source: str) -> torch_files.Storage:
  """torch.storage._load_from_bytes: a legacy torch file holding one storage."""
  if not isinstance(blob, bytes):
    raise FormatError(f"{source}: _load_from_bytes of a {type(blob).__name__}, expected bytes")
  obj, _ = torch_files.read_legacy(io.BytesIO(blob), f"{source} (a nested storage)",
                                   torch_files.TORCH_GLOBALS)
  if not isinstance(obj, torch_files.Storage):
    raise FormatError(f"{source}: _load_from_bytes gave a {type(obj).__name__}, expected a "
                      "storage")
  obj.users = 0  # counted again by the tensors of the outer pickle
  return obj


# ("torch.storage", "_load_from_bytes") is bound to the file's name in `nvidia_globals`.
NVIDIA_GLOBALS = allow_list(torch_files.TORCH_GLOBALS, {
    "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
    "dnnlib.util": {"EasyDict": EasyDict},
    "dnnlib": {"EasyDict": EasyDict},
    "numpy": {"dtype": _DtypeSpec},
    "numpy.core.multiarray": {"scalar": _numpy_scalar},
    "numpy._core.multiarray": {"scalar": _numpy_scalar},
})


def nvidia_globals(source: str) -> dict[tuple[str, str], Any]:
  """The allow-list of a network snapshot `source` (errors in nested storages name it)."""
  return {**NVIDIA_GLOBALS, ("torch.storage", "_load_from_bytes"):
          lambda blob: _storage_from_bytes(blob, source)}


def _plain(obj: Any) -> Any:
  """EasyDicts / tuples of kwargs as plain dicts and lists of Python values."""
  if isinstance(obj, Mapping):
    return {k: _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


# ------------------------------------------------------------------------------------------
# Module trees -> state dicts and settings.


def module_state_dict(obj: PersistentObject, source: str) -> dict[str, np.ndarray]:
  """What `module.state_dict()` returns, as numpy arrays: parameters, persistent buffers,
  then the children's, with dotted names (torch's order)."""
  refs: dict[str, torch_files.TensorRef] = {}

  def walk(o: Any, prefix: str) -> None:
    if not isinstance(o, PersistentObject):
      raise FormatError(f"{source}: submodule {prefix[:-1]!r} is a {type(o).__name__}, "
                        "expected a persistent stylegan2-ada module")
    st = o.state
    skip = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
      for name, t in (st.get(group) or {}).items():
        if t is None or (group == "_buffers" and name in skip):
          continue
        if not isinstance(t, torch_files.TensorRef):
          raise FormatError(f"{source}: {prefix}{name} is a {type(t).__name__}, expected a "
                            "tensor")
        refs[prefix + name] = t
    for name, child in (st.get("_modules") or {}).items():
      if child is not None:
        walk(child, f"{prefix}{name}.")

  walk(obj, "")
  return {k: t.to_numpy(source) for k, t in refs.items()}


_G_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
           "synthesis_kwargs")
_D_ARGS = ("c_dim", "img_resolution", "img_channels", "architecture", "channel_base",
           "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs",
           "mapping_kwargs", "epilogue_kwargs")
# Constructor options without a counterpart in this project's networks: the defaults are
# accepted, anything else is refused (the import would silently compute something else).
_DEFAULTS_ONLY = {"embed_features": None, "layer_features": None, "activation": "lrelu",
                  "lr_multiplier": 0.01, "resample_filter": [1, 3, 3, 1], "use_noise": True}
# Every option each kwargs group of NVIDIA's constructors takes; the memory-layout and
# training-only ones (channels_last, fp16_channels_last, freeze_layers) change no output.
_KNOWN = {
    "G.mapping_kwargs": {"num_layers", "w_avg_beta", "embed_features", "layer_features",
                         "activation", "lr_multiplier"},
    "G.synthesis_kwargs": {"channel_base", "channel_max", "num_fp16_res", "conv_clamp",
                           "architecture", "resample_filter", "use_noise", "activation",
                           "fp16_channels_last", "channels_last"},
    "D.block_kwargs": {"activation", "resample_filter", "fp16_channels_last", "freeze_layers"},
    "D.mapping_kwargs": {"num_layers", "embed_features", "layer_features", "activation",
                         "lr_multiplier"},
    "D.epilogue_kwargs": {"mbstd_group_size", "mbstd_num_channels", "activation"},
}


def _call_kwargs(obj: PersistentObject, names: tuple[str, ...], required: tuple[str, ...],
                 source: str) -> dict[str, Any]:
  args = obj.init_args
  if len(args) > len(names):
    raise FormatError(f"{source}: {obj.class_name} was built with {len(args)} positional "
                      f"arguments, expected at most {len(names)}")
  kwargs = dict(zip(names, _plain(args)))
  kwargs.update(obj.init_kwargs)
  unknown = sorted(set(kwargs) - set(names))
  if unknown:
    raise FormatError(f"{source}: the pickled {obj.class_name} has constructor arguments "
                      f"{unknown} that stylegan2-ada's does not (another network family?)")
  for name in required:
    if name not in kwargs:
      raise FormatError(f"{source}: the pickled {obj.class_name} lacks its constructor "
                        f"argument {name!r} (expected in _init_args / _init_kwargs)")
  return kwargs


def _check_supported(where: str, kwargs: Mapping[str, Any], source: str) -> None:
  for name, value in kwargs.items():
    if name not in _KNOWN[where]:
      raise FormatError(f"{source}: unknown option {where}.{name} = {value!r} (expected "
                        f"one of {sorted(_KNOWN[where])})")
    if name in _DEFAULTS_ONLY and value != _DEFAULTS_ONLY[name]:
      raise FormatError(f"{source}: {where}.{name} = {value!r} is not supported by this "
                        f"project's StyleGAN2 (only {_DEFAULTS_ONLY[name]!r})")


def generator_settings(obj: PersistentObject, source: str) -> dict[str, Any]:
  """Flat settings (the golden JSON names) of a pickled NVIDIA Generator."""
  kw = _call_kwargs(obj, _G_ARGS, _G_ARGS[:5], source)
  mapping = dict(kw.pop("mapping_kwargs", None) or {})
  synthesis = dict(kw.pop("synthesis_kwargs", None) or {})
  _check_supported("G.mapping_kwargs", mapping, source)
  _check_supported("G.synthesis_kwargs", synthesis, source)
  s = {k: kw[k] for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")}
  s.update(mapping_layers=mapping.get("num_layers", 8),
           w_avg_beta=mapping.get("w_avg_beta", 0.995),
           channel_base=synthesis.get("channel_base", 32768),
           channel_max=synthesis.get("channel_max", 512),
           num_fp16_res=synthesis.get("num_fp16_res", 0),
           conv_clamp=synthesis.get("conv_clamp"),  # NVIDIA's block default: None
           g_architecture=synthesis.get("architecture", "skip"))
  return s


def discriminator_settings(obj: PersistentObject, source: str) -> dict[str, Any]:
  """Flat settings (the golden JSON names) of a pickled NVIDIA Discriminator."""
  kw = _call_kwargs(obj, _D_ARGS, _D_ARGS[:3], source)
  block = dict(kw.get("block_kwargs") or {})
  mapping = dict(kw.get("mapping_kwargs") or {})
  epilogue = dict(kw.get("epilogue_kwargs") or {})
  for where, d in (("D.block_kwargs", block), ("D.mapping_kwargs", mapping),
                   ("D.epilogue_kwargs", epilogue)):
    _check_supported(where, d, source)
  return dict(c_dim=kw["c_dim"], img_resolution=kw["img_resolution"],
              img_channels=kw["img_channels"], d_architecture=kw.get("architecture", "resnet"),
              channel_base=kw.get("channel_base", 32768), channel_max=kw.get("channel_max", 512),
              num_fp16_res=kw.get("num_fp16_res", 0), conv_clamp=kw.get("conv_clamp"),
              cmap_dim=kw.get("cmap_dim"), d_mapping_layers=mapping.get("num_layers", 8),
              mbstd_group_size=epilogue.get("mbstd_group_size", 4),
              mbstd_num_channels=epilogue.get("mbstd_num_channels", 1))


def _merged_settings(g: Mapping[str, Any] | None, d: Mapping[str, Any] | None,
                     num_ws: int | None) -> dict[str, Any]:
  """One flat dict as ../shared/golden/stylegan2_ada*/*.json; D values that differ from G's
  under shared names are kept with a 'd_' prefix."""
  out = dict(g or {})
  for k, v in (d or {}).items():
    if k not in out:
      out[k] = v
    elif out[k] != v:
      out[f"d_{k}"] = v
  if num_ws is not None:
    out["num_ws"] = num_ws
  return out


def _build(kind: str, state: Mapping[str, np.ndarray], settings: Mapping[str, Any],
           source: str) -> tuple[Any, dict[str, Any]]:
  build = stylegan2.generator_from_torch_state_dict
  if kind == "D":
    build = stylegan2.discriminator_from_torch_state_dict
    # D's own values of shared names (see _merged_settings) win for D.
    settings = {**settings, **{k[2:]: v for k, v in settings.items()
                               if k.startswith("d_") and k[2:] in settings}}
  try:
    return build(state, **settings)
  except ValueError as e:
    raise FormatError(f"{source}: {kind} does not fit this project's StyleGAN2: {e}") from None


def _read_pickle_file(path: str) -> Any:
  with open(path, "rb") as f:
    head = f.read(4)
    if not head:
      raise FormatError(f"{path}: the file is empty; expected a stylegan2-ada "
                        "network-snapshot pickle")
    if head == b"PK\x03\x04":
      raise FormatError(f"{path}: a zip archive (a torch .pth or .npz?); expected a "
                        "stylegan2-ada network-snapshot pickle (for a .pth state dict use "
                        "read_torch_state_dict or load_stylegan2_torch_file)")
    if head[:1] not in torch_files.PICKLE_STARTS:
      raise FormatError(f"{path}: not a pickle (starts with {head!r}); expected a "
                        "stylegan2-ada network-snapshot pickle")
    f.seek(0)
    return torch_files.unpickle_file(f, path, nvidia_globals(path))


def load_nvidia_pickle(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a stylegan2-ada-pytorch `network-snapshot-*.pkl` without torch or NVIDIA's code.

  Returns:
    {'G', 'D', 'G_ema': (module, {'params', 'buffers'}) of this project's StyleGAN2, ready
     for `apply` (None for a network the file lacks; G_ema is required),
     'state_dicts': {'G'|'D'|'G_ema'|'augment_pipe': {torch key: numpy array}},
     'settings': flat settings in the names of ../shared/golden/stylegan2_ada*/*.json
       (z_dim, w_dim, c_dim, img_resolution, ..., g_architecture, d_architecture,
        mbstd_group_size, num_ws),
     'augment_p': the augmentation probability (float) or None,
     'training_set_kwargs': a plain dict or None}.
  Raises:
    UnsafePickleError: the pickle names a global outside the allow-list (nothing was run).
    FormatError: empty / truncated / not a pickle / not a network snapshot / unsupported
      network options (the message names the file and what was expected).
  """
  path = os.fspath(path)
  snapshot = _read_pickle_file(path)
  if not isinstance(snapshot, dict) or not isinstance(snapshot.get("G_ema"), PersistentObject):
    found = sorted(map(str, snapshot)) if isinstance(snapshot, dict) else type(snapshot).__name__
    raise FormatError(f"{path}: not a stylegan2-ada network snapshot (found {found}); "
                      "expected a dict with a pickled 'G_ema' network (and G, D, augment_pipe)")
  out: dict[str, Any] = {"G": None, "D": None, "G_ema": None, "state_dicts": {}}
  settings: dict[str, dict[str, Any]] = {}
  for name, kind in (("G_ema", "G"), ("G", "G"), ("D", "D")):
    obj = snapshot.get(name)
    if obj is None:
      continue
    expected = "Generator" if kind == "G" else "Discriminator"
    if not isinstance(obj, PersistentObject) or obj.class_name != expected:
      raise FormatError(f"{path}: {name} is a {getattr(obj, 'class_name', type(obj).__name__)}"
                        f", expected a stylegan2-ada {expected}")
    settings[name] = (generator_settings if kind == "G" else discriminator_settings)(obj, path)
    state = module_state_dict(obj, path)
    out["state_dicts"][name] = state
    out[name] = _build(kind, state, settings[name], path)
  pipe = snapshot.get("augment_pipe")
  out["augment_p"] = None
  if isinstance(pipe, PersistentObject):
    out["state_dicts"]["augment_pipe"] = module_state_dict(pipe, path)
    p = out["state_dicts"]["augment_pipe"].get("p")
    out["augment_p"] = None if p is None else float(p)
  kwargs = snapshot.get("training_set_kwargs")
  out["training_set_kwargs"] = None if kwargs is None else _plain(kwargs)
  out["settings"] = _merged_settings(settings["G_ema"], settings.get("D"),
                                     out["G_ema"][0].num_ws)
  return out


# ------------------------------------------------------------------------------------------
# Export: this project's variables -> NVIDIA's state dicts, and `.pth` files of them.


def stylegan2_torch_state_dict(module: Any, variables: Mapping[str, Any]
                               ) -> dict[str, np.ndarray]:
  """NVIDIA's state dict (keys and NCHW / [out, in] layouts) of a StyleGAN2 G or D.

  The exact inverse of `stylegan2.variables_from_torch_state_dict`: importing the result
  gives back `variables` bit for bit.
  """
  # The renames are the import's own (one home for the key mapping).
  rename = (stylegan2._TORCH_RENAMES  # pylint: disable=protected-access
            if isinstance(module, stylegan2.Generator) else {})
  out = {}
  for col in ("params", "buffers"):
    for path, leaf in jax.tree_util.tree_leaves_with_path(dict(variables.get(col, {}))):
      names = [str(getattr(p, "key", p)) for p in path]
      key = ".".join([rename.get(names[0], names[0])] + names[1:])
      v = np.asarray(leaf)
      last = names[-1]
      if key.endswith("b4.fc.weight") and v.ndim == 2 and not isinstance(
          module, stylegan2.Generator):
        in_f, out_f = v.shape  # ours flattens (h, w, c), NVIDIA (c, h, w)
        v = v.reshape(4, 4, in_f // 16, out_f).transpose(3, 2, 0, 1).reshape(out_f, in_f)
      elif last == "weight" and v.ndim == 4:
        v = v.transpose(3, 2, 0, 1)           # [kh, kw, I, O] -> [O, I, kh, kw]
      elif last == "weight" and v.ndim == 2:
        v = v.T                               # [in, out] -> [out, in]
      elif last == "const" and v.ndim == 3:
        v = v.transpose(2, 0, 1)              # [H, W, C] -> [C, H, W]
      out[key] = np.array(v, order="C", copy=None)
  return out


def stylegan2_settings(G: Any = None, D: Any = None) -> dict[str, Any]:
  """Flat settings (the golden JSON names, plus num_classes / empty_class) of our modules,
  so that `load_stylegan2_torch_file` rebuilds the same networks."""
  g = d = None
  if G is not None:
    g = dict(z_dim=G.z_dim, w_dim=G.w_dim, c_dim=G.c_dim, num_classes=G.num_classes,
             empty_class=G.empty_class, img_resolution=G.resolution,
             img_channels=G.img_channels, mapping_layers=G.mapping_layers,
             w_avg_beta=G.w_avg_beta, channel_base=G.channel_base, channel_max=G.channel_max,
             conv_clamp=G.conv_clamp, g_architecture=G.architecture)
  if D is not None:
    d = dict(c_dim=D.c_dim, num_classes=D.num_classes, empty_class=D.empty_class,
             img_resolution=D.resolution, img_channels=D.img_channels,
             d_architecture=D.architecture, channel_base=D.channel_base,
             channel_max=D.channel_max, conv_clamp=D.conv_clamp, cmap_dim=D.cmap_dim,
             d_mapping_layers=D.mapping_layers, mbstd_group_size=D.mbstd_group_size,
             mbstd_num_channels=D.mbstd_num_channels)
  return _merged_settings(g, d, G.num_ws if G is not None else None)


def export_stylegan2(path: str | os.PathLike, G: Any, g_vars: Mapping[str, Any],
                     D: Any = None, d_vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes {'G_ema': state dict, 'D': state dict, 'settings': {...}} as a torch zip file.

  A PyTorch user loads it with `G_ema.load_state_dict(torch.load(path)['G_ema'])` into
  NVIDIA's networks built with the same settings. Returns the object written.
  """
  obj: dict[str, Any] = {"G_ema": stylegan2_torch_state_dict(G, g_vars)}
  if D is not None:
    obj["D"] = stylegan2_torch_state_dict(D, d_vars)
  obj["settings"] = {k: v for k, v in stylegan2_settings(G, D).items()
                     if v is None or isinstance(v, (bool, int, float, str))}
  torch_files.write_torch_file(path, obj)
  return obj


def _split_state_dicts(obj: Any, source: str) -> dict[str, dict[str, np.ndarray]]:
  """{'G_ema'|'G'|'D': flat state dict} from a `.pth` object: nested by network name, with
  dotted prefixes, or a single generator state dict (taken as G_ema)."""
  flat = dict(torch_files.flatten_arrays(obj))
  nets = {}
  for name in ("G_ema", "G", "D"):
    sub = {k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(name + ".")}
    if sub:
      nets[name] = sub
  if not nets and any(k.startswith(("mapping.", "synthesis.")) for k in flat):
    nets["G_ema"] = flat
  if "G_ema" not in nets and "G" in nets:
    nets["G_ema"] = nets["G"]
  if "G_ema" not in nets:
    raise FormatError(f"{source}: no StyleGAN2 generator state dict (keys 'G_ema.*', 'G.*' or "
                      f"'mapping.*'/'synthesis.*'); found {sorted(flat)[:5]}")
  return nets


def load_stylegan2_torch_file(path: str | os.PathLike, **settings: Any) -> dict[str, Any]:
  """StyleGAN2 networks from a `.pth` (as `export_stylegan2` writes, or any NVIDIA-keyed
  state dict): {'G_ema', 'G', 'D': (module, variables) or None, 'settings'}.

  Settings come from the file's 'settings' dict when it has one; keyword arguments (the
  golden JSON names) override them and are required for a file without it.
  """
  path = os.fspath(path)
  obj = torch_files.load_torch_file(path)
  stored = obj.get("settings") if isinstance(obj, dict) else None
  merged = dict(stored) if isinstance(stored, dict) else {}
  merged.update(settings)
  if not merged:
    raise FormatError(f"{path}: has no 'settings' entry; pass the network settings "
                      "(z_dim, w_dim, c_dim, img_resolution, ...) as keyword arguments")
  nets = _split_state_dicts(obj, path)
  out: dict[str, Any] = {"G_ema": None, "G": None, "D": None, "settings": merged}
  for name, state in nets.items():
    out[name] = _build("D" if name == "D" else "G", state, merged, path)
  return out


def load_stylegan2_generator(path: str | os.PathLike, **settings: Any
                             ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """(G_ema module, its variables, the flat settings) from a stylegan2-ada
  `network-snapshot-*.pkl` or a StyleGAN2 `.pth` (for `--network=`): a zip or legacy torch
  file is read as a `.pth` (settings from the file, overridden by `settings`), any other
  pickle as a network snapshot (settings from the pickle; `settings` must not be given)."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(4)
  if head != b"PK\x03\x04":
    try:
      snap = load_nvidia_pickle(path)
    except FormatError as e:
      if "(found int)" not in str(e):  # the int is a legacy torch file's magic number
        raise
    else:
      if settings:
        raise ValueError(f"{path}: a network snapshot carries its settings; got {settings}")
      return (*snap["G_ema"], snap["settings"])
  nets = load_stylegan2_torch_file(path, **settings)
  return (*nets["G_ema"], nets["settings"])


__all__ = [
    "load_nvidia_pickle", "load_stylegan2_torch_file", "load_stylegan2_generator",
    "export_stylegan2", "stylegan2_torch_state_dict", "stylegan2_settings", "PersistentObject",
    "NVIDIA_GLOBALS", "nvidia_globals",
]
