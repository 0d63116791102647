"""Reading, verifying and converting the FID Inception weights.

Where to get them: pytorch-fid's release asset
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(a PyTorch state dict of the TF `inception-2015-12-05` graph, about 91 MB).

How it is verified: as `torch.hub.download_url_to_file(..., hash_prefix=...)` does, the hex
suffix after the last '-' in the file name (`6726825d`) must be a prefix of the sha256 of the
file's bytes. `verify_sha256_prefix` checks it (and `convert` calls it).

The `.pth` is read without torch (`gandance_jax.interop`, a restricted unpickler that runs
nothing from the file). Convert it once to a plain `.npz` (numpy arrays keyed as in the state
dict), which loads faster and needs no pickle at all::

  python -m gandance_jax.evaluation.weights convert pt_inception-2015-12-05-6726825d.pth out.npz

`load_state_dict(path)` reads either format; `inception.from_pytorch_fid_state_dict` turns the
dict into Flax variables.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Mapping

import numpy as np
from gandance_jax.evaluation import features as features_lib
from gandance_jax.evaluation import inception
from gandance_jax import interop

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"

# torch.hub's HASH_REGEX: the hex digits after the last '-' before the extension.
_HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


def sha256_of_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def verify_sha256_prefix(path: str | os.PathLike, prefix: str | None = None) -> str:
  """Checks the file's sha256 starts with `prefix` (default: the filename's hash suffix).

  Returns the full sha256 hex digest. Raises ValueError on a mismatch, or when no prefix is
  given and the file name carries none (a renamed file: pass `prefix='6726825d'`).
  """
  if prefix is None:
    m = _HASH_REGEX.search(os.path.basename(os.fspath(path)))
    if not m or not m.group(1):
      raise ValueError(f"{path}: the file name has no '-<sha256 prefix>.' suffix to verify "
                       f"against; pass prefix= / --prefix (e.g. {FID_WEIGHTS_SHA256_PREFIX!r})")
    prefix = m.group(1)
  digest = sha256_of_file(path)
  if not digest.startswith(prefix.lower()):
    raise ValueError(f"{path}: sha256 {digest} does not start with {prefix!r}; the download is "
                     f"corrupt or not the FID weights ({FID_WEIGHTS_URL})")
  return digest


def load_pth_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict file into numpy arrays (no torch needed)."""
  return interop.read_torch_state_dict(path)


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
  """np.savez to a temporary file in the same folder, then rename (never a half file)."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def load_npz_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  with np.load(os.fspath(path), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict from `.npz` or `.pth`/`.pt` (neither needs torch)."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    return load_npz_state_dict(path)
  return load_pth_state_dict(path)


def state_dict_from_int8_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Dequantises an int8 weight file (`q.K` int8, `scale.K` float32 -> `K = q.K * scale.K`).

  This is the layout of the test weights in `shared/golden/fid_inception/weights_int8.npz`.
  """
  out = {}
  with np.load(os.fspath(path), allow_pickle=False) as f:
    for name in f.files:
      if name.startswith("q."):
        key = name[2:]
        if f"scale.{key}" not in f.files:
          raise ValueError(f"{path}: {name} has no matching scale.{key}")
        out[key] = f[name].astype(np.float32) * f[f"scale.{key}"].astype(np.float32)
  return out


def convert(pth_path: str | os.PathLike, npz_path: str | os.PathLike, *,
            verify: bool = True, prefix: str | None = None, check_layout: bool = True) -> str:
  """One-time `.pth` -> `.npz` conversion. Returns the sha256 of the `.pth` file.

  Args:
    pth_path: the downloaded `pt_inception-2015-12-05-6726825d.pth`.
    npz_path: where to write the numpy state dict (written atomically).
    verify: check the sha256 prefix first.
    prefix: the expected sha256 prefix; default: the file name's hash suffix.
    check_layout: check the keys/shapes are the FID Inception's (builds the Flax variables).
  """
  digest = verify_sha256_prefix(pth_path, prefix) if verify else sha256_of_file(pth_path)
  state = load_pth_state_dict(pth_path)
  state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  if check_layout:
    inception.from_pytorch_fid_state_dict(state)  # raises a ValueError naming bad keys
  save_npz_atomic(npz_path, state)
  return digest


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gandance_jax.evaluation.weights",
      description="FID Inception weights: convert pytorch-fid's .pth to .npz, or verify it. "
      f"Download: {FID_WEIGHTS_URL}")
  sub = parser.add_subparsers(dest="cmd", required=True)
  c = sub.add_parser("convert", help="convert a .pth state dict to .npz (no torch needed)")
  c.add_argument("pth")
  c.add_argument("npz")
  c.add_argument("--prefix", default=None,
                 help="expected sha256 prefix for a renamed file (e.g. "
                 f"{FID_WEIGHTS_SHA256_PREFIX})")
  c.add_argument("--no-verify", action="store_true", help="skip the sha256-prefix check")
  v = sub.add_parser("verify", help="check a file's sha256 against its name's hash suffix")
  v.add_argument("path")
  v.add_argument("--prefix", default=None)
  args = parser.parse_args(argv)

  def command() -> None:
    if args.cmd == "convert":
      digest = convert(args.pth, args.npz, verify=not args.no_verify, prefix=args.prefix)
      print(f"sha256 {digest}\nwrote {args.npz}")
    else:
      print(f"ok sha256 {verify_sha256_prefix(args.path, args.prefix)}")
  return features_lib.run_cli(command)


if __name__ == "__main__":
  sys.exit(main())
