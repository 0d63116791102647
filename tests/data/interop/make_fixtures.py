"""Writes the torch-made fixtures of tests/test_interop.py (run with torch installed):

  python tests/data/interop/make_fixtures.py   # from the repository root

legacy.pth: torch.save(..., _use_new_zipfile_serialization=False); zip.pth: torch.save(...);
expected.npz: the same tensors as numpy arrays, keys flattened with '.', bfloat16 as float32.
"""

import os

import numpy as np
import torch


def tensors() -> dict:
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 5, generator=g)
  return {
      "f32": torch.randn(3, 4, generator=g),
      "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
      "f16": torch.randn(2, 3, generator=g).half(),
      "bf16": torch.randn(5, generator=g).bfloat16(),
      "i64": torch.arange(-3, 3, dtype=torch.int64) * (2**40),
      "i32": torch.arange(-2, 2, dtype=torch.int32),
      "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
      "u8": torch.arange(250, 256, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 3),
      # Views sharing one storage: the base, a transpose (strides (1, 5)), a step slice,
      # and a 1-D window at element offset 7.
      "base": base,
      "transposed": base.t(),
      "every_other": base[:, ::2],
      "offset": base.view(-1)[7:13],
      "sub": {"w": torch.randn(2, 2, generator=g),
              "param": torch.nn.Parameter(torch.randn(2, generator=g))},
  }


def flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flat(v, key + "."))
    else:
      v = v.detach()
      out[key] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
  return out


def main() -> None:
  here = os.path.dirname(os.path.abspath(__file__))
  t = tensors()
  torch.save(t, os.path.join(here, "legacy.pth"), _use_new_zipfile_serialization=False)
  torch.save(t, os.path.join(here, "zip.pth"))
  np.savez(os.path.join(here, "expected.npz"), **flat(t))


if __name__ == "__main__":
  main()
