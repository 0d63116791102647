"""Per-device memory of the training phases with and without bfloat16 mixed precision,
side by side, from ahead-of-time compiles (gandance_jax/train/aot.py) on forced host devices.

  python benchmarks/mixed_precision.py                                   # imagenet64, 8 devices
  python benchmarks/mixed_precision.py --config=configs/cifar10.py --num_devices=4 --bf16_res=2

Runs `python -m gandance_jax.train.aot` twice (num_bf16_res = 0 and = --bf16_res for G and D) in
subprocesses (the device count is fixed when JAX starts) and prints, per phase, XLA's temp
bytes and estimated peak per device and their ratio bfloat16 / float32. These are XLA:CPU
buffer assignments: an estimate of what GPU/TPU compilers will do, not a measurement on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2.0 ** 20


def aot_report(config: str, num_devices: int, bf16_res: int, extra: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "report.json")
    cmd = [sys.executable, "-m", "gandance_jax.train.aot", f"--config={config}",
           f"--num_devices={num_devices}", f"--out={out}",
           f"--config.generator.num_bf16_res={bf16_res}",
           f"--config.discriminator.num_bf16_res={bf16_res}", *extra]
    print("[mixed_precision]", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
      return json.load(f)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/imagenet64.py")
  parser.add_argument("--num_devices", type=int, default=8)
  parser.add_argument("--bf16_res", type=int, default=4,
                      help="num_bf16_res of G and D in the mixed-precision compile")
  args, extra = parser.parse_known_args(argv)
  f32 = aot_report(args.config, args.num_devices, 0, extra)
  bf16 = aot_report(args.config, args.num_devices, args.bf16_res, extra)
  print(f"\n{args.config} on {args.num_devices} forced host devices, batch "
        f"{f32['batch_size']} ({f32['per_device_batch']} per device); MiB per device; "
        f"bf16 = num_bf16_res {args.bf16_res} in G and D")
  print(f"{'phase':<8} {'temp f32':>10} {'temp bf16':>10} {'ratio':>6} {'peak f32':>10} "
        f"{'peak bf16':>10} {'ratio':>6}")
  for name, a in f32["phases"].items():
    b = bf16["phases"][name]
    ratio = lambda x, y: f"{y / x:.3f}" if x else "-"
    print(f"{name:<8} {a['temp_bytes'] / MIB:>10.1f} {b['temp_bytes'] / MIB:>10.1f} "
          f"{ratio(a['temp_bytes'], b['temp_bytes']):>6} {a['peak_bytes'] / MIB:>10.1f} "
          f"{b['peak_bytes'] / MIB:>10.1f} {ratio(a['peak_bytes'], b['peak_bytes']):>6}")
  worst = lambda r: r["max_peak"]["bytes"] / MIB
  print(f"max estimated peak: {worst(f32):.1f} -> {worst(bf16):.1f} MiB "
        f"(ratio {worst(bf16) / worst(f32):.3f}); state (float32 parameters, Adam) unchanged")
  return 0


if __name__ == "__main__":
  sys.exit(main())
