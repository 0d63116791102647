"""Command line of gandance_jax.interop.

  python -m gandance_jax.interop export <workdir> out.pth [--checkpoint latest|best|STEP]
                                                           [--no-d]

writes the run's G_ema (and D, from the same checkpoint) as a PyTorch zip-format file
{'G_ema': state dict, 'D': state dict, 'settings': {...}} with NVIDIA stylegan2-ada-pytorch's
key names and layouts: `G.load_state_dict(torch.load('out.pth')['G_ema'])`.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from gandance_jax import checkpoint
from gandance_jax import config_lib
from gandance_jax.evaluation import features as features_lib
from gandance_jax.interop import nvidia
from gandance_jax.train import state as state_lib


def export(workdir: str, out: str, which: str = "latest", with_d: bool = True) -> str:
  """Writes `out` from the run in `workdir`; returns a one-line summary."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  G, g_vars, config, step = checkpoint.load_generator_from(workdir, which, sharding=device)
  D = d_vars = None
  note = ""
  if with_d:
    try:
      state, _ = state_lib.load_train_state(workdir, step)
      D = state_lib.build_models(config_lib.validate_config(config))[1]
      d_vars = {"params": state.d_params, "buffers": state.d_buffers}
    except FileNotFoundError as e:  # e.g. a best snapshot whose train state was rotated away
      note = f" (no D: {e})"
  obj = nvidia.export_stylegan2(out, G, g_vars, D, d_vars)
  n = sum(len(v) for k, v in obj.items() if k != "settings")
  return (f"wrote {out}: G_ema{' and D' if D is not None else ''} of step {step}, {n} tensors"
          f"{note}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gandance_jax.interop",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  e = sub.add_parser("export", help="a run's G_ema (and D) as a PyTorch .pth (NVIDIA keys)")
  e.add_argument("workdir")
  e.add_argument("out")
  e.add_argument("--checkpoint", default="latest", help="'latest', 'best' or a step number")
  e.add_argument("--no-d", action="store_true", help="write G_ema only")
  args = parser.parse_args(argv)

  def command() -> None:
    if not os.path.isdir(args.workdir):
      raise FileNotFoundError(f"{args.workdir} is not a directory (expected a run's workdir)")
    print(export(args.workdir, args.out, args.checkpoint, not args.no_d))
  return features_lib.run_cli(command)


if __name__ == "__main__":
  sys.exit(main())
