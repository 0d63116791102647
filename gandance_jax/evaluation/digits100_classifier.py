"""A small CNN classifier of digits100 (10 digits x 10 styles): its feature extractor for FID.

The digits100 analogue of `digits_classifier`: trained on the real images
(`gandance_jax.data.digits100.load_digits100`, seed 0, balanced) the first time it is needed,
deterministically (fixed seed, fixed split, fixed batch order), then cached as `.npz` under
`$GANDANCE_CACHE` (default `~/.cache/gandance_jax`) via a temporary file and an atomic rename.

The held-out split is by SOURCE image: 20% of the 1797 scikit-learn digits, with all ten of
their renderings, never enter training, so the held-out accuracy measures unseen handwriting
(and unseen colour jitter), not memorised strokes. One 100-way head; its argmax also gives the
digit (`label // 10`) and the style (`label % 10`), reported as three accuracies
(`Accuracies`): measured 0.966 digit, 0.991 style, 0.958 for the 100 classes.

Its penultimate layer (128-d, after ReLU) gives a digits100 FID, its logits the classifier
score and the class accuracy of conditional samples::

  ext = digits100_classifier.get_extractor()
  feats, logits = features.extract(ext, images)        # images [N, H, W, 3] in [-1, 1] or uint8
  acc = digits100_classifier.accuracies(images, labels) # .digit, .style, .label

Images of another resolution are resized to the classifier's (bilinear, antialiased when
downsampling); the convention recorded with statistics is `digits100_r{resolution}`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gandance_jax.data import digits100
from gandance_jax.evaluation import digits_classifier
from gandance_jax.evaluation import features as features_lib
from gandance_jax.evaluation import weights

VERSION = 1  # bump when the architecture, the data or the training recipe changes
FEATURE_DIM = 128
NUM_CLASSES = digits100.NUM_CLASSES
HELDOUT_FRACTION = 0.2
SEED = 0
# 14380 training images per epoch; measured on the held-out sources (2 shared cores):
# 3 epochs -> class accuracy about 0.96 in ~20-35 s, 6 epochs -> 0.975 in twice that. 3 keeps the
# first use (and the test, which trains from scratch) short with a wide margin over 0.9.
EPOCHS = 3
BATCH_SIZE = 128
LEARNING_RATE = 6e-3


class Digits100CNN(nn.Module):
  """conv3x3(32) - avgpool2 - conv3x3(64) - avgpool2 - dense(128) - dense(100), ReLUs.

  Input NHWC [B, R, R, 3] in [-1, 1] (R a power of two >= 8); returns
  (features [B, 128], logits [B, 100]).
  """
  feature_dim: int = FEATURE_DIM
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(64, (3, 3), name="conv2")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    feats = nn.relu(nn.Dense(self.feature_dim, name="fc1")(x))
    return feats, nn.Dense(self.num_classes, name="fc2")(feats)


@dataclasses.dataclass(frozen=True)
class Accuracies:
  """Fractions of images whose predicted class has the right digit / style / both."""
  digit: float
  style: float
  label: float


def accuracies_from_logits(logits: Any, labels: Any) -> Accuracies:
  """Accuracies of 100-way `logits` [N, 100] against labels [N] (digit * 10 + style)."""
  pred = np.argmax(np.asarray(logits), axis=1)
  labels = np.asarray(labels)
  if pred.shape != labels.shape:
    raise ValueError(f"logits [N, 100] and labels [N] disagree: {np.shape(logits)} vs "
                     f"{labels.shape}")
  return Accuracies(
      digit=float(np.mean(digits100.digit_of(pred) == digits100.digit_of(labels))),
      style=float(np.mean(digits100.style_of(pred) == digits100.style_of(labels))),
      label=float(np.mean(pred == labels)))


def heldout_sources(seed: int = SEED) -> np.ndarray:
  """int64 [360]: the scikit-learn source images held out of training (sorted)."""
  perm = np.random.default_rng(seed).permutation(digits100.NUM_SOURCE_IMAGES)
  return np.sort(perm[:int(round(digits100.NUM_SOURCE_IMAGES * HELDOUT_FRACTION))])


def heldout_split(resolution: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train_images, train_labels, heldout_images, heldout_labels) of the fixed split.

  Images uint8 [N, R, R, 3] of the balanced seed-0 dataset; split by source image.
  """
  images, labels = digits100.load_digits100(resolution, seed=0)
  src, _ = digits100.source_and_style(seed=0)
  held = np.isin(src, heldout_sources())
  return images[~held], labels[~held], images[held], labels[held]


