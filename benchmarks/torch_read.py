"""Reading a ~100 MB PyTorch .pth without torch vs `np.load` of the same arrays from an .npz.

Writes one state dict of float32 tensors (StyleGAN2-like shapes, `--mb` MB in all) twice: as a
torch zip-format file (`gandance_jax.interop.write_torch_file`, the layout `torch.save` writes;
with `--legacy` and torch installed also torch's legacy format) and as an uncompressed .npz.
Then, in one run:

* time: `interop.read_torch_state_dict(pth)` vs `{k: npz[k]}` (every array read), the files
  in the page cache (one untimed read each first), median of `--iters` interleaved reads;
* memory: each read in a fresh subprocess, peak RSS (VmHWM) after the read minus the RSS
  before it, divided by the tensors' bytes (1.0 = nothing but the arrays themselves).

  python benchmarks/torch_read.py [--mb 100] [--iters 5] [--legacy]

The reader needs numpy only, so a Python with torch (and numpy) but without the rest of this
project's dependencies can run it with `--legacy`, adding a `torch.load` line for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from gandance_jax import interop  # pylint: disable=wrong-import-position

_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
import numpy as np
from gandance_jax import interop
def status_kib(field):  # VmRSS now / VmHWM peak; not ru_maxrss, which survives exec on Linux
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))
before = status_kib("VmRSS")
if sys.argv[1] == "pth":
  arrays = interop.read_torch_state_dict(sys.argv[2])
else:
  with np.load(sys.argv[2]) as f:
    arrays = {k: f[k] for k in f.files}
print(json.dumps({"peak_minus_before": (status_kib("VmHWM") - before) * 1024,
                  "bytes": sum(a.nbytes for a in arrays.values())}))
"""


def make_state(total_mb: float, seed: int = 0) -> dict[str, np.ndarray]:
  """Float32 tensors shaped like a StyleGAN2 generator's (conv [O, I, 3, 3], affine, bias),
  enough 512-channel blocks to reach `total_mb`."""
  rng = np.random.default_rng(seed)
  state, total, i = {}, 0, 0
  while total < total_mb * 1e6:
    for name, shape in ((f"b{i}.conv.weight", (512, 512, 3, 3)),
                        (f"b{i}.conv.affine.weight", (512, 512)),
                        (f"b{i}.conv.affine.bias", (512,)), (f"b{i}.conv.bias", (512,)),
                        (f"b{i}.conv.noise_strength", ())):
      state[name] = rng.standard_normal(shape, dtype=np.float32)
      total += state[name].nbytes
    i += 1
  return state


def _median_time(fn, iters: int) -> list[float]:
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _memory(kind: str, path: str) -> float:
  out = subprocess.run([sys.executable, "-c", _CHILD, kind, path, REPO], check=True,
                       capture_output=True, text=True).stdout
  r = json.loads(out)
  return r["peak_minus_before"] / r["bytes"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mb", type=float, default=100.0)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--legacy", action="store_true",
                      help="also torch's legacy format (needs torch to write it)")
  args = parser.parse_args()
  state = make_state(args.mb)
  nbytes = sum(a.nbytes for a in state.values())
  with tempfile.TemporaryDirectory() as tmp:
    files = {"pth (zip)": os.path.join(tmp, "w.pth")}
    interop.write_torch_file(files["pth (zip)"], state)
    npz = os.path.join(tmp, "w.npz")
    np.savez(npz, **state)
    if args.legacy:
      import torch  # pylint: disable=g-import-not-at-top
      files["pth (legacy)"] = os.path.join(tmp, "legacy.pth")
      torch.save({k: torch.from_numpy(v) for k, v in state.items()}, files["pth (legacy)"],
                 _use_new_zipfile_serialization=False)
    for path in (*files.values(), npz):  # warm the page cache
      with open(path, "rb") as f:
        while f.read(1 << 24):
          pass
    got = interop.read_torch_state_dict(files["pth (zip)"])
    assert all(np.array_equal(got[k], v) for k, v in state.items())
    del got
    torch = None
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      pass
    times = {name: [] for name in (*files, "npz")}
    if torch is not None:
      times["torch.load"] = []
    for _ in range(args.iters):  # interleaved, so load changes hit all alike
      for name, path in files.items():
        times[name] += _median_time(lambda p=path: interop.read_torch_state_dict(p), 1)
      times["npz"] += _median_time(lambda: _read_npz(npz), 1)
      if torch is not None:
        times["torch.load"] += _median_time(
            lambda: torch.load(files["pth (zip)"], weights_only=True), 1)
    med = {k: float(np.median(v)) for k, v in times.items()}
    mem = {name: _memory("pth", path) for name, path in files.items()}
    mem["npz"] = _memory("npz", npz)
  print(f"{len(state)} float32 tensors, {nbytes / 1e6:.1f} MB; median of {args.iters} reads, "
        f"page cache warm; load average {os.getloadavg()[0]:.2f}")
  print("| reader | time | ratio to np.load | peak RSS increase / tensor bytes |")
  print("|---|---|---|---|")
  for name in med:
    label = {"npz": "np.load(.npz)", "torch.load": "torch.load(pth (zip), weights_only=True)"
             }.get(name, f"read_torch_state_dict, {name}")
    print(f"| {label} | {med[name] * 1e3:.0f} ms | {med[name] / med['npz']:.2f} | "
          f"{f'{mem[name]:.2f}' if name in mem else '-'} |")


if __name__ == "__main__":
  main()
