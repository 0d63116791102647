"""`main.py --mode=sample`: guidance grids, class interpolations and evaluation .npz files.

From a generator (the G EMA of a checkpoint, or any Generator + variables) and `config.sample`
(fields in config_lib.base_config), writes into `outdir`:

* ``grid_<mode>.png`` (Fig. 5 / Fig. S1): one row per (class, z), one column per guidance
  scale in `scales`, the same z (and noise, and random opposite set) along a row;
* ``interp_<mode>_<tag>.png`` (Fig. S3): per row, an interpolation at fixed z between the
  guided latents of two classes, ``w_t = (1 - t) w'_a + t w'_b``;
* ``samples_<N>_<mode>_<tag>.npz``: N samples with uniformly drawn labels in the ADM layout
  (``arr_0`` uint8 [N, H, W, C], ``arr_1`` int64 [N]), one file per scale in `npz_scales`
  (or one for `layer_scales`). The file is written chunk by chunk into the zip stream, so
  host memory does not grow with N.

``tag`` is ``s<scale>`` or ``layerwise``. Every option is checked before anything is compiled.

Multi-process runs: every process calls this; each output is one global program sharded over
all devices (each process computes its devices' rows), and only process 0 writes files.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Iterable

import jax
import numpy as np
from absl import logging

from gandance_jax import checkpoint
from gandance_jax import config_lib, console, guidance, images, multihost
from gandance_jax.interop import network_file
from gandance_jax.networks import base
from gandance_jax import sampler as sampler_lib

# fold_in purposes of the root key jax.random.key(config.sample.seed).
_GRID, _INTERP, _NPZ, _NPZ_LABELS = 0, 1, 2, 3


def write_npz_stream(path: str, chunks: Iterable[np.ndarray], shape: tuple[int, ...],
                     labels: np.ndarray) -> str:
  """Writes an ADM-layout .npz whose arr_0 [N, H, W, C] uint8 arrives in chunks.

  The .npy member is written straight into the (uncompressed, zip64) archive, header first,
  then each chunk's bytes, so only one chunk is ever in memory. The file appears atomically.

  Args:
    path: output .npz path.
    chunks: uint8 arrays [n_i, H, W, C] with sum n_i = N, in order.
    shape: (N, H, W, C) of arr_0.
    labels: int [N], stored as arr_1 (int64, as ADM's sampler writes).
  Returns:
    path.
  """
  shape = tuple(int(d) for d in shape)
  labels = np.asarray(labels, np.int64)
  if labels.shape != shape[:1]:
    raise ValueError(f"labels must have shape [{shape[0]}], got {list(labels.shape)}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  written = 0
  try:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
      with zf.open("arr_0.npy", "w", force_zip64=True) as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                  "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
          chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
          if chunk.shape[1:] != shape[1:]:
            raise ValueError(f"chunk of shape {chunk.shape} does not fit arr_0 {shape}")
          written += chunk.shape[0]
          if written > shape[0]:
            raise ValueError(f"more than {shape[0]} images were written")
          f.write(memoryview(chunk).cast("B"))
      if written != shape[0]:
        raise ValueError(f"{written} images were written, expected {shape[0]}")
      with zf.open("arr_1.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, labels, allow_pickle=False)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def remove_stale_temporaries(outdir: str) -> list[str]:
  """Removes `*.npz.tmp<pid>` files of `write_npz_stream` whose process is gone (a sampler
  killed mid-write); returns their paths. Files of a live process are left alone."""
  removed = []
  if not os.path.isdir(outdir):
    return removed
  for name in os.listdir(outdir):
    stem, sep, pid = name.rpartition(".tmp")
    if not sep or not stem.endswith(".npz") or not pid.isdigit():
      continue
    try:
      os.kill(int(pid), 0)
      continue  # still running (another sampler writing here)
    except ProcessLookupError:
      pass
    except PermissionError:
      continue  # alive, another user's
    path = os.path.join(outdir, name)
    os.remove(path)
    removed.append(path)
  if removed:
    logging.info("removed %d stale partial sample files in %s", len(removed), outdir)
  return removed


def _default_classes(num_classes: int) -> list[int]:
  # Every class up to images.MAX_GRID_CLASSES rows, else that many spread evenly (the
  # grid's caption says which).
  return images.grid_classes(num_classes)


def _tag(scale: float | None) -> str:
  return "layerwise" if scale is None else f"s{scale:g}"


def _layer_schedule(G: base.ConditionalGenerator, spec: str) -> np.ndarray:
  try:
    return guidance.layerwise_scale(G, guidance.parse_layer_scales(spec), default=None)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.sample.layer_scales = {spec!r} is invalid: {e}") from None


def _sampler(G: base.ConditionalGenerator, s: Any, scale: Any,
             devices: Any | None) -> sampler_lib.Sampler:
  opposite = np.asarray(list(s.opposite_labels), np.int32) if len(s.opposite_labels) else None
  mode = s.mode
  return sampler_lib.make_sampler(
      G, mode=mode, scale=scale,
      opposite_labels=opposite if mode == "training_free" else None,
      num_opposite=s.num_opposite if mode == "training_free" else 0,
      truncation_psi=float(s.truncation_psi), noise_mode=s.noise_mode, devices=devices)


def check(G: base.ConditionalGenerator, sample_config: Any) -> list[Any]:
  """Validates `sample_config` against G; returns the npz scales (None = layer schedule)."""
  config_lib.validate_sample_config(sample_config, G.num_classes, G.empty_class)
  if sample_config.truncation_psi != 1 and G.w_avg_beta is None:
    raise config_lib.ConfigError(
        f"config.sample.truncation_psi = {sample_config.truncation_psi} needs a generator with "
        "w_avg (w_avg_beta set)")
  if sample_config.layer_scales:
    _layer_schedule(G, sample_config.layer_scales)
    return [None]
  return [float(x) for x in sample_config.npz_scales]


def run_with_generator(G: base.ConditionalGenerator, variables: Any, sample_config: Any,
                       outdir: str, devices: Any | None = None) -> dict[str, list[str]]:
  """Writes the grids, interpolation strips and .npz files of `sample_config` to `outdir`.

  Args:
    G: a class-conditional Generator.
    variables: its variables ({'params', 'buffers'}, e.g. the G EMA).
    sample_config: `config.sample` (see config_lib.base_config).
    outdir: output directory (created).
    devices: devices of the `data` mesh (default: all).
  Returns:
    {'grid': [png paths], 'interp': [png paths], 'npz': [npz paths]}.
  """
  s = sample_config
  npz_scales = check(G, s)  # Everything is validated before the first compilation.
  # Mode 'none' has no guidance scale: its one column / file is scale 1.
  schedule = (_layer_schedule(G, s.layer_scales) if s.layer_scales and s.mode != "none"
              else None)
  os.makedirs(outdir, exist_ok=True)
  if multihost.is_main():
    remove_stale_temporaries(outdir)
  root = jax.random.key(int(s.seed))
  classes = list(s.classes) or _default_classes(G.num_classes)
  outputs: dict[str, list[str]] = {"grid": [], "interp": [], "npz": []}
  mode = s.mode

  if "grid" in s.outputs:
    # Rows: each class repeated grid_rows_per_class times; sample index = row, so every
    # column (scale) sees the same z, noise and random opposite set.
    row_labels = np.repeat(np.asarray(classes, np.int32), s.grid_rows_per_class)
    scales = [1.0] if mode == "none" else [float(x) for x in s.scales]
    key = jax.random.fold_in(root, _GRID)
    columns = [multihost.to_host(_sampler(G, s, scale, devices)(variables, key, row_labels))
               for scale in scales]
    grid = np.stack(columns, axis=1).reshape((-1,) + columns[0].shape[1:])
    path = os.path.join(outdir, f"grid_{mode}.png")
    if multihost.is_main():
      shown = images.classes_caption(classes, G.num_classes)
      columns = ", ".join(f"{x:g}" for x in scales)
      images.save_grid(
          path, grid, rows=len(row_labels), cols=len(scales),
          row_labels=[str(c) for c in row_labels], col_labels=[f"{x:g}" for x in scales],
          caption=(f"GANdance {mode} guidance: rows {shown} (class id on the left, "
                   f"{s.grid_rows_per_class} z per class); columns: guidance scales "
                   f"{columns} (on top); the same z along a row"))
    outputs["grid"].append(path)
    logging.info("wrote %s (rows: classes %s, columns: scales %s)", path, classes, scales)

  if "interp" in s.outputs:
    pairs = [tuple(p) for p in s.interp_pairs] or list(zip(classes[:-1], classes[1:]))
    if pairs:
      scale = schedule if schedule is not None else (1.0 if mode == "none" else s.interp_scale)
      sampler = _sampler(G, s, scale, devices)
      key = jax.random.fold_in(root, _INTERP)
      rows = np.arange(len(pairs), dtype=np.int32)
      ends = [np.asarray([p[i] for p in pairs], np.int32) for i in (0, 1)]
      ws_a, ws_b = (multihost.to_host(sampler.latents(variables, key, e, indices=rows))
                    for e in ends)
      t = np.linspace(0.0, 1.0, s.interp_steps, dtype=np.float32)[None, :, None, None]
      ws = (ws_a[:, None] + t * (ws_b - ws_a)[:, None]).reshape((-1,) + ws_a.shape[1:])
      strip = multihost.to_host(sampler.synthesize(variables, key, ws,
                                                   indices=np.repeat(rows, s.interp_steps)))
      tag = _tag(None if schedule is not None else (1.0 if mode == "none" else s.interp_scale))
      path = os.path.join(outdir, f"interp_{mode}_{tag}.png")
      if multihost.is_main():
        images.save_grid(
            path, strip, rows=len(pairs), cols=s.interp_steps,
            row_labels=[f"{a}-{b}" for a, b in pairs],
            caption=(f"class interpolation at {tag}: per row a -> b (left), "
                     f"{s.interp_steps} steps at a fixed z"))
      outputs["interp"].append(path)
      logging.info("wrote %s (pairs %s)", path, pairs)

  if "npz" in s.outputs:
    n = int(s.num_samples)
    # Labels uniform over the classes (as ADM's class-conditional sampler), the same for
    # every scale, so the files differ only by the guidance.
    labels = np.asarray(jax.random.randint(jax.random.fold_in(root, _NPZ_LABELS), (n,), 0,
                                           G.num_classes), np.int32)
    key = jax.random.fold_in(root, _NPZ)
    shape = (n, G.resolution, G.resolution, G.img_channels)
    for scale in (npz_scales if mode != "none" else [1.0]):
      sampler = _sampler(G, s, schedule if scale is None else scale, devices)
      chunks = (images.to_uint8(x, s.quantization)
                for _, x in sampler.stream(variables, key, labels, chunk_size=int(s.batch_size)))
      path = os.path.join(outdir, f"samples_{n}_{mode}_{_tag(scale)}.npz")
      if multihost.is_main():
        write_npz_stream(path, chunks, shape, labels)
      else:
        for _ in chunks:  # The other processes compute their rows of every chunk.
          pass
      outputs["npz"].append(path)
      logging.info("wrote %s", path)
  return outputs


def run(config: Any, workdir: str, which: str = "latest", network: str = ""
        ) -> dict[str, list[str]]:
  """`main.py --mode=sample`: samples from the G EMA of a checkpoint in `workdir`, or from
  `network` (--network: a network-snapshot .pkl, a StyleGAN2 .pth or another run's workdir;
  see interop.network_file). Outputs go to `<workdir>/samples/<tag>` either way.

  `which`: 'latest', 'best' (the best in-loop snapshot, config.best_metric) or a step.
  """
  if network:
    G, variables, tag = network_file.load_network(network, config.generator, which)
    if config.sample.mode == "learned" and not G.empty_class:
      raise config_lib.ConfigError(
          f"config.sample.mode = 'learned' needs a generator trained with the empty class; "
          f"the generator of --network = {network!r} has none (use "
          "--config.sample.mode=training_free or none)")
    source = network
  else:
    G, variables, _, step = checkpoint.load_generator_from(workdir, which)
    tag = f"best_step_{step}" if which == "best" else f"step_{step}"
    source = f"{workdir} (step {step})"
  check(G, config.sample)
  devices = jax.devices()
  mesh_data = config.get("mesh", {}).get("data", -1)
  if isinstance(mesh_data, int) and mesh_data > 0:
    if mesh_data > len(devices):
      raise config_lib.ConfigError(f"config.mesh.data = {mesh_data} is invalid: only "
                                   f"{len(devices)} devices")
    devices = devices[:mesh_data]
  outdir = config.sample.outdir or os.path.join(workdir, "samples", tag)
  logging.info("sampling from %s into %s", source, outdir)
  outputs = run_with_generator(G, variables, config.sample, outdir, devices=devices)
  if multihost.is_main():
    console.say(f"samples of {source}: {outdir}/ ({len(outputs['grid'])} grid, "
                f"{len(outputs['interp'])} interpolation strip, {len(outputs['npz'])} .npz)")
  return outputs
