"""`make_source(config.data)`: the source a data config names (see base.py for the interface).

Every source module is imported here at the top; TensorFlow is still imported only when a
tfds pipeline is built (tfds_input.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gandance_jax.data import base, digits100, folder, mixtures2d, tfds_input
from gandance_jax.data.digits import load_digits


# ----------------------------------------------------------------------------- factory


def _get(config: Any, key: str, default: Any = None) -> Any:
  if isinstance(config, Mapping):
    return config.get(key, default)
  return config.get(key, default) if hasattr(config, "get") else getattr(config, key,
                                                                           default)


def _optional_int(config: Any, key: str) -> int | None:
  value = _get(config, key)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"data.{key} must be a positive int or None, got {value!r}")
  return int(value)


def make_source(data_config: Any) -> base.Source:
  """Builds the source described by a data config (ml_collections.ConfigDict or dict).

  Fields:
    name: one of SOURCE_NAMES.
    resolution: power of two; None means the dataset's native size (digits: 16). Ignored
      by the 2D mixtures.
    path: .npz file ('npz') or class-per-sub-folder root ('folder').
    xflip: random horizontal mirroring (not allowed for the 2D mixtures).
    seed: non-negative int; with the step it determines every batch.
    data_dir: tfds data dir (tfds sources only; None = tfds default).
    channels: optional 1 or 3 (npz / folder; None = native).
    num_classes: optional (npz / folder; None = max label + 1 / number of sub-folders).
    shuffle_buffer: optional tf.data shuffle buffer (tfds sources; default 10_000).
    max_images: 0 (all images) or train on a fixed class-stratified subset of this many
      images (`base.stratified_subset`: the same images for every seed); 'digits' only.
  Raises:
    ValueError naming the field for unknown names or bad values.
  """
  name = _get(data_config, "name")
  if name not in base.SOURCE_NAMES:
    raise ValueError(f"data.name must be one of {list(base.SOURCE_NAMES)}, got {name!r}")
  xflip = base.check_bool(_get(data_config, "xflip", False), "data.xflip")
  seed = base.check_seed(_get(data_config, "seed", 0))
  resolution = _get(data_config, "resolution")
  max_images = _get(data_config, "max_images", 0) or 0
  if max_images and name != "digits":
    raise ValueError(f"data.max_images = {max_images!r} is supported for data.name='digits' "
                     f"only (got data.name={name!r}); 0 = all images")

  if name in base.MIXTURE_NAMES:
    if xflip:
      raise ValueError(f"data.xflip must be False for the 2D mixture {name!r} "
                       "(mirroring points would change the distribution)")
    return mixtures2d.MixtureSource(mixtures2d.get_spec(name), seed=seed)

  if resolution is not None:
    resolution = base.check_resolution(resolution)

  if name == "digits":
    images, labels = load_digits(resolution if resolution is not None else 16)
    if base.check_max_images(max_images, len(labels)):
      keep = base.stratified_subset(labels, max_images, num_classes=10)
      images, labels = images[keep], labels[keep]
    return base.ArraySource(images, labels, num_classes=10, xflip=xflip, seed=seed,
                       name=name, class_names=tuple(str(i) for i in range(10)))

  if name == "digits100":
    # data.seed orders the batches; the images are always the seed-0 rendering that the
    # digits100 classifier and its FID references were made from (data/digits100.py).
    return digits100.make_source(resolution if resolution is not None else 16, xflip=xflip,
                                 seed=seed)

  if name in ("npz", "folder"):
    path = _get(data_config, "path")
    if not path:
      raise ValueError(f"data.path must name the dataset for data.name={name!r}, got "
                       f"{path!r}")
    channels = _get(data_config, "channels")
    if channels is not None and channels not in (1, 3):
      raise ValueError(f"data.channels must be 1, 3 or None, got {channels!r}")
    num_classes = _optional_int(data_config, "num_classes")
    if name == "npz":
      images, labels = folder.load_npz(path, resolution=resolution, channels=channels)
      class_names = None
    else:
      images, labels, class_names = folder.load_image_folder(
          path, resolution=resolution, channels=channels)
      if num_classes is not None and num_classes != len(class_names):
        raise ValueError(f"data.num_classes={num_classes} but {path} has "
                         f"{len(class_names)} class folders")
    if num_classes is None:
      num_classes = int(labels.max()) + 1
    elif labels.max() >= num_classes:
      raise ValueError(f"labels in {path} reach {int(labels.max())}, out of range for "
                       f"data.num_classes={num_classes}")
    return base.ArraySource(images, labels, num_classes=num_classes, xflip=xflip, seed=seed,
                       name=name, class_names=class_names)

  # tfds sources.
  shuffle_buffer = _optional_int(data_config, "shuffle_buffer") or 10_000
  return tfds_input.TfdsSource(name, resolution=resolution, xflip=xflip, seed=seed,
                               data_dir=_get(data_config, "data_dir"),
                               shuffle_buffer=shuffle_buffer)
