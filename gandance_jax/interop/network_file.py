"""`--network=<pkl | .pth | workdir>` of `main.py --mode=sample / eval`: one generator from a
downloaded file or a run.

* a stylegan2-ada-pytorch `network-snapshot-*.pkl`: its G_ema, settings from the pickle;
* a StyleGAN2 `.pth` (zip or legacy torch format, NVIDIA key names, e.g. written by
  `python -m gandance_jax.interop export`): its G_ema (or G, or a bare generator state dict),
  settings from the file's 'settings' entry, or, when it has none, from the config's
  `generator.*` fields;
* a run's workdir: the G EMA of its checkpoint `which` ('latest', 'best' or a step).

Nothing is executed from a file (see safe_pickle); errors name the file and what was expected.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from gandance_jax import checkpoint
from gandance_jax.interop import nvidia
from gandance_jax.interop.safe_pickle import FormatError

_EXPECTED = ("a stylegan2-ada network-snapshot .pkl, a StyleGAN2 .pth of NVIDIA-keyed state "
             "dicts, or a run's workdir")
# config.generator field -> the settings name of the golden JSON / NVIDIA's kwargs.
_CONFIG_TO_SETTINGS = {
    "z_dim": "z_dim", "w_dim": "w_dim", "num_classes": "num_classes",
    "empty_class": "empty_class", "resolution": "img_resolution",
    "img_channels": "img_channels", "mapping_layers": "mapping_layers",
    "channel_base": "channel_base", "channel_max": "channel_max", "conv_clamp": "conv_clamp",
    "architecture": "g_architecture", "w_avg_beta": "w_avg_beta",
}


class NetworkFileError(FormatError):
  """--network names something that is not a generator file or a run (the message says
  which file and what was expected)."""


def settings_from_config(generator_config: Mapping[str, Any]) -> dict[str, Any]:
  """The flat settings (golden JSON names) of `config.generator` (this project's names)."""
  return {theirs: generator_config[ours] for ours, theirs in _CONFIG_TO_SETTINGS.items()
          if ours in generator_config}


def load_network(path: str, generator_config: Mapping[str, Any] | None = None,
                 which: str = "latest") -> tuple[Any, dict[str, Any], str]:
  """(G, its variables {'params', 'buffers'}, a tag for output names) of `--network=path`.

  Args:
    path: a network-snapshot .pkl, a StyleGAN2 .pth, or a workdir.
    generator_config: `config.generator`; used only for a .pth without a 'settings' entry.
    which: the checkpoint of a workdir ('latest', 'best' or a step number).
  Returns:
    (G, g_vars, tag): tag is 'step_<n>' / 'best_step_<n>' for a run, 'network_<file stem>'
    for a file.
  Raises:
    NetworkFileError / interop errors (ValueError): the message names the file.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    G, g_vars, _, step = checkpoint.load_generator_from(path, which)
    return G, g_vars, f"best_step_{step}" if which == "best" else f"step_{step}"
  if not os.path.exists(path):
    raise NetworkFileError(f"--network = {path!r} does not exist; expected {_EXPECTED}")
  if os.path.getsize(path) == 0:
    raise NetworkFileError(f"--network = {path!r} is empty; expected {_EXPECTED}")
  try:
    G, g_vars, _ = nvidia.load_stylegan2_generator(path)
  except FormatError as e:
    if "has no 'settings' entry" not in str(e) or generator_config is None:
      raise NetworkFileError(f"--network: {e}") from None
    # A bare .pth: the architecture is the config's (--config.generator.*).
    try:
      G, g_vars, _ = nvidia.load_stylegan2_generator(
          path, **settings_from_config(generator_config))
    except FormatError as e2:
      raise NetworkFileError(f"--network: {e2} (the file has no settings: the networks are "
                             "built from config.generator.*; check them)") from None
  stem = os.path.splitext(os.path.basename(path))[0]
  return G, g_vars, f"network_{stem}"


__all__ = ["NetworkFileError", "load_network", "settings_from_config"]
