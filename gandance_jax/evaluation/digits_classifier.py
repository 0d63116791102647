"""A small CNN classifier of the bundled digits: the feature extractor for digits FID.

Inception at 299x299 means nothing for 8x8 digits (and is slow on CPU, and its weights cannot
be downloaded everywhere). This classifier is trained on the real digits
(`gandance_jax.data.digits.load_digits`) the first time it is needed: a fixed seed, a held-out
split of 20% whose accuracy is reported (about 0.98), a few seconds on one CPU core. Then it is
cached as `.npz` under `$GANDANCE_CACHE` (default `~/.cache/gandance_jax`), written via a
temporary file and an atomic rename so concurrent processes never read half a file.

Its penultimate layer (128-d, after ReLU) gives a digits FID, its softmax the classifier score
(`scores.classifier_score`) and the class accuracy of conditionally generated digits::

  ext = digits_classifier.get_extractor(resolution=16)
  feats, logits = features.extract(ext, images)          # images [N, H, W, 1] in [-1, 1]
  acc = digits_classifier.class_accuracy(images, labels)

Images of any resolution are resized to the classifier's (bilinear, antialiased when
downsampling, as `load_digits` upsamples); the convention recorded with statistics is
`digits_r{resolution}`.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gandance_jax.data.digits import load_digits
from gandance_jax.evaluation import features as features_lib
from gandance_jax.evaluation import scores
from gandance_jax.evaluation import weights

VERSION = 1  # bump when the architecture or the training recipe changes (invalidates caches)
FEATURE_DIM = 128
NUM_CLASSES = 10
HELDOUT_FRACTION = 0.2
SEED = 0
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 2e-3


class DigitsCNN(nn.Module):
  """conv3x3(16) - avgpool2 - conv3x3(32) - avgpool2 - dense(128) - dense(10), ReLUs.

  Input NHWC [B, R, R, 1] in [-1, 1] (R a power of two >= 8); returns
  (features [B, 128], logits [B, 10]).
  """
  feature_dim: int = FEATURE_DIM
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(32, (3, 3), name="conv2")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    feats = nn.relu(nn.Dense(self.feature_dim, name="fc1")(x))
    return feats, nn.Dense(self.num_classes, name="fc2")(feats)


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng(seed).permutation(n)
  n_held = int(round(n * HELDOUT_FRACTION))
  return perm[n_held:], perm[:n_held]


def heldout_split(resolution: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train_images, train_labels, heldout_images, heldout_labels) of the fixed split."""
  images, labels = load_digits(resolution=resolution)
  tr, te = _split(len(labels), SEED)
  return images[tr], labels[tr], images[te], labels[te]


