"""One run of every accelerator measurement the project needs, in a fixed time budget.

  benchmarks/device_check.sh [--out=device_check.json] [--results_md=benchmarks/RESULTS.md]
  python benchmarks/device_check.py --smoke --out=/tmp/dc.json    # every path, CPU, seconds

Sections (each a key of the JSON; a failed one records its error and the others go on):
  env                     device kind and count, JAX version, backend, XLA_FLAGS
  train/<config>/<dtype>  configs/cifar10.py and configs/imagenet64.py, batch 64 per device,
                          float32 and num_bf16_res=4 (G and D): per-phase ms (best of
                          interleaved rounds after warm-up), XLA's FLOPs of each compiled phase,
                          achieved FLOP/s and MFU (over the chip's peak for the dtype, see
                          bench_lib.PEAK_TFLOPS; omitted for unknown chips), images/s of the
                          loop's lazy schedule and from the phases, compile time (all phases
                          compiled in parallel threads; per phase and wall), device memory
                          (memory_stats: peak_bytes_in_use after each phase's first run, a
                          running peak of the process) next to the GPU compiler's own estimate
                          (memory_analysis) of each phase
  aot/<config>/<dtype>    gandance_jax.train.aot's XLA:CPU estimate for the same config and
                          device count (a CPU process running beside the accelerator sections)
  sampling                64x64, 1000 classes (the ImageNet-64 generator, random weights),
                          batch 256: unguided vs training-free |C| in {10, 100, 1000} vs learned,
                          overhead next to its FLOP bound (benchmarks/sampling.py `measure`), and
                          the synthesis with fused vs non-fused modulated convolution
  fid                     FID Inception-v3 pool3 features of 64x64 images (resized to 299)
                          per second, with random weights of the real shapes unless
                          --inception_weights names the pytorch-fid file

Every group of sections runs in its own worker process (a fresh device memory peak, and a
hung or crashed group is killed without losing the others), in priority order; a group whose
minimum time no longer fits the --budget_s (default 420 s, so that the whole script ends
within 8 minutes) is skipped and says so. The driver itself never initialises a JAX backend
(it would hold the accelerator's memory). Each worker appends one JSON line per finished
section, so a killed worker keeps what it finished.

--smoke: the same driver and sections on the CPU with tiny shapes, all in one worker (the
test tests/test_device_check.py runs it). Results are appended to --results_md only when
given (the script's default for a real run: benchmarks/RESULTS.md).

Needs jax, flax, optax, orbax, numpy, scipy, absl and ml_collections (the configs); not clu,
tensorflow or tensorflow-datasets. See device_check.sh for installing ml_collections from
wheels on a machine without network.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = bench_lib.REPO
MIB = bench_lib.MIB

CONFIGS = {"cifar10": "configs/cifar10.py", "imagenet64": "configs/imagenet64.py"}
DTYPES = {"f32": 0, "bf16": 4}   # name -> num_bf16_res of G and D
PER_DEVICE_BATCH = 64
SAMPLING_BATCH = 256
FID_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Settings:
  """Shapes and repeat counts of a run; SMOKE shrinks everything for the CPU."""
  smoke: bool = False
  per_device_batch: int = PER_DEVICE_BATCH
  phase_repeats: int = 5            # timed rounds of each train phase
  sampling_batch: int = SAMPLING_BATCH
  sampling_rounds: int = 3
  fid_batch: int = FID_BATCH
  fid_size: int = 64
  fid_repeats: int = 5
  parallel_compile: bool = True
  inception_weights: str = ""
  train_phases: tuple[str, ...] | None = None    # None: every phase the config runs
  sampling_modes: tuple[str, ...] | None = None  # None: all of sampling.MODES


# CPU time, not shapes, is what the smoke run must save: XLA:CPU compiles of the train phases
# take 5-15 s of CPU each even at 8x8, so it compiles the cheapest phase (finish) only, and
# two sampler modes (the baseline and training-free); every code path of the script runs.
SMOKE = Settings(smoke=True, per_device_batch=4, phase_repeats=1, sampling_batch=4,
                 sampling_rounds=1, fid_batch=1, fid_size=16, fid_repeats=1,
                 train_phases=("finish",),
                 sampling_modes=("unguided", "training-free |C|=10"))


def train_config(name: str, dtype: str, s: Settings, num_devices: int) -> Any:
  """The config of a train/aot section: the config file at batch `per_device_batch` per
  device (smoke: its :shrink variant at 8x8, 2 mapping layers)."""
  overrides = {"train.batch_size": s.per_device_batch * num_devices,
               "generator.num_bf16_res": DTYPES[dtype],
               "discriminator.num_bf16_res": DTYPES[dtype]}
  if s.smoke:
    overrides.update({"data.resolution": 8, "discriminator.mbstd_group_size": 4,
                      "generator.mapping_layers": 2, "discriminator.mapping_layers": 2})
  return bench_lib.load_config(CONFIGS[name], "shrink" if s.smoke else "", overrides)


# ----------------------------------------------------------------------------- sections
# Each takes (settings, section name) and returns a JSON-able dict. They run in a worker.


def section_env(s: Settings, name: str) -> dict[str, Any]:
  del s, name
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return {"device_kind": d.device_kind, "platform": d.platform,
          "backend": jax.default_backend(), "device_count": jax.device_count(),
          "process_count": jax.process_count(), "jax": jax.__version__,
          "jaxlib": getattr(jaxlib, "__version__", "?"), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0],
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "memory_stats": bench_lib.device_memory(d),
          "peak_tflops": {dt: (bench_lib.peak_flops(d.device_kind, dt) or 0) / 1e12 or None
                          for dt in ("float32", "float32_full", "bfloat16")}}


def section_train(s: Settings, name: str) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  _, config_name, dtype = name.split("/")
  kind = jax.devices()[0].device_kind
  peak = bench_lib.peak_flops(kind, "bfloat16" if DTYPES[dtype] else "float32")
  mem_start = bench_lib.device_memory()
  tp = bench_lib.TrainPhases(train_config(config_name, dtype, s, jax.device_count()),
                             s.train_phases)
  mem_state = bench_lib.device_memory()
  compile_wall = tp.compile(parallel=s.parallel_compile)
  mem_after = tp.warm_up()
  times = tp.time_phases(s.phase_repeats)
  schedule_s = tp.time_schedule(tp.period)
  out = tp.report(times, schedule_s, tp.period, peak=peak)
  out.update(config=CONFIGS[config_name], dtype=dtype, num_bf16_res=DTYPES[dtype],
             compile_wall_s=compile_wall, peak_flops=peak, device_kind=kind,
             memory_stats_start=mem_start, memory_stats_after_init=mem_state,
             params={"g": _count(tp.state.g_params), "d": _count(tp.state.d_params)})
  for phase, mem in mem_after.items():
    out["phases"][phase]["peak_bytes_in_use_so_far"] = (mem or {}).get("peak_bytes_in_use")
  return out


def _count(tree: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def section_aot(s: Settings, name: str) -> dict[str, Any]:
  """XLA:CPU's per-device estimate (gandance_jax.train.aot) for a train section's config.
  Runs in a worker whose JAX sees as many forced host devices as the accelerator has."""
  from gandance_jax.train import aot  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  _, config_name, dtype = name.split("/")
  n = jax.device_count()
  aot.check_devices(n)
  config = train_config(config_name, dtype, s, n)
  # The smoke run compiles the smallest phase only: the same code path, little CPU time.
  train_step, (state, batch), todo, report = aot.prepare(config, n,
                                                        ["finish"] if s.smoke else None)
  aot.compile_all(train_step, state, batch, todo, report)
  report["phases_peak_bytes"] = {p: r["peak_bytes"] for p, r in report["phases"].items()}
  return report


def section_sampling(s: Settings, name: str) -> dict[str, Any]:
  del name
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import sampling  # pylint: disable=g-import-not-at-top  (benchmarks/sampling.py)
  from gandance_jax.networks import stylegan2  # pylint: disable=g-import-not-at-top

  spec = dict(sampling.IMAGENET64)
  if s.smoke:
    spec.update(resolution=4, channel_base=64, channel_max=8, z_dim=16, w_dim=16,
                mapping_layers=2)
  G = stylegan2.Generator(**spec)
  v = stylegan2.init_generator(G, jax.random.key(0))
  modes = [m for m in sampling.MODES if s.sampling_modes is None or m[0] in s.sampling_modes]
  out = sampling.measure(G, v, s.sampling_batch, s.sampling_rounds, modes,
                         program_flops=not s.smoke)
  out.update(generator=spec, batch=s.sampling_batch,
             params=_count(v["params"]))

  # The synthesis alone with both forms of the modulated convolution (issue 16.2).
  ws = jax.random.normal(jax.random.key(1), (s.sampling_batch, G.num_ws, G.w_dim))
  fns, times = {}, {}
  for fused in (False, True):
    f = jax.jit(lambda v_, ws_, fused=fused: G.apply(v_, ws_, noise_mode="const",
                                                      fused_modconv=fused, method=G.synthesis))
    fns[fused] = f.lower(v, ws).compile()
    jax.block_until_ready(fns[fused](v, ws))
    times[fused] = []
  for _ in range(s.sampling_rounds):
    for fused in fns:
      t0 = time.perf_counter()
      jax.block_until_ready(fns[fused](v, ws))
      times[fused].append(time.perf_counter() - t0)
  diff = float(jnp.max(jnp.abs(fns[True](v, ws) - fns[False](v, ws))))
  out["fused_modconv"] = {
      "nonfused_ms": 1e3 * min(times[False]), "fused_ms": 1e3 * min(times[True]),
      "fused_over_nonfused": min(times[True]) / min(times[False]), "max_abs_diff": diff,
      "gflop_nonfused": (bench_lib.flops_of(fns[False]) or 0) / 1e9,
      "gflop_fused": (bench_lib.flops_of(fns[True]) or 0) / 1e9}
  return out


def random_inception_variables(seed: int = 0) -> Any:
  """Random variables of the FID Inception's exact shapes (BN folded into the convolutions,
  as inception.from_pytorch_fid_state_dict gives them), He-scaled so activations stay O(1).
  (Not inception.random_state_dict + conversion: that goes through float64 state-dict
  checks, seconds of CPU that a smoke run cannot spend.)"""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gandance_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
  size = inception.INPUT_SIZE
  shapes = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if len(leaf.shape) > 1:  # conv HWIO / dense kernels
      scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    else:
      scale = 0.1
    return jnp.asarray(rng.standard_normal(leaf.shape, dtype=np.float32) * scale)

  return jax.tree.map(fill, shapes)


def section_fid(s: Settings, name: str) -> dict[str, Any]:
  del name
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gandance_jax.evaluation import inception, weights  # pylint: disable=g-import-not-at-top
  if s.inception_weights:
    variables = inception.from_pytorch_fid_state_dict(
        weights.load_state_dict(s.inception_weights))
    source = s.inception_weights
  else:
    variables = random_inception_variables(0)
    source = "random (real shapes)"
  precision = "highest"   # the extractor's default: full float32, no TF32
  ext = inception.make_extractor(variables, precision=precision)
  images = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (s.fid_batch, s.fid_size, s.fid_size, 3)).astype(np.float32))
  t0 = time.perf_counter()
  compiled = ext.jitted_apply.lower(ext.params, images).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(ext.params, images))
  times = []
  for _ in range(s.fid_repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(ext.params, images))
    times.append(time.perf_counter() - t0)
  best = min(times)
  flops = bench_lib.flops_of(compiled)
  kind = jax.devices()[0].device_kind
  peak = bench_lib.peak_flops(kind, "float32_full")
  return {"weights": source, "batch": s.fid_batch, "image_size": s.fid_size,
          "precision": precision, "img_per_s": s.fid_batch / best, "ms": 1e3 * best,
          "ms_all": [round(1e3 * t, 3) for t in times], "compile_s": compile_s,
          "gflop_per_image": flops / s.fid_batch / 1e9 if flops else None,
          "achieved_tflop_per_s": flops / best / 1e12 if flops else None,
          "mfu": bench_lib.mfu(flops, best, peak), "peak_flops": peak,
          "compiler_memory": bench_lib.memory_of(compiled),
          "peak_bytes_in_use": (bench_lib.device_memory() or {}).get("peak_bytes_in_use")}


SECTIONS: dict[str, Callable[[Settings, str], dict[str, Any]]] = {
    "env": section_env, "train": section_train, "aot": section_aot,
    "sampling": section_sampling, "fid": section_fid}


def run_worker(names: list[str], s: Settings, results_path: str) -> None:
  """Runs sections one after the other; appends one JSON line per section to results_path
  ({'section', 'seconds', 'result'} or {'section', 'seconds', 'error', 'traceback'})."""
  for name in names:
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
      rec = {"result": SECTIONS[name.split("/")[0]](s, name)}
    except Exception as e:  # pylint: disable=broad-except  (one failure must not lose the rest)
      rec = {"error": f"{type(e).__name__}: {str(e)[:2000]}",
             "traceback": traceback.format_exc()[-4000:]}
    # CPU seconds too: on a shared machine they say more than wall time about the cost.
    rec.update(section=name, seconds=round(time.perf_counter() - t0, 3),
               cpu_seconds=round(time.process_time() - cpu0, 3))
    with open(results_path, "a") as f:
      f.write(json.dumps(rec, default=_jsonable) + "\n")
    print(f"[device_check] {name}: {'error' if 'error' in rec else 'ok'} in "
          f"{rec['seconds']:.1f} s", file=sys.stderr, flush=True)


def _jsonable(x: Any) -> Any:
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)


# ----------------------------------------------------------------------------- driver


@dataclasses.dataclass(frozen=True)
class Group:
  """Sections run by one worker process."""
  sections: tuple[str, ...]
  min_s: float          # skipped when less than this is left of the budget
  cap_s: float          # killed after this long (or when the budget ends)
  cpu_devices: int = 0  # > 0: a CPU worker with this many forced host devices (AOT)


def plan(s: Settings, sections: list[str], num_devices: int, budget_s: float) -> list[Group]:
  """The worker groups in priority order (the smoke run: one CPU group, every section)."""
  if s.smoke:
    return [Group(tuple(sections), 0.0, budget_s)]
  caps = {"train/imagenet64": (60, 200), "train/cifar10": (45, 150), "sampling": (45, 150),
          "fid": (30, 90), "env": (5, 60)}
  groups = []
  pending_env = ()
  for name in sections:
    if name.startswith("aot/"):
      continue
    if name == "env":   # rides with the next section: a worker start costs seconds
      pending_env = (name,)
      continue
    key = "/".join(name.split("/")[:2])
    min_s, cap_s = caps[key]
    groups.append(Group(pending_env + (name,), min_s, cap_s + 10 * len(pending_env)))
    pending_env = ()
  if pending_env:
    groups.append(Group(pending_env, *caps["env"]))
  aot = tuple(n for n in sections if n.startswith("aot/"))  # pylint: disable=redefined-outer-name
  if aot:  # Runs beside the others on the host CPU, for the whole budget.
    groups.insert(0, Group(aot, 0.0, budget_s, cpu_devices=num_devices))
  return groups


def default_sections(smoke: bool) -> list[str]:
  """Priority order: what matters most runs first, so a short budget keeps it."""
  train = ["train/imagenet64/f32", "train/cifar10/f32", "train/imagenet64/bf16",
           "train/cifar10/bf16"]
  if smoke:  # One: the others differ only in the config's numbers.
    train = ["train/imagenet64/f32"]
  aot = ["aot/" + t.split("/", 1)[1] for t in train]
  if smoke:
    aot = aot[:1]
  return ["env", train[0], "sampling", *train[1:2], "fid", *train[2:], *aot]


def _force_host_devices(env: dict[str, str], num_devices: int) -> None:
  """What gandance_jax.train.aot.force_host_devices sets, without importing the library
  here: the driver must not risk starting a JAX backend (it would hold the accelerator)."""
  flag = "--xla_force_host_platform_device_count"
  kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(flag)]
  env["XLA_FLAGS"] = " ".join(kept + [f"{flag}={num_devices}"])
  env["JAX_PLATFORMS"] = "cpu"


def _worker_env(group: Group) -> dict[str, str]:
  env = dict(os.environ)
  if group.cpu_devices:
    _force_host_devices(env, group.cpu_devices)
  return env


def _launch(group: Group, s: Settings, results: str, log: str) -> subprocess.Popen:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker",
         f"--sections={','.join(group.sections)}", f"--results={results}"]
  if s.smoke:
    cmd.append("--smoke")
  if not s.parallel_compile:
    cmd.append("--serial_compile")
  if s.inception_weights:
    cmd.append(f"--inception_weights={s.inception_weights}")
  with open(log, "a") as f:
    return subprocess.Popen(cmd, cwd=REPO, env=_worker_env(group), stdout=f, stderr=f,
                            start_new_session=True)


def _wait(proc: subprocess.Popen, timeout: float) -> str | None:
  """Waits; kills the worker's process group on timeout. Returns why it stopped early."""
  try:
    rc = proc.wait(timeout=max(timeout, 0.1))
    return None if rc == 0 else f"worker exited with code {rc}"
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return f"killed after {timeout:.0f} s (time budget)"


