"""Ahead-of-time compile of the training phases for N devices, with a per-device memory report.

  python -m gandance_jax.train.aot --config=configs/imagenet64.py --num_devices=8 \\
      [--budget_gib=16] [--out=report.json] [--phases=g_main,d_main] \\
      [--config.train.batch_size=128 ...]

Answers "does this config fit on a pod of N accelerators?" before getting one. The process
forces N host CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N,
JAX_PLATFORMS=cpu), builds the 'data' mesh, the jitted phases and the abstract state exactly
as the training loop does (train/loop.py `build`, `abstract_train_state`), and for every
phase the config runs (g_main; g_reg if pl_weight > 0; d_main; d_reg if r1_gamma > 0;
finish) calls `jax.jit(...).lower(state, batch).compile()` and reads
`compiled.memory_analysis()` of the per-device SPMD program:

  arguments  bytes of the inputs on one device: the replicated state + this device's batch
  outputs    bytes of the outputs (new state + metrics)
  aliased    output bytes that reuse donated input buffers (the state is donated)
  temp       XLA's temporary buffer (activations, gradients, collectives' scratch)
  est. peak  arguments + outputs - aliased + temp, the per-device peak estimate

Nothing is executed and no data is read: the batch is abstract, {'image': float32
[B, R, R, C], 'label': int32 [B]} sharded over 'data' (what the data sources of data/base.py feed).

CAVEAT: these are XLA:CPU's buffer assignments, an ESTIMATE of GPU/TPU memory. The GPU and
TPU compilers fuse, rematerialise and lay out buffers differently (padding to tiles,
different fusion decisions), cuDNN / TPU workspaces and the runtime's own reservations are
not seen, and the N devices are forced host devices. Leave headroom (10-20% on top is a
rule of thumb, not a bound measured against GPU/TPU runs). Not covered: the periodic sample
grid, in-loop evals (e.g. FID's Inception) and the input batches queued on the device
(config.prefetch, reported separately).

Why compile for the target mesh rather than one device with the per-device batch: the SPMD
partitioner changes the program. Measured for imagenet64 (batch 32 per device): d_main needs
3,419 MiB of temp on 8 devices against 2,525 MiB on 1 device, because minibatch-stddev groups
of the global batch span devices (6 extra all-reduces per D pass); with
`--config.discriminator.mbstd_shards=8` (groups inside each device's samples, NVIDIA's
per-GPU behaviour) it is 2,520 MiB and the only all-reduce left is the gradient's.

Exit codes: 0 all phases compiled (and fit --budget_gib if given); 2 invalid config or
flags, or JAX already started with another device count (the message names the field or
flag); 3 the largest estimated peak exceeds --budget_gib (the message names the phase and
the number; the report is still printed and written).
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from gandance_jax import config_lib
from gandance_jax import console
from gandance_jax.train import loop
from gandance_jax.train import sharding as sharding_lib


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags. Defined when the tool runs, not at import, so that importing
  this module beside main.py (which defines --config too) works, e.g. in one test process."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/imagenet64.py.",
                                  lock_config=True)
  flags.DEFINE_integer("num_devices", None, "Devices of the target mesh (forced host CPU "
                       "devices stand in for them).", lower_bound=1)
  flags.DEFINE_float("budget_gib", None, "Per-device memory budget in GiB; exit code 3 if "
                     "the largest estimated peak exceeds it.")
  flags.DEFINE_string("out", None, "Write the report as JSON to this path.")
  flags.DEFINE_list("phases", None, "Compile only these phases (default: all the config "
                    "runs).")
  flags.mark_flags_as_required(["config", "num_devices"])

PHASES = ("g_main", "g_reg", "d_main", "d_reg", "finish")
EXIT_CONFIG = 2
EXIT_OVER_BUDGET = 3
MIB = 2.0 ** 20
GIB = 2.0 ** 30
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

CAVEAT = ("XLA:CPU buffer assignment on forced host devices: an ESTIMATE of GPU/TPU memory "
          "(other fusion and layouts, no cuDNN/TPU workspaces or runtime reservations). "
          "Leave headroom (10-20% as a rule of thumb).")


class AotError(Exception):
  """A config or environment problem; the message names the field or flag."""


# ----------------------------------------------------------------------------- devices


def force_host_devices(num_devices: int, environ: Any = os.environ) -> None:
  """Sets XLA_FLAGS / JAX_PLATFORMS so that the CPU backend has `num_devices` devices.

  Other XLA_FLAGS are kept; an existing device count is replaced. Takes effect only if JAX's
  backend is not yet initialised (jax reads these when it first creates a client, not at
  import), which `check_devices` verifies.
  """
  kept = [f for f in environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
  environ["XLA_FLAGS"] = " ".join(kept + [f"{_DEVICE_COUNT_FLAG}={int(num_devices)}"])
  environ["JAX_PLATFORMS"] = "cpu"


def check_devices(num_devices: int) -> None:
  """Raises AotError unless JAX sees exactly `num_devices` CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    # JAX_PLATFORMS is read into jax.config at import; the update covers an early import.
    jax.config.update("jax_platforms", "cpu")
  except Exception:  # pylint: disable=broad-except
    pass  # backend already up: the checks below say what it has
  devices = jax.devices()
  platform = devices[0].platform
  if len(devices) != num_devices or platform != "cpu":
    raise AotError(
        f"--num_devices={num_devices} needs {num_devices} host CPU devices, but JAX was already "
        f"initialised with {len(devices)} {platform} device(s). Run "
        "`python -m gandance_jax.train.aot` in a fresh process (the device count is fixed "
        "when JAX's backend starts).")