def _shift(images: jax.Array, key: jax.Array) -> jax.Array:
  """Random translation by up to 1/8 of the size (pad with background -1, crop)."""
  r = images.shape[1]
  m = max(1, r // 8)
  padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
  offs = jax.random.randint(key, (images.shape[0], 2), 0, 2 * m + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (r, r, 1))
  return jax.vmap(crop)(padded, offs)


def train(resolution: int = 16, *, seed: int = SEED,
          epochs: int = EPOCHS) -> tuple[dict[str, Any], float]:
  """Trains the classifier deterministically; returns (variables, held-out accuracy)."""
  x_tr, y_tr, x_te, y_te = heldout_split(resolution)
  model = DigitsCNN()
  key = jax.random.key(seed)
  variables = model.init(jax.random.fold_in(key, 0), jnp.zeros((1, resolution, resolution, 1)))
  tx = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, epochs * (len(y_tr) // BATCH_SIZE)))
  opt_state = tx.init(variables)
  steps = len(y_tr) // BATCH_SIZE
  x_tr, y_tr = jnp.asarray(x_tr), jnp.asarray(y_tr)

  def loss_fn(v, x, y):
    _, logits = model.apply(v, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # One jitted step driven from Python: XLA:CPU runs convolutions inside a scan's while loop
  # several times slower than as a top-level computation.
  @jax.jit
  def step(v, s, idx, step_num):
    x = _shift(x_tr[idx], jax.random.fold_in(key, step_num))
    grads = jax.grad(loss_fn)(v, x, y_tr[idx])
    updates, s = tx.update(grads, s, v)
    return optax.apply_updates(v, updates), s

  rng = np.random.default_rng(seed)
  for e in range(epochs):
    perm = rng.permutation(len(y_tr))
    for i in range(steps):
      idx = jnp.asarray(perm[i * BATCH_SIZE:(i + 1) * BATCH_SIZE])
      variables, opt_state = step(variables, opt_state, idx, e * steps + i + 1)
  _, logits = jax.jit(model.apply)(variables, jnp.asarray(x_te))
  acc = float(np.mean(np.argmax(np.asarray(logits), axis=1) == y_te))
  return variables, acc


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("GANDANCE_CACHE", "~/.cache/gandance_jax")).expanduser()


def cache_path(resolution: int = 16) -> pathlib.Path:
  return cache_dir() / f"digits_classifier_r{resolution}.npz"


def _flatten(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {"/".join(k.key for k in path): np.asarray(v) for path, v in flat}


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, v in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(v)
  return out


def _read_cache(path: pathlib.Path, resolution: int) -> tuple[dict[str, Any], float] | None:
  try:
    with np.load(path, allow_pickle=False) as f:
      if int(f["meta.version"]) != VERSION or int(f["meta.resolution"]) != resolution:
        return None
      acc = float(f["meta.heldout_accuracy"])
      flat = {k: f[k] for k in f.files if not k.startswith("meta.")}
  except (OSError, KeyError, ValueError):
    return None
  variables = _unflatten(flat)
  expected = jax.eval_shape(lambda: DigitsCNN().init(
      jax.random.key(0), jnp.zeros((1, resolution, resolution, 1))))
  if (jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(variables) or any(
      a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(expected),
                                         jax.tree_util.tree_leaves(variables)))):
    return None
  return variables, acc


@functools.lru_cache(maxsize=4)
def _load_or_train(resolution: int, path: str) -> tuple[dict[str, Any], float]:
  cached = _read_cache(pathlib.Path(path), resolution)
  if cached is not None:
    return cached
  variables, acc = train(resolution)
  logging.info("digits classifier r%d trained: held-out accuracy %.4f", resolution, acc)
  arrays = _flatten(variables)
  arrays.update({"meta.version": np.array(VERSION), "meta.resolution": np.array(resolution),
                 "meta.heldout_accuracy": np.array(acc)})
  try:
    weights.save_npz_atomic(path, arrays)
  except OSError as e:  # a read-only home still gets a working classifier
    logging.warning("could not cache the digits classifier at %s: %s", path, e)
  return variables, acc


def load_or_train(resolution: int = 16) -> tuple[dict[str, Any], float]:
  """(variables, held-out accuracy): from the cache, or trained now and cached."""
  if resolution < 8 or resolution & (resolution - 1):
    raise ValueError(f"classifier resolution must be a power of two >= 8 (the digits' "
                     f"resolutions), got {resolution}")
  return _load_or_train(int(resolution), str(cache_path(resolution)))


def _prepare(images: jax.Array, resolution: int) -> jax.Array:
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 127.5 - 1.0
  images = images.astype(jnp.float32)
  b, h, w, c = images.shape
  if (h, w) != (resolution, resolution):
    images = jax.image.resize(images, (b, resolution, resolution, c), method="linear",
                              antialias=True)
  return images


def get_extractor(resolution: int = 16) -> features_lib.FeatureExtractor:
  """The digits `FeatureExtractor`: 128-d penultimate features, 10-way logits.

  Accepts [B, H, W, 1] images (float in [-1, 1] or uint8) of any size.
  """
  variables, _ = load_or_train(resolution)
  model = DigitsCNN()

  def apply_fn(v, images):
    return model.apply(v, _prepare(images, resolution))

  return features_lib.FeatureExtractor(
      name=f"digits_cnn_r{resolution}_v{VERSION}", convention=f"digits_r{resolution}",
      dim=FEATURE_DIM, num_classes=NUM_CLASSES, apply_fn=apply_fn, params=variables,
      channels=1, min_samples=0, quantize="none")


def predict_logits(images: Any, *, resolution: int = 16, batch_size: int = 256) -> np.ndarray:
  """Class logits [N, 10] of digit images [N, H, W, 1]."""
  return features_lib.extract(get_extractor(resolution), images, batch_size=batch_size,
                              progress=False)[1]


def class_accuracy(images: Any, labels: Any, *, resolution: int = 16) -> float:
  """Fraction of images the classifier assigns to their label (e.g. the conditioning class)."""
  return scores.class_accuracy(labels, logits=predict_logits(images, resolution=resolution))