def _tail(path: str, n: int = 3000) -> str:
  try:
    with open(path, errors="replace") as f:
      return f.read()[-n:]
  except OSError:
    return ""


def run_driver(s: Settings, sections: list[str], budget_s: float, num_devices: int,
               progress: Callable[[str], None]) -> dict[str, Any]:
  """Runs the groups of `plan` within budget_s; returns {section: record} for every section."""
  start = time.perf_counter()
  deadline = start + budget_s
  groups = plan(s, sections, num_devices, budget_s)
  records: dict[str, dict[str, Any]] = {}
  with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
    background = []   # (group, proc, results, log)

    def collect(group: Group, results: str, log: str, why: str | None) -> None:
      done = {}
      if os.path.exists(results):
        with open(results) as f:
          for line in f:
            rec = json.loads(line)
            done[rec.pop("section")] = rec
      for name in group.sections:
        records[name] = done.get(name) or {
            "error": f"not finished: {why or 'worker ended without a result'}",
            "log_tail": _tail(log)}

    for i, group in enumerate(groups):
      results, log = os.path.join(tmp, f"g{i}.jsonl"), os.path.join(tmp, f"g{i}.log")
      left = deadline - time.perf_counter()
      if left < group.min_s:
        for name in group.sections:
          records[name] = {"skipped": f"time budget: {left:.0f} s left of {budget_s:.0f} s, "
                                      f"this group needs at least {group.min_s:.0f} s"}
        progress(f"skipped {', '.join(group.sections)} ({left:.0f} s left)")
        continue
      progress(f"running {', '.join(group.sections)} (up to {min(group.cap_s, left):.0f} s)")
      proc = _launch(group, s, results, log)
      if group.cpu_devices:
        background.append((group, proc, results, log))
        continue
      why = _wait(proc, min(group.cap_s, left))
      collect(group, results, log, why)
    for group, proc, results, log in background:
      why = _wait(proc, deadline - time.perf_counter())
      collect(group, results, log, why)
  return records


