"""Images/s of the full train step (all phases, lazy ones at their average rate) and where
the time goes (per-phase ms, XLA's FLOP count of each compiled phase and the achieved FLOP/s)
on this machine, for the digits and CIFAR-10 configs, on 1 device and on N devices.

  python benchmarks/train_step.py                      # digits + cifar, 1 vs 4 devices
  python benchmarks/train_step.py --configs=digits --devices=1,2 --steps=32
  python benchmarks/train_step.py --configs=cifar10 --devices=1 --steps=16 --repeats=2

Per phase (g_main, d_main, d_reg, finish; g_reg when pl_weight > 0): the best of --repeats
interleaved calls of the compiled phase alone, its FLOPs (cost analysis, per device) and
FLOP/s; "step from phases" weights the lazy phases by 1 / interval. A regression shows as a
ratio between phases (or against the FLOP count) within one run, which a loaded machine
leaves intact better than absolute times. The same code (benchmarks/bench_lib.py) times the
phases on accelerators in benchmarks/device_check.py.

Each measurement runs in its own subprocess, because the number of (forced) CPU devices is
fixed when JAX starts (`XLA_FLAGS=--xla_force_host_platform_device_count=N`). Batches are
random arrays of the right shape (no dataset download); the state is replicated and the
batch split over the 'data' mesh axis exactly as in training. On a CPU the forced devices
share the same cores, so the N-device ratio shows the partitioning overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config file, config arg, overrides, description)
CONFIGS = {
    "digits": ("configs/digits.py", "", {}, "configs/digits.py as trained by the main job"),
    # CIFAR shape (32x32x3, 10 + empty classes, skip G / resnet D, mbstd 4) with the
    # `:shrink` widths so that a CPU finishes; batch 32.
    "cifar": ("configs/cifar10.py", "shrink", {"train.batch_size": 32},
              "configs/cifar10.py:shrink widths (32 ch), 32x32x3, batch 32"),
    # configs/cifar10.py itself (512 channels at every resolution) at a batch a CPU can run.
    "cifar10": ("configs/cifar10.py", "", {"train.batch_size": 4,
                                           "discriminator.mbstd_group_size": 4},
                "configs/cifar10.py (512 ch), 32x32x3, batch 4"),
    # BigGAN (train/step_biggan.py): 4 D steps of 16 + a G step per step of 64 images.
    "biggan_digits": ("configs/biggan_digits.py", "", {},
                      "configs/biggan_digits.py (BigGAN ch 8, 32x32x1, batch 64 = 4 D x 16)"),
}


def _worker(name: str, steps: int, repeats: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, REPO)
  import bench_lib  # pylint: disable=g-import-not-at-top

  path, arg, overrides, _ = CONFIGS[name]
  tp = bench_lib.TrainPhases(bench_lib.load_config(path, arg, overrides))
  steps = -(-steps // tp.period) * tp.period  # whole periods: lazy phases at their rate
  # Compile every phase ahead of time, then one warm-up run of each, then `repeats` rounds of
  # each phase alone (per-phase ms, achieved FLOP/s from XLA's cost analysis) and `steps`
  # steps of the loop's lazy schedule (images/s end to end).
  compile_s = tp.compile(parallel=False)
  tp.warm_up()
  times = tp.time_phases(repeats)
  schedule_s = tp.time_schedule(steps)
  rec = tp.report(times, schedule_s, steps)
  rec.update(config=name, steps=steps, sec_per_step=schedule_s / steps,
             images_per_sec=rec["img_per_s"], compile_s=compile_s,
             devices=jax.device_count())
  print(json.dumps(rec))


def _measure(name: str, devices: int, steps: int, repeats: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name,
                        f"--steps={steps}", f"--repeats={repeats}"], env=env, cwd=REPO,
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{name} on {devices} devices failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _print_phases(res: dict) -> None:
  print(f"    {'phase':<8} {'calls/step':>10} {'ms':>9} {'GFLOP':>9} {'GFLOP/s':>9} "
        f"{'compile s':>9}")
  for name, p in res["phases"].items():
    gflop = f"{p['gflop']:9.2f}" if p["gflop"] else f"{'-':>9}"
    rate = (f"{p['achieved_tflop_per_s'] * 1e3:9.1f}" if p["achieved_tflop_per_s"]
            else f"{'-':>9}")
    print(f"    {name:<8} {p['calls_per_step']:>10.4g} {p['ms']:9.1f} {gflop} {rate} "
          f"{p['compile_s']:9.1f}")
  flops = res["step_tflop_per_s"]
  print(f"    step from phases: {res['step_ms_from_phases']:.1f} ms = "
        f"{res['img_per_s_from_phases']:.1f} images/s"
        + (f", {flops * 1e3:.1f} GFLOP/s achieved" if flops else ""))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="digits,cifar",
                      help=f"some of {sorted(CONFIGS)}")
  parser.add_argument("--devices", default="1,4", help="device counts; the ratio is "
                      "last / first")
  parser.add_argument("--steps", type=int, default=32, help="timed steps of the lazy "
                      "schedule after warm-up (rounded up to whole R1 periods)")
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each phase")
  parser.add_argument("--json", default="", help="write all records to this file")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(args.worker, args.steps, args.repeats)
    return
  import platform  # pylint: disable=g-import-not-at-top
  names = [n for n in args.configs.split(",") if n]
  for name in names:
    if name not in CONFIGS:
      raise SystemExit(f"--configs: unknown {name!r}, expected some of {sorted(CONFIGS)}")
  counts = [int(d) for d in args.devices.split(",")]
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores,"
        f" load average {os.getloadavg()[0]:.1f}")
  records = []
  for name in names:
    print(f"{name}: {CONFIGS[name][3]}")
    results = [_measure(name, n, args.steps, args.repeats) for n in counts]
    records += results
    for res in results:
      print(f"  {res['devices']} device(s): {res['images_per_sec']:8.1f} images/s "
            f"({res['sec_per_step'] * 1000:.0f} ms/step over {res['steps']} steps, batch "
            f"{res['batch']}, compile {res['compile_s']:.0f} s)")
      _print_phases(res)
    if len(results) > 1:
      print(f"  images/s ratio, {counts[-1]} devices / {counts[0]} device(s): "
            f"{results[-1]['images_per_sec'] / results[0]['images_per_sec']:.2f}")
  print(f"load average at the end: {os.getloadavg()[0]:.1f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(records, f, indent=1)


if __name__ == "__main__":
  main()