def _to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 127.5 - 1.0


def _shift(images: jax.Array, key: jax.Array) -> jax.Array:
  """Random translation by up to 1/8 of the size; the border is extended (coloured paper)."""
  r, c = images.shape[1], images.shape[3]
  m = max(1, r // 8)
  padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
  offs = jax.random.randint(key, (images.shape[0], 2), 0, 2 * m + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (r, r, c))
  return jax.vmap(crop)(padded, offs)


def train(resolution: int = 16, *, seed: int = SEED,
          epochs: int = EPOCHS) -> tuple[dict[str, Any], Accuracies]:
  """Trains the classifier deterministically; returns (variables, held-out accuracies)."""
  x_tr, y_tr, x_te, y_te = heldout_split(resolution)
  model = Digits100CNN()
  key = jax.random.key(seed)
  variables = model.init(jax.random.fold_in(key, 0), jnp.zeros((1, resolution, resolution, 3)))
  steps = len(y_tr) // BATCH_SIZE
  tx = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, epochs * steps))
  opt_state = tx.init(variables)
  x_tr, y_tr = jnp.asarray(x_tr), jnp.asarray(y_tr)  # uint8 on device: 1 byte per value

  def loss_fn(v, x, y):
    _, logits = model.apply(v, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # One jitted step driven from Python: XLA:CPU runs convolutions inside a scan's while loop
  # several times slower than as a top-level computation.
  @jax.jit
  def step(v, s, idx, step_num):
    x = _shift(_to_float(x_tr[idx]), jax.random.fold_in(key, step_num))
    grads = jax.grad(loss_fn)(v, x, y_tr[idx])
    updates, s = tx.update(grads, s, v)
    return optax.apply_updates(v, updates), s

  rng = np.random.default_rng(seed)
  for e in range(epochs):
    perm = rng.permutation(len(y_tr))
    for i in range(steps):
      idx = jnp.asarray(perm[i * BATCH_SIZE:(i + 1) * BATCH_SIZE])
      variables, opt_state = step(variables, opt_state, idx, e * steps + i + 1)
  logits = _predict(model, variables, x_te)
  return variables, accuracies_from_logits(logits, y_te)


def _predict(model: nn.Module, variables: Any, images: np.ndarray,
             batch_size: int = 512) -> np.ndarray:
  apply = jax.jit(lambda v, x: model.apply(v, _to_float(x))[1])
  out = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)  # one compiled shape
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(apply(variables, jnp.asarray(chunk)))[:batch_size - pad])
  return np.concatenate(out)


def cache_path(resolution: int = 16) -> pathlib.Path:
  """The cache file, beside the digits classifier's (`$GANDANCE_CACHE`)."""
  return digits_classifier.cache_dir() / f"digits100_classifier_r{resolution}_v{VERSION}.npz"


# The '/'-joined flat layout of the digits classifier's cache files (one format for both).
_flatten = digits_classifier._flatten  # pylint: disable=protected-access
_unflatten = digits_classifier._unflatten  # pylint: disable=protected-access


_ACC_KEYS = ("digit", "style", "label")


def data_digest(resolution: int = 16) -> str:
  """sha256 of the training data (images and labels): a cache made from other data is stale."""
  images, labels = digits100.load_digits100(resolution, seed=0)
  h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).tobytes())
  return h.hexdigest()