# ----------------------------------------------------------------------------- sizes


def _shard_bytes(x: Any) -> int:
  """Bytes of one device's shard of a ShapeDtypeStruct (full size if replicated)."""
  shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
  return int(math.prod(shape)) * x.dtype.itemsize


def tree_bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(_shard_bytes(x) for x in jax.tree.leaves(tree))


def tree_count(tree: Any) -> int:
  """Number of elements (e.g. parameters) of a pytree of arrays or ShapeDtypeStructs."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))


def state_report(state: Any) -> tuple[dict[str, int], dict[str, int]]:
  """(per-device bytes by part of the abstract TrainState, parameter counts of G and D)."""
  parts = {
      "g_params": state.g_params,
      "g_ema_params": state.g_ema_params,
      "d_params": state.d_params,
      "g_opt_state": state.g_opt_state,   # Adam: mu and nu, 2x g_params, plus a count
      "d_opt_state": state.d_opt_state,
      "buffers": (state.g_buffers, state.d_buffers),   # w_avg, FIR filters, const noise
      "scalars": (state.step, state.pl_mean, state.augment_p, state.ada_sign_sum, state.rng),
  }
  nbytes = {name: tree_bytes_per_device(tree) for name, tree in parts.items()}
  nbytes["total"] = tree_bytes_per_device(state)
  assert nbytes["total"] == sum(v for k, v in nbytes.items() if k != "total")
  return nbytes, {"g": tree_count(state.g_params), "d": tree_count(state.d_params)}


# ----------------------------------------------------------------------------- compile


def abstract_batch(config: Any, sharding: Any) -> dict[str, Any]:
  """{'image': float32 [B, R, R, C], 'label': int32 [B]} as ShapeDtypeStructs on `sharding`.

  The data sources yield float32 images in [-1, 1] and int32 labels (data/base.py), and
  the loop checks that their resolution and channels equal config.generator's.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  b, r, c = (int(config.train.batch_size), int(config.generator.resolution),
             int(config.generator.img_channels))
  return {"image": jax.ShapeDtypeStruct((b, r, r, c), jnp.float32, sharding=sharding),
          "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharding)}


def compile_phase(fn: Any, args: tuple[Any, ...]) -> dict[str, Any]:
  """Lowers and compiles a jitted phase on abstract `args`; times and memory per device."""
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError("this JAX backend gives no memory_analysis() for compiled functions")
  row = {
      "lower_seconds": round(t1 - t0, 3),
      "compile_seconds": round(t2 - t1, 3),
      "argument_bytes": int(m.argument_size_in_bytes),
      "output_bytes": int(m.output_size_in_bytes),
      "alias_bytes": int(m.alias_size_in_bytes),
      "temp_bytes": int(m.temp_size_in_bytes),
      "generated_code_bytes": int(m.generated_code_size_in_bytes),
  }
  # Outputs that alias donated arguments take no new memory. (jaxlib's own
  # `peak_memory_in_bytes` is not used: on XLA:CPU it leaves out the temp buffer, e.g.
  # 676 MiB against 4 GiB here for imagenet64's phases.)
  row["peak_bytes"] = (row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
                       + row["temp_bytes"])
  return row


def selected_phases(runnable: list[str], requested: list[str] | None, config: Any) -> list[str]:
  """The phases to compile, in training order; raises AotError for unknown / disabled ones."""
  if not requested:
    return list(runnable)
  for name in requested:
    if name not in PHASES:
      raise AotError(f"--phases: unknown phase {name!r}; allowed values are {list(PHASES)}")
    if name not in runnable:
      field = {"g_reg": "pl_weight", "d_reg": "r1_gamma"}[name]
      raise AotError(f"--phases: {name} does not run with config.train.{field} = "
                     f"{config.train[field]} (set it > 0 to include it)")
  return [p for p in runnable if p in requested]


def prepare(config: Any, num_devices: int, phases: list[str] | None = None
            ) -> tuple[Any, tuple[Any, Any], list[str], dict[str, Any]]:
  """(TrainStep, (abstract state, abstract batch), phases to compile, report without phases).

  Validates and builds everything as loop.train does; compiles nothing. JAX must already see
  `num_devices` devices (see `force_host_devices`). Raises AotError or ValueError
  (config_lib.ConfigError included) naming the bad field.
  """
  import jax  # pylint: disable=g-import-not-at-top

  # Same checks and pieces as loop.train, in the same order.
  hp = config_lib.validate_config(config)
  if config.data.name.startswith("mixture_"):
    raise AotError(f"config.data.name = {config.data.name!r}: the 2D mixtures are trained by "
                   "gandance_jax/train/toy.py, not the StyleGAN2 loop this tool compiles")
  mesh = sharding_lib.make_mesh(config.mesh.data)
  sharding_lib.check_batch_size(hp, mesh)
  replicated = sharding_lib.replicated(mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  built = loop.build(hp, mesh)
  train_step = built.train_step
  state = loop.abstract_train_state(built.init_fn, replicated)
  batch = abstract_batch(config, batch_sharding)

  # Every phase the loop can run (phases_at(0): all intervals divide 0), then finish.
  runnable = train_step.phases_at(0) + ["finish"]
  todo = selected_phases(runnable, phases, config)
  state_bytes, param_counts = state_report(state)
  batch_bytes = tree_bytes_per_device(batch)
  mesh_devices = int(mesh.devices.size)
  report: dict[str, Any] = {
      "num_devices": num_devices,
      "mesh_devices": mesh_devices,
      "batch_size": int(config.train.batch_size),
      "per_device_batch": int(config.train.batch_size) // mesh_devices,
      "image_shape": list(batch["image"].shape),
      "phases_run_by_config": runnable,
      "params": param_counts,
      "state_bytes_per_device": state_bytes,
      "batch_bytes_per_device": batch_bytes,
      "prefetch": int(config.prefetch),
      "prefetch_bytes_per_device": int(config.prefetch) * batch_bytes,
      "jax_version": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "caveat": CAVEAT,
      "phases": {},
  }
  return train_step, (state, batch), todo, report


def compile_all(train_step: Any, state: Any, batch: Any, todo: list[str],
                report: dict[str, Any], progress: Any = None) -> dict[str, Any]:
  """Compiles the phases in `todo`; fills report['phases'] and report['max_peak']."""
  for name in todo:
    if progress:
      progress(f"compiling {name} ...")
    args = (state,) if name == "finish" else (state, batch)
    row = compile_phase(getattr(train_step, name), args)
    report["phases"][name] = row
    if progress:
      progress(f"  {name}: lower {row['lower_seconds']:.1f} s, compile "
               f"{row['compile_seconds']:.1f} s, est. peak {row['peak_bytes'] / MIB:.1f} MiB")
  worst = max(report["phases"], key=lambda n: report["phases"][n]["peak_bytes"])
  report["max_peak"] = {"phase": worst, "bytes": report["phases"][worst]["peak_bytes"]}
  return report


# ----------------------------------------------------------------------------- output


def format_report(report: dict[str, Any], title: str) -> str:
  """The human-readable table of a report (sizes per device)."""
  r = report
  # MiB for real configs; KiB keeps smoke-test configs from printing columns of 0.0.
  unit, scale = ("MiB", MIB) if r["max_peak"]["bytes"] >= 10 * MIB else ("KiB", 1024.0)
  _mib = lambda nbytes: f"{nbytes / scale:,.1f}"
  lines = textwrap.wrap(f"AOT memory report: {title}", width=100, subsequent_indent="    ")
  lines += [
      f"  {r['num_devices']} forced host devices, mesh 'data' = {r['mesh_devices']}; batch "
      f"{r['batch_size']} ({r['per_device_batch']} per device), image "
      f"{r['image_shape']} float32, label int32",
      f"  G {r['params']['g']:,} params, D {r['params']['d']:,} params; JAX {r['jax_version']}",
      "",
      f"State per device (replicated)       {unit}",
  ]
  labels = {"g_params": "G params", "g_ema_params": "G EMA params", "d_params": "D params",
            "g_opt_state": "G Adam state", "d_opt_state": "D Adam state",
            "buffers": "buffers (G, D)", "scalars": "scalars + rng", "total": "total"}
  for key, label in labels.items():
    lines.append(f"  {label:<24}{_mib(r['state_bytes_per_device'][key]):>14}")
  lines.append("")
  header = (f"{'phase':<8}{'lower s':>9}{'compile s':>11}{'args ' + unit:>12}"
            f"{'outputs ' + unit:>13}{'aliased ' + unit:>13}{'temp ' + unit:>12}"
            f"{'est. peak ' + unit:>15}")
  lines += [header, "-" * len(header)]
  for name, p in r["phases"].items():
    lines.append(f"{name:<8}{p['lower_seconds']:>9.1f}{p['compile_seconds']:>11.1f}"
                 f"{_mib(p['argument_bytes']):>12}{_mib(p['output_bytes']):>13}"
                 f"{_mib(p['alias_bytes']):>13}{_mib(p['temp_bytes']):>12}"
                 f"{_mib(p['peak_bytes']):>15}")
  lines.append("-" * len(header))
  worst = r["max_peak"]
  lines.append(f"max estimated peak per device: {worst['phase']} {_mib(worst['bytes'])} {unit} "
               f"= {worst['bytes'] / GIB:.2f} GiB")
  if r.get("budget_gib") is not None:
    verdict = "fits" if r["fits_budget"] else "EXCEEDS"
    lines.append(f"budget {r['budget_gib']:g} GiB per device: {verdict}")
  total_compile = sum(p["lower_seconds"] + p["compile_seconds"] for p in r["phases"].values())
  lines += [
      f"lower + compile {total_compile:.1f} s; wall {r.get('wall_seconds', 0):.1f} s "
      "(since flag parsing)",
      "",
      "est. peak = args + outputs - aliased + temp (state donated: outputs alias it). Also on",
      f"the device, not counted above: {r['prefetch']} prefetched input batches "
      f"({_mib(r['prefetch_bytes_per_device'])} {unit}), sample grids and evals.",
      *textwrap.wrap("NOTE: " + CAVEAT, width=92),
  ]
  return "\n".join(lines)


def _title() -> str:
  """'path[:arg] (field=value, ...)' of the --config flag and its overrides."""
  path = config_flags.get_config_filename(FLAGS["config"])
  overrides = config_flags.get_override_values(FLAGS["config"])
  flat: list[str] = []

  def walk(prefix: str, node: Any) -> None:
    for k, v in node.items():
      if isinstance(v, dict):
        walk(f"{prefix}{k}.", v)
      else:
        flat.append(f"{prefix}{k}={v}")

  walk("", overrides)
  return path + (" (" + ", ".join(flat) + ")" if flat else "")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.perf_counter()
  console.setup(None)  # JAX/XLA INFO lines off the terminal (--verbosity=1 keeps them)
  num_devices = int(FLAGS.num_devices)
  # Before the first jax call: JAX creates its CPU client (and reads XLA_FLAGS) lazily.
  force_host_devices(num_devices)
  progress = lambda msg: print(msg, file=sys.stderr, flush=True)
  try:
    check_devices(num_devices)
    train_step, (state, batch), todo, report = prepare(FLAGS.config, num_devices, FLAGS.phases)
  except (AotError, config_lib.ConfigError, ValueError) as e:
    # Only set-up errors (config fields, mesh, batch split) are user errors; a failure while
    # compiling is a bug and keeps its traceback.
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_CONFIG
  compile_all(train_step, state, batch, todo, report, progress)
  report["config"] = _title()
  report["wall_seconds"] = round(time.perf_counter() - start, 3)
  budget = FLAGS.budget_gib
  report["budget_gib"] = budget
  worst = report["max_peak"]
  report["fits_budget"] = None if budget is None else worst["bytes"] <= budget * GIB
  print(format_report(report, report["config"]), flush=True)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      json.dump(report, f, indent=2)
  if report["fits_budget"] is False:
    print(f"error: phase {worst['phase']} needs an estimated {worst['bytes'] / GIB:.3f} GiB "
          f"per device, over --budget_gib={budget:g}", file=sys.stderr, flush=True)
    return EXIT_OVER_BUDGET
  return 0


def run() -> None:
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
