"""Images/s of the full train step (all phases, lazy ones at their average rate) on this
machine, for the digits config and a CIFAR-shaped config, on 1 device and on N devices.

  python benchmarks/train_step.py                      # digits + cifar, 1 vs 4 devices
  python benchmarks/train_step.py --configs=digits --devices=1,2 --steps=32

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
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config file, config arg, overrides, description)
CONFIGS = {
    "digits": ("configs/digits.py", "", {}, "configs/digits.py as trained by the main job"),
    # CIFAR shape (32x32x3, 10 + empty classes, skip G / resnet D, mbstd 4) with the
    # `:shrink` widths so that a CPU finishes; batch 32.
    "cifar": ("configs/cifar10.py", "shrink", {"train.batch_size": 32},
              "configs/cifar10.py:shrink widths (32 ch), 32x32x3, batch 32"),
    # BigGAN (train/step_biggan.py): 4 D steps of 16 + a G step per step of 64 images.
    "biggan_digits": ("configs/biggan_digits.py", "", {},
                      "configs/biggan_digits.py (BigGAN ch 8, 32x32x1, batch 64 = 4 D x 16)"),
}


def _worker(name: str, steps: int) -> None:
  import importlib.util  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  from gandance_jax import config_lib
  from gandance_jax.train import sharding, state as state_lib, step as step_lib

  path, arg, overrides, _ = CONFIGS[name]
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  for dotted, value in overrides.items():
    section, key = dotted.split(".")
    config[section][key] = value

  hp = config_lib.validate_config(config)
  mesh = sharding.make_mesh(-1)
  G, D = state_lib.build_models(hp)
  g_tx, d_tx = state_lib.make_optimizers(hp.train)
  state = jax.jit(lambda: state_lib.init_train_state(hp, G, D, g_tx, d_tx),
                  out_shardings=sharding.replicated(mesh))()
  train_step = step_lib.make_train_step(hp.train, G, D, g_tx, d_tx, mesh)
  b, r, c = config.train.batch_size, config.data.resolution, config.generator.img_channels
  rng = np.random.default_rng(0)
  batch = next(sharding.global_batches([
      {"image": rng.uniform(-1, 1, (b, r, r, c)).astype(np.float32),
       "label": rng.integers(0, config.generator.num_classes, b).astype(np.int32)}],
      sharding.batch_sharding(mesh), prefetch=1))

  # Warm-up: one pass over the lazy schedule compiles every phase.
  t0 = time.perf_counter()
  period = (1 if hp.train.family == "biggan" else  # BigGAN: no lazy phases
            max(int(config.train.r1_interval), int(config.train.pl_interval)))
  for i in range(period):
    state, _ = train_step(state, batch, i)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(period, period + steps):
    state, _ = train_step(state, batch, i)
  jax.block_until_ready(state)
  elapsed = time.perf_counter() - t0
  print(json.dumps(dict(config=name, devices=jax.device_count(), batch=b, steps=steps,
                        sec_per_step=elapsed / steps, images_per_sec=b * steps / elapsed,
                        warmup_s=compile_s)))


def _measure(name: str, devices: int, steps: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name,
                        f"--steps={steps}"], env=env, cwd=REPO, capture_output=True,
                       text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{name} on {devices} devices failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="digits,cifar")
  parser.add_argument("--devices", default="1,4", help="device counts; the ratio is "
                      "last / first")
  parser.add_argument("--steps", type=int, default=32, help="timed steps after warm-up")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(args.worker, args.steps)
    return
  import platform  # pylint: disable=g-import-not-at-top
  counts = [int(d) for d in args.devices.split(",")]
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores,"
        f" load average {os.getloadavg()[0]:.1f}")
  for name in args.configs.split(","):
    print(f"{name}: {CONFIGS[name][3]}")
    results = [_measure(name, n, args.steps) for n in counts]
    for res in results:
      print(f"  {res['devices']} device(s): {res['images_per_sec']:8.1f} images/s "
            f"({res['sec_per_step'] * 1000:.0f} ms/step, batch {res['batch']}, warm-up "
            f"{res['warmup_s']:.0f} s)")
    if len(results) > 1:
      print(f"  images/s ratio, {counts[-1]} devices / {counts[0]} device(s): "
            f"{results[-1]['images_per_sec'] / results[0]['images_per_sec']:.2f}")


if __name__ == "__main__":
  main()