# ----------------------------------------------------------------------------- output


def assemble(records: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
  """The JSON: {'meta', 'env', 'train': {cfg/dtype: ...}, 'aot': {...}, 'sampling', 'fid'}.
  A section's value is its result, or {'error': ...} / {'skipped': ...}."""
  out: dict[str, Any] = {"meta": meta, "train": {}, "aot": {}}
  for name, rec in records.items():
    value = rec["result"] if "result" in rec else rec
    if "result" in rec:
      value["section_seconds"] = rec.get("seconds")
      value["section_cpu_seconds"] = rec.get("cpu_seconds")
    kind, _, rest = name.partition("/")
    if rest:
      out[kind][rest] = value
    else:
      out[kind] = value
  return out


def _fmt(x: Any, spec: str = ".1f", scale: float = 1.0) -> str:
  return "-" if x is None else format(x * scale, spec)


def _status(value: dict[str, Any]) -> str | None:
  if "error" in value:
    return "error: " + value["error"].splitlines()[0][:160]
  if "skipped" in value:
    return "skipped: " + value["skipped"]
  return None


def markdown(report: dict[str, Any]) -> str:
  """The dated table appended to RESULTS.md."""
  meta, env = report["meta"], report.get("env", {})
  device = (f"{env.get('device_kind', '?')} x{env.get('device_count', '?')}"
            if "device_kind" in env else "device unknown (env section failed)")
  lines = [f"### Device check, {meta['date']}: {device}", "",
           f"`benchmarks/device_check.sh{' --smoke' if meta['smoke'] else ''}`, JAX "
           f"{env.get('jax', '?')} ({env.get('backend', '?')}), wall {meta['wall_s']:.0f} s of "
           f"a {meta['budget_s']:.0f} s budget. Medians are not used: every time is the best of "
           "the interleaved rounds after warm-up. MFU = XLA's FLOPs of the compiled program / "
           "time / the chip's dense peak for the dtype (float32 at default precision = TF32 "
           "on NVIDIA); '-' where unknown.", ""]
  lines += ["Train step (per device batch "
            f"{meta['per_device_batch']}; img/s of the lazy schedule; compile = wall of all "
            "phases compiled in parallel threads):", "",
            "| config | dtype | img/s | step ms | g_main ms | d_main ms | d_reg ms | finish ms "
            "| TFLOP/s | MFU | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  mem_rows = []
  for key, t in report["train"].items():
    cfg, dtype = key.split("/")
    st = _status(t)
    if st:
      lines.append(f"| {cfg} | {dtype} | {st} |||||||||")
      continue
    ph = t["phases"]
    ms = lambda p: _fmt(ph[p]["ms"]) if p in ph else "-"
    lines.append(f"| {cfg} | {dtype} | {_fmt(t.get('img_per_s'))} | {_fmt(t.get('step_ms'))} "
                 f"| {ms('g_main')} | {ms('d_main')} | {ms('d_reg')} | {ms('finish')} | "
                 f"{_fmt(t['step_tflop_per_s'], '.2f')} | {_fmt(t['step_mfu'], '.3f')} | "
                 f"{_fmt(t['compile_wall_s'])} |")
    aot = report["aot"].get(key, {})
    for p, row in ph.items():
      est = (row.get("compiler_memory") or {}).get("peak_bytes")
      aot_est = (aot.get("phases_peak_bytes") or {}).get(p)
      measured = row.get("peak_bytes_in_use_so_far")
      mem_rows.append(f"| {cfg} | {dtype} | {p} | {_fmt(measured, '.0f', 1 / MIB)} "
                      f"| {_fmt(est, '.0f', 1 / MIB)} | "
                      f"{_fmt(aot_est, '.0f', 1 / MIB) if aot_est else _status(aot) or '-'} |")
  lines += ["", "Device memory per phase, MiB (measured: memory_stats peak_bytes_in_use after "
            "the phase's first run, a running peak of the section's process; compiler: the "
            "device compiler's memory_analysis; AOT: gandance_jax.train.aot on XLA:CPU):", "",
            "| config | dtype | phase | measured peak | compiler est. | AOT est. (XLA:CPU) |",
            "|---|---|---|---|---|---|", *mem_rows]
  smp = report.get("sampling")
  if smp is not None:
    lines += ["", f"Guided sampling, 64x64, 1000 classes, batch {smp.get('batch', '-')} "
              "(ratio = (1 + overhead) / (1 + FLOP bound), goal <= 1.25):", ""]
  if smp is None:
    pass   # not requested (--sections)
  elif _status(smp):
    lines.append(_status(smp))
  else:
    lines += ["| mode | img/s | overhead | FLOP bound | ratio | compile s |",
              "|---|---|---|---|---|---|"]
    for mode, m in smp["modes"].items():
      lines.append(f"| {mode} | {_fmt(m['img_per_s'])} | {m['overhead']:+.3f} | "
                   f"{m['flop_bound']:.3f} | {m['ratio']:.3f} | {_fmt(m['compile_s'])} |")
    fm = smp["fused_modconv"]
    lines += ["", f"Synthesis alone: non-fused {fm['nonfused_ms']:.2f} ms, fused "
              f"{fm['fused_ms']:.2f} ms (fused / non-fused {fm['fused_over_nonfused']:.2f}), "
              f"max |difference| {fm['max_abs_diff']:.1e}."]
  fid = report.get("fid")
  if fid is not None and _status(fid):
    lines += ["", "FID Inception features: " + _status(fid)]
  elif fid is not None:
    lines += ["", f"FID Inception features ({fid['weights']} weights, batch {fid['batch']} of "
                 f"{fid['image_size']}x{fid['image_size']} -> 299, precision "
                 f"{fid['precision']}): {fid['img_per_s']:.1f} img/s, "
                 f"{_fmt(fid['achieved_tflop_per_s'], '.2f')} TFLOP/s, MFU "
                 f"{_fmt(fid['mfu'], '.3f')} (full-float32 peak)."]
  problems = [f"- {k}: {_status(v)}" for k, v in _flat(report) if _status(v)]
  if problems:
    lines += ["", "Not measured:", *problems]
  return "\n".join(lines) + "\n"


def _flat(report: dict[str, Any]):
  for kind in ("env", "sampling", "fid"):
    if kind in report:
      yield kind, report[kind]
  for kind in ("train", "aot"):
    for key, v in report[kind].items():
      yield f"{kind}/{key}", v


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="every path on the CPU, tiny shapes")
  p.add_argument("--out", default="device_check.json", help="the JSON report")
  p.add_argument("--results_md", default="", help="append the dated table to this file "
                 "(device_check.sh passes benchmarks/RESULTS.md)")
  p.add_argument("--budget_s", type=float, default=None,
                 help="time budget of all sections (default 420; smoke 150)")
  p.add_argument("--sections", default="", help="comma-separated subset, e.g. "
                 "env,train/cifar10/f32,sampling (default: all, in priority order)")
  p.add_argument("--inception_weights", default="", help="pytorch-fid .pth or .npz (default: "
                 "random weights of the same shapes)")
  p.add_argument("--serial_compile", action="store_true", help="compile train phases one by "
                 "one (default: in parallel threads)")
  p.add_argument("--num_devices", type=int, default=0, help="accelerators of this host, for "
                 "the AOT sections (default: nvidia-smi's count, else 1)")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--results", default="", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  s = dataclasses.replace(SMOKE if a.smoke else Settings(),
                          parallel_compile=not a.serial_compile,
                          inception_weights=a.inception_weights)
  sections = [x for x in a.sections.split(",") if x] or default_sections(a.smoke)
  for name in sections:
    if name.split("/")[0] not in SECTIONS or (name.startswith(("train/", "aot/")) and (
        len(name.split("/")) != 3 or name.split("/")[1] not in CONFIGS
        or name.split("/")[2] not in DTYPES)):
      raise SystemExit(f"--sections: unknown section {name!r}; expected env, sampling, fid, "
                       f"train/<{'|'.join(CONFIGS)}>/<{'|'.join(DTYPES)}> or aot/<...>/<...>")
  if a.worker:
    run_worker(sections, s, a.results)
    return 0
  if s.smoke:
    _force_host_devices(os.environ, 1)   # the workers inherit it
  budget = a.budget_s if a.budget_s is not None else (150.0 if a.smoke else 420.0)
  num_devices = 1 if s.smoke else (a.num_devices or _count_gpus())
  progress = lambda msg: print(f"[device_check] {msg}", file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  records = run_driver(s, sections, budget, num_devices, progress)
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "smoke": s.smoke, "budget_s": budget, "wall_s": time.perf_counter() - t0,
          "per_device_batch": s.per_device_batch, "sections": sections,
          "settings": dataclasses.asdict(s), "argv": sys.argv[1:] if argv is None else argv}
  report = assemble(records, meta)
  report["markdown"] = markdown(report)
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(report, f, indent=1, default=_jsonable)
  if a.results_md:
    with open(a.results_md, "a") as f:
      f.write("\n" + report["markdown"])
  print(report["markdown"])
  progress(f"wrote {a.out}" + (f", appended to {a.results_md}" if a.results_md else ""))
  return 0


def _count_gpus() -> int:
  """Accelerators on this host without starting JAX (which would hold their memory)."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible:
    return len([d for d in visible.split(",") if d.strip()])
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20,
                         check=False)
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return n or 1
  except (OSError, subprocess.SubprocessError):
    return 1


if __name__ == "__main__":
  sys.exit(main())
