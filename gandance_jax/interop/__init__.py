"""Readers and writers of the weight files users hold, without torch or the authors' code.

* `read_torch_state_dict(path)`: a `.pth` (zip or legacy format) as {key: numpy array}.
* `load_torch_file(path)` / `write_torch_file(path, obj)`: any torch.save object of dicts,
  lists, numbers, strings and tensors (numpy arrays).
* `load_nvidia_pickle(path)`: a stylegan2-ada-pytorch `network-snapshot-*.pkl` as this
  project's StyleGAN2 modules and variables.
* `export_stylegan2` / `load_stylegan2_torch_file`: StyleGAN2 G_ema (and D) as a `.pth` with
  NVIDIA's key names and layouts, and back; `load_stylegan2_generator(path)`: G_ema from
  either a network pickle or a `.pth`.

Every pickle goes through `safe_pickle.RestrictedUnpickler`: a global outside the formats'
allow-lists raises `UnsafePickleError` and nothing from the file is run. Importing this
package never imports torch. The readers (`torch_files`, `safe_pickle`) need numpy and the
standard library only; `nvidia` builds this project's StyleGAN2 (jax, flax) from what they
read.
"""

from gandance_jax.interop.safe_pickle import FormatError, InteropError, UnsafePickleError
from gandance_jax.interop.torch_files import (load_torch_file, read_torch_state_dict,
                                              write_torch_file)

from gandance_jax.interop.nvidia import (export_stylegan2, load_nvidia_pickle,
                                         load_stylegan2_generator, load_stylegan2_torch_file,
                                         stylegan2_settings, stylegan2_torch_state_dict)

_NVIDIA = ("load_nvidia_pickle", "load_stylegan2_torch_file", "load_stylegan2_generator",
           "export_stylegan2", "stylegan2_torch_state_dict", "stylegan2_settings")

__all__ = ["read_torch_state_dict", "load_torch_file", "write_torch_file", "InteropError",
           "FormatError", "UnsafePickleError", *_NVIDIA]
