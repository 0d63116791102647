"""FID feature-extraction throughput: this package's Flax Inception vs pytorch-fid.

Both run the FID Inception-v3 with the same random weights (built in the pytorch-fid
`pt_inception-2015-12-05` layout, loaded through `inception.from_pytorch_fid_state_dict`) on
the same images (default: batches of 16 images of 64x64, resized to 299 inside each model),
after a warm-up (compile) call, and report images/s and their ratio. pytorch-fid and torch are
not dependencies: without them the comparison is skipped with a note.

  python benchmarks/fid.py [--batch 16] [--size 64] [--iters 5] [--convention pytorch_fid]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from gandance_jax.evaluation import inception  # pylint: disable=wrong-import-position


def _time(fn, iters: int) -> float:
  """Median seconds per call over `iters` calls (after the caller's warm-up)."""
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def jax_runner(variables, images: np.ndarray, convention: str, precision: str):
  """(run, features): a warmed-up jitted call of the extractor on `images`."""
  ext = inception.make_extractor(variables, convention=convention, precision=precision)
  x = jnp.asarray(images)
  run = lambda: jax.block_until_ready(ext.jitted_apply(ext.params, x))
  t0 = time.perf_counter()
  feats = np.asarray(run()[0])
  print(f"  jax warm-up (compile + first call): {time.perf_counter() - t0:.2f} s")
  return run, feats


def torch_runner(state: dict[str, np.ndarray], images: np.ndarray):
  """(run, features) for pytorch-fid's InceptionV3 with the same weights, or None."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except  (ImportError, or a broken torchvision)
    print(f"  note: pytorch-fid comparison skipped (torch/pytorch-fid not importable: "
          f"{type(e).__name__}: {str(e)[:120]})")
    return None
  torch_state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
  # fid_inception_v3() downloads the weights; hand it ours instead (same layout).
  pf.load_state_dict_from_url = lambda *a, **k: torch_state
  model = pf.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = model.to(device)
  x = torch.from_numpy(((images + 1.0) / 2.0).transpose(0, 3, 1, 2).copy()).to(device)

  def run():
    with torch.no_grad():
      out = model(x)[0]
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  t0 = time.perf_counter()
  feats = run().reshape(x.shape[0], -1).cpu().numpy()
  print(f"  torch warm-up: {time.perf_counter() - t0:.2f} s  (torch {torch.__version__}, "
        f"{device}, {torch.get_num_threads()} threads)")
  return run, feats


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--convention", default="pytorch_fid", choices=("pytorch_fid", "tf1"))
  p.add_argument("--precision", default="highest",
                 help="conv precision for jax ('highest' = float32; 'default' allows TF32)")
  args = p.parse_args(argv)

  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
        f"({jax.default_backend()}), jax {jax.__version__}, cpus {os.cpu_count()}")
  print(f"images: {args.batch} x {args.size}x{args.size}x3 -> 299x299, "
        f"convention {args.convention}, {args.iters} timed calls (median)")
  state = inception.random_state_dict(0)
  variables = inception.from_pytorch_fid_state_dict(state)
  images = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3))
  images = images.astype(np.float32)

  run_jax, f_jax = jax_runner(variables, images, args.convention, args.precision)
  res = torch_runner(state, images)
  if res is None:
    t_jax = _time(run_jax, args.iters)
  else:
    run_torch, f_torch = res
    # Interleaved, so both see the same machine load.
    t_jax, t_torch = [], []
    for _ in range(args.iters):
      t_jax.append(_time(run_jax, 1))
      t_torch.append(_time(run_torch, 1))
    t_jax, t_torch = float(np.median(t_jax)), float(np.median(t_torch))
  ips_jax = args.batch / t_jax
  print(f"jax   (Flax FIDInceptionV3, NHWC, BN folded): {ips_jax:8.1f} images/s "
        f"({t_jax * 1e3:.0f} ms / batch)")
  if res is None:
    return
  ips_torch = args.batch / t_torch
  print(f"torch (pytorch-fid InceptionV3):               {ips_torch:8.1f} images/s "
        f"({t_torch * 1e3:.0f} ms / batch)")
  print(f"ratio jax / pytorch-fid: {ips_jax / ips_torch:.2f}x")
  if args.convention == "pytorch_fid":
    err = np.abs(f_jax - f_torch).max() / np.abs(f_torch).max()
    print(f"pool3 max relative difference vs pytorch-fid (same weights, same images): {err:.2e}")


if __name__ == "__main__":
  main()