def _read_cache(path: pathlib.Path, resolution: int) -> tuple[dict[str, Any], Accuracies] | None:
  try:
    with np.load(path, allow_pickle=False) as f:
      if (int(f["meta.version"]) != VERSION or int(f["meta.resolution"]) != resolution or
          str(f["meta.data_sha256"]) != data_digest(resolution)):
        return None
      acc = Accuracies(*(float(f[f"meta.heldout_{k}_accuracy"]) for k in _ACC_KEYS))
      flat = {k: f[k] for k in f.files if not k.startswith("meta.")}
  except (OSError, KeyError, ValueError):
    return None
  variables = _unflatten(flat)
  expected = jax.eval_shape(lambda: Digits100CNN().init(
      jax.random.key(0), jnp.zeros((1, resolution, resolution, 3))))
  if (jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(variables) or any(
      a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(expected),
                                         jax.tree_util.tree_leaves(variables)))):
    return None
  return variables, acc


@functools.lru_cache(maxsize=4)
def _load_or_train(resolution: int, path: str) -> tuple[dict[str, Any], Accuracies]:
  cached = _read_cache(pathlib.Path(path), resolution)
  if cached is not None:
    return cached
  variables, acc = train(resolution)
  logging.info("digits100 classifier r%d trained: held-out accuracy digit %.4f style %.4f "
               "class %.4f", resolution, acc.digit, acc.style, acc.label)
  arrays = _flatten(variables)
  arrays.update({"meta.version": np.array(VERSION), "meta.resolution": np.array(resolution),
                 "meta.data_sha256": np.array(data_digest(resolution))})
  arrays.update({f"meta.heldout_{k}_accuracy": np.array(getattr(acc, k)) for k in _ACC_KEYS})
  try:
    weights.save_npz_atomic(path, arrays)
  except OSError as e:  # a read-only home still gets a working classifier
    logging.warning("could not cache the digits100 classifier at %s: %s", path, e)
  return variables, acc


def load_or_train(resolution: int = 16) -> tuple[dict[str, Any], Accuracies]:
  """(variables, held-out accuracies): from the cache, or trained now and cached."""
  if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or (
      resolution < 8 or resolution & (resolution - 1)):
    raise ValueError(f"classifier resolution must be a power of two >= 8 (the digits100 "
                     f"resolutions), got {resolution!r}")
  return _load_or_train(int(resolution), str(cache_path(resolution)))


def _prepare(images: jax.Array, resolution: int) -> jax.Array:
  if images.dtype == jnp.uint8:
    images = _to_float(images)
  images = images.astype(jnp.float32)
  b, h, w, c = images.shape
  if (h, w) != (resolution, resolution):
    images = jax.image.resize(images, (b, resolution, resolution, c), method="linear",
                              antialias=True)
  return images


def get_extractor(resolution: int = 16) -> features_lib.FeatureExtractor:
  """The digits100 `FeatureExtractor`: 128-d penultimate features, 100-way logits.

  Accepts [B, H, W, 3] images (float in [-1, 1] or uint8) of any size.
  """
  variables, _ = load_or_train(resolution)
  model = Digits100CNN()

  def apply_fn(v, images):
    return model.apply(v, _prepare(images, resolution))

  return features_lib.FeatureExtractor(
      name=f"digits100_cnn_r{resolution}_v{VERSION}", convention=f"digits100_r{resolution}",
      dim=FEATURE_DIM, num_classes=NUM_CLASSES, apply_fn=apply_fn, params=variables,
      channels=3, min_samples=0, quantize="none")


def predict_logits(images: Any, *, resolution: int = 16, batch_size: int = 256) -> np.ndarray:
  """Class logits [N, 100] of digits100 images [N, H, W, 3]."""
  return features_lib.extract(get_extractor(resolution), images, batch_size=batch_size,
                              progress=False)[1]


def accuracies(images: Any, labels: Any, *, resolution: int = 16) -> Accuracies:
  """Digit, style and 100-class accuracy of images meant to show `labels` (e.g. conditional
  samples and their conditioning labels)."""
  return accuracies_from_logits(predict_logits(images, resolution=resolution), labels)


def class_accuracy(images: Any, labels: Any, *, resolution: int = 16) -> float:
  """Fraction of images assigned to their 100-way label (as `digits_classifier.class_accuracy`)."""
  return accuracies(images, labels, resolution=resolution).label
