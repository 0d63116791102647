"""Shared pieces of the benchmark scripts: train phases compiled and timed one by one, XLA's
cost and memory analyses read across JAX versions, device memory statistics, and the table
of accelerator peak FLOP/s that model FLOP utilisation is measured against.

Used by benchmarks/train_step.py (CPU) and benchmarks/device_check.py (GPU/TPU, and its
--smoke run on the CPU). Every reader of a JAX analysis returns None (never raises) where
the backend or the JAX version does not provide it: JAX documents cost_analysis() and
memory_analysis() as best-effort, `cost_analysis()` returned a one-element list of dicts
before JAX 0.4.30 and a dict since, and `Device.memory_stats()` is None on the CPU.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import math
import os
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  # Scripts run as `python benchmarks/x.py` have benchmarks/ on sys.path, not the repo root.
  sys.path.insert(0, REPO)

MIB = 2.0 ** 20

# ----------------------------------------------------------------------------- XLA analyses


def flops_of(compiled: Any) -> float | None:
  """XLA's FLOP count of a compiled program (per device for an SPMD program), or None."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (unimplemented on some backends)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if math.isfinite(flops) and flops > 0 else None


def memory_of(compiled: Any) -> dict[str, int] | None:
  """The compiler's per-device buffer assignment of a compiled program, or None.

  peak_bytes = arguments + outputs - aliased (donated) + temp, as gandance_jax.train.aot
  estimates it.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(m, (list, tuple)):
    m = m[0] if m else None
  if m is None:
    return None
  try:
    row = {k: int(getattr(m, f"{k}_size_in_bytes"))
           for k in ("argument", "output", "alias", "temp")}
  except (AttributeError, TypeError):
    return None
  row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"]
  return {f"{k}_bytes": v for k, v in row.items()}


def device_memory(device: Any = None) -> dict[str, int] | None:
  """`memory_stats()` of a device (bytes_in_use, peak_bytes_in_use, bytes_limit, ...) or None
  where the backend keeps none (the CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = (device or jax.local_devices()[0]).memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats:
    return None
  return {k: int(v) for k, v in stats.items() if isinstance(v, (int, float))}


# ----------------------------------------------------------------------------- peak FLOP/s

# Dense peak TFLOP/s per chip from the vendors' data sheets (the "with sparsity" figures
# halved). 'float32' is what XLA runs for float32 convolutions and matmuls at JAX's default
# precision: TF32 tensor cores on NVIDIA Ampere and later, one bfloat16 pass on TPUs; the
# 'float32_full' entry (plain FP32 units) applies with precision='highest' (the FID
# Inception's default). Matched against `device_kind` by substring, first match wins, so
# the more specific names come first. Unknown devices: no MFU is reported.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h200 nvl", dict(bfloat16=835.5, float32=417.5, float32_full=60.0)),
    ("h200", dict(bfloat16=989.4, float32=494.7, float32_full=67.0)),      # SXM
    ("h100 pcie", dict(bfloat16=756.0, float32=378.0, float32_full=51.0)),
    ("h100 nvl", dict(bfloat16=835.5, float32=417.5, float32_full=60.0)),
    ("h100", dict(bfloat16=989.4, float32=494.7, float32_full=67.0)),      # SXM
    ("a100", dict(bfloat16=312.0, float32=156.0, float32_full=19.5)),
    ("l4", dict(bfloat16=121.0, float32=60.0, float32_full=30.3)),
    ("tpu v6 lite", dict(bfloat16=918.0, float32=918.0)),
    ("tpu v5 lite", dict(bfloat16=197.0, float32=197.0)),
    ("tpu v5", dict(bfloat16=459.0, float32=459.0)),                        # v5p
    ("tpu v4", dict(bfloat16=275.0, float32=275.0)),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak FLOP/s of one chip of `device_kind` for `dtype` ('bfloat16', 'float32',
  'float32_full'), or None for a device or dtype not in PEAK_TFLOPS."""
  kind = device_kind.lower()
  for name, peaks in PEAK_TFLOPS:
    if name in kind:
      return peaks[dtype] * 1e12 if dtype in peaks else None
  return None


def mfu(flops: float | None, seconds: float, peak: float | None) -> float | None:
  """Model FLOP utilisation: (flops / seconds) / peak, or None if either is unknown."""
  if not flops or not peak or seconds <= 0:
    return None
  return flops / seconds / peak


# ----------------------------------------------------------------------------- train phases


def load_config(path: str, arg: str = "", overrides: dict[str, Any] | None = None) -> Any:
  """`get_config(arg)` of a config file (relative to the repo root), then dotted overrides
  such as {'train.batch_size': 64}. Imports ml_collections (through the config file) but
  neither clu nor tensorflow(-datasets)."""
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  for dotted, value in (overrides or {}).items():
    *parents, key = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    if key not in node:
      raise KeyError(f"override {dotted!r}: {path} has no field {key!r} in {'.'.join(parents)}")
    node[key] = value
  return config


class TrainPhases:
  """The training loop's jitted phases for a config (train/loop.py `build`), on all local
  devices, with a random batch of the config's shape (no dataset is read).

    tp = TrainPhases(config)
    tp.compile()                    # AOT lower + compile of every phase the config runs
    times = tp.time_phases(5)       # {phase: [seconds, ...]}, interleaved
    sec = tp.time_schedule(16)      # the loop's lazy schedule, seconds for 16 steps
  """

  def __init__(self, config: Any, phases: tuple[str, ...] | None = None):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from gandance_jax import config_lib  # pylint: disable=g-import-not-at-top
    from gandance_jax.train import loop  # pylint: disable=g-import-not-at-top
    from gandance_jax.train import sharding  # pylint: disable=g-import-not-at-top

    self.config = config
    self.hp = config_lib.validate_config(config)
    self.mesh = sharding.make_mesh(config.mesh.data)
    sharding.check_batch_size(self.hp, self.mesh)
    built = loop.build(self.hp, self.mesh)
    self.train_step = built.train_step
    self.state = built.init_fn()
    b, r = int(config.train.batch_size), int(config.generator.resolution)
    c = int(config.generator.img_channels)
    rng = np.random.default_rng(0)
    self.batch = next(sharding.global_batches([
        {"image": rng.uniform(-1, 1, (b, r, r, c)).astype(np.float32),
         "label": rng.integers(0, config.generator.num_classes, b).astype(np.int32)}],
        sharding.batch_sharding(self.mesh), prefetch=1))
    self.batch_size = b
    self.num_devices = int(self.mesh.devices.size)
    # Every phase the loop runs (phases_at(0): all lazy intervals divide 0), then finish;
    # `phases` keeps a subset (smoke runs: less to compile).
    self.phases = [p for p in self.train_step.phases_at(0) + ["finish"]
                   if phases is None or p in phases]
    self.period = max(int(config.train.r1_interval), int(config.train.pl_interval))
    self.compiled: dict[str, Any] = {}
    self.compile_info: dict[str, dict[str, Any]] = {}
    jax.block_until_ready(self.state)

  def _args(self, name: str) -> tuple[Any, ...]:
    return (self.state,) if name == "finish" else (self.state, self.batch)

  def compile(self, parallel: bool = True) -> float:
    """Lowers every phase (tracing holds the GIL: one after the other) and compiles them,
    in parallel threads when `parallel` (XLA releases the GIL while compiling). Fills
    `compile_info[phase]` (lower_s, compile_s, flops, memory); returns the wall seconds."""
    t_start = time.perf_counter()
    lowered = {}
    for name in self.phases:
      t0 = time.perf_counter()
      lowered[name] = getattr(self.train_step, name).lower(*self._args(name))
      self.compile_info[name] = {"lower_s": time.perf_counter() - t0}

    def compile_one(name: str) -> tuple[str, Any, float]:
      t0 = time.perf_counter()
      c = lowered[name].compile()
      return name, c, time.perf_counter() - t0

    if parallel and len(self.phases) > 1:
      with concurrent.futures.ThreadPoolExecutor(len(self.phases)) as pool:
        results = list(pool.map(compile_one, self.phases))
    else:
      results = [compile_one(n) for n in self.phases]
    for name, c, seconds in results:
      self.compiled[name] = c
      self.compile_info[name].update(compile_s=seconds, flops=flops_of(c), memory=memory_of(c))
    return time.perf_counter() - t_start

  def run_phase(self, name: str) -> None:
    """Runs one compiled phase on the current state (donated) and waits for it."""
    import jax  # pylint: disable=g-import-not-at-top
    self.state, metrics = self.compiled[name](*self._args(name))
    jax.block_until_ready((self.state, metrics))

  def warm_up(self) -> dict[str, dict[str, int] | None]:
    """First run of each phase; returns the device's memory_stats after each (None on CPU).
    peak_bytes_in_use never resets, so each entry is the peak of this process so far."""
    mem = {}
    for name in self.phases:
      self.run_phase(name)
      mem[name] = device_memory()
    return mem

  def time_phases(self, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each phase, `repeats` rounds interleaved over the phases (so that
    load from other processes hits them alike)."""
    times: dict[str, list[float]] = {n: [] for n in self.phases}
    for _ in range(repeats):
      for name in self.phases:
        t0 = time.perf_counter()
        self.run_phase(name)
        times[name].append(time.perf_counter() - t0)
    return times

  def time_schedule(self, steps: int) -> float:
    """Seconds for `steps` training steps with the loop's lazy schedule (starting at a step
    where every lazy phase runs), dispatched back to back as loop.py does."""
    import jax  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    for i in range(steps):
      for name in self.train_step.phases_at(i) + ["finish"]:
        if name in self.compiled:   # all of them unless built with a subset of `phases`
          self.state, _ = self.compiled[name](*self._args(name))
    jax.block_until_ready(self.state)
    return time.perf_counter() - t0

  def phase_rates(self) -> dict[str, float]:
    """Calls per training step of each phase (lazy ones 1 / interval)."""
    t = self.config.train
    rate = {"g_main": 1.0, "d_main": 1.0, "finish": 1.0,
            "g_reg": 1.0 / int(t.pl_interval), "d_reg": 1.0 / int(t.r1_interval)}
    return {n: rate[n] for n in self.phases}

  def report(self, times: dict[str, list[float]], schedule_s: float | None = None,
             steps: int = 0, peak: float | None = None) -> dict[str, Any]:
    """Per-phase ms (best of the rounds), FLOPs, achieved FLOP/s and MFU (if `peak`), the
    step's amortised ms and images/s, and the schedule's measured images/s if given."""
    rates = self.phase_rates()
    phases = {}
    step_s = 0.0
    step_flops = 0.0
    for name in self.phases:
      best = min(times[name])
      info = self.compile_info.get(name, {})
      flops = info.get("flops")
      phases[name] = {
          "ms": 1e3 * best, "ms_all": [round(1e3 * t, 3) for t in times[name]],
          "calls_per_step": rates[name], "gflop": flops / 1e9 if flops else None,
          "achieved_tflop_per_s": flops / best / 1e12 if flops else None,
          "mfu": mfu(flops, best, peak),
          "lower_s": info.get("lower_s"), "compile_s": info.get("compile_s"),
          "compiler_memory": info.get("memory"),
      }
      step_s += rates[name] * best
      step_flops += rates[name] * (flops or 0.0)
    out = {
        "batch": self.batch_size, "devices": self.num_devices,
        "per_device_batch": self.batch_size // self.num_devices,
        "phases": phases,
        "step_ms_from_phases": 1e3 * step_s,
        "img_per_s_from_phases": self.batch_size / step_s,
        "step_tflop_per_s": step_flops / step_s / 1e12 if step_flops else None,
        "step_mfu": mfu(step_flops, step_s, peak),
    }
    if schedule_s is not None and steps:
      out.update(schedule_steps=steps, step_ms=1e3 * schedule_s / steps,
                 img_per_s=self.batch_size * steps / schedule_s)
    return out
