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

The machinery is generic (`ClassifierSpec`: a CNN trained on an (images, labels) set, cached
under a key of version, resolution and optionally a digest of the data); `digits100_classifier`
is the other dataset that uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
from typing import Any, Callable

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
  """conv3x3(w1) - avgpool2 - conv3x3(w2) - avgpool2 - dense(128) - dense(classes), ReLUs.

  `widths` (w1, w2) = (16, 32) for the digits. Input NHWC [B, R, R, C] in [-1, 1] (R a power of
  two >= 8); returns (features [B, feature_dim], logits [B, num_classes]).
  """
  feature_dim: int = FEATURE_DIM
  num_classes: int = NUM_CLASSES
  widths: tuple[int, int] = (16, 32)

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(nn.Conv(self.widths[0], (3, 3), name="conv1")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(self.widths[1], (3, 3), name="conv2")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    feats = nn.relu(nn.Dense(self.feature_dim, name="fc1")(x))
    return feats, nn.Dense(self.num_classes, name="fc2")(feats)


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: a key of the in-memory cache
class ClassifierSpec:
  """A CNN classifier of one (images, labels) dataset: its data, recipe and cache key.

  `split(resolution)` -> (train_images, train_labels, heldout_images, heldout_labels), images
  [N, R, R, channels] float in [-1, 1] or uint8; `metrics(logits, labels)` -> {name: value} of
  the held-out set, stored in the cache as `meta.heldout_{name}` (names `metric_names`);
  `border` pads the random shifts with a constant (None: extends the edge);
  `data_digest(resolution)`, when given, is stored and a cache of other data is stale.
  """
  name: str  # the dataset: log lines, extractor name `{name}_cnn_r{R}_v{version}`, convention
  model: nn.Module
  channels: int
  version: int
  split: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
  metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]
  metric_names: tuple[str, ...]
  border: float | None
  seed: int
  epochs: int
  batch_size: int
  learning_rate: float
  data_digest: Callable[[int], str] | None = None


def _as_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; float images are only cast to float32."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


def _shift(images: jax.Array, key: jax.Array, border: float | None) -> jax.Array:
  """Random translation by up to 1/8 of the size (pad with `border`, or the edge; crop)."""
  r, c = images.shape[1], images.shape[3]
  m = max(1, r // 8)
  pad = ((0, 0), (m, m), (m, m), (0, 0))
  padded = (jnp.pad(images, pad, mode="edge") if border is None else
            jnp.pad(images, pad, constant_values=border))
  offs = jax.random.randint(key, (images.shape[0], 2), 0, 2 * m + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (r, r, c))
  return jax.vmap(crop)(padded, offs)


def predict_batched(model: nn.Module, variables: Any, images: np.ndarray,
                    batch_size: int = 512) -> np.ndarray:
  """Logits [N, classes] of images [N, R, R, C] (uint8 or float), one compiled batch shape."""
  apply = jax.jit(lambda v, x: model.apply(v, _as_float(x))[1])
  out = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(apply(variables, jnp.asarray(chunk)))[:batch_size - pad])
  return np.concatenate(out)


def train_classifier(spec: ClassifierSpec, resolution: int, *, seed: int | None = None,
                     epochs: int | None = None) -> tuple[dict[str, Any], dict[str, float]]:
  """Trains `spec.model` deterministically (fixed seed, split and batch order, random shifts,
  Adam with cosine decay); returns (variables, held-out metrics)."""
  seed = spec.seed if seed is None else seed
  epochs = spec.epochs if epochs is None else epochs
  x_tr, y_tr, x_te, y_te = spec.split(resolution)
  model, bs = spec.model, spec.batch_size
  key = jax.random.key(seed)
  variables = model.init(jax.random.fold_in(key, 0),
                         jnp.zeros((1, resolution, resolution, spec.channels)))
  steps = len(y_tr) // bs
  tx = optax.adam(optax.cosine_decay_schedule(spec.learning_rate, epochs * steps))
  opt_state = tx.init(variables)
  x_tr, y_tr = jnp.asarray(x_tr), jnp.asarray(y_tr)  # uint8 stays uint8: 1 byte per value

  def loss_fn(v, x, y):
    _, logits = model.apply(v, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # One jitted step driven from Python: XLA:CPU runs convolutions inside a scan's while loop
  # several times slower than as a top-level computation.
  @jax.jit
  def step(v, s, idx, step_num):
    x = _shift(_as_float(x_tr[idx]), jax.random.fold_in(key, step_num), spec.border)
    grads = jax.grad(loss_fn)(v, x, y_tr[idx])
    updates, s = tx.update(grads, s, v)
    return optax.apply_updates(v, updates), s

  rng = np.random.default_rng(seed)
  for e in range(epochs):
    perm = rng.permutation(len(y_tr))
    for i in range(steps):
      idx = jnp.asarray(perm[i * bs:(i + 1) * bs])
      variables, opt_state = step(variables, opt_state, idx, e * steps + i + 1)
  return variables, spec.metrics(predict_batched(model, variables, np.asarray(x_te)), y_te)


def data_digest(images: np.ndarray, labels: np.ndarray) -> str:
  """sha256 of a dataset's images and labels (the bytes, C order)."""
  h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).tobytes())
  return h.hexdigest()


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


def read_cache(spec: ClassifierSpec, path: pathlib.Path, resolution: int
               ) -> tuple[dict[str, Any], dict[str, float]] | None:
  """(variables, held-out metrics) from a cache file; None when it is absent, unreadable, of
  another version, resolution or data, or of another architecture."""
  try:
    with np.load(path, allow_pickle=False) as f:
      if (int(f["meta.version"]) != spec.version or int(f["meta.resolution"]) != resolution or
          (spec.data_digest is not None and
           str(f["meta.data_sha256"]) != spec.data_digest(resolution))):
        return None
      metrics = {k: float(f[f"meta.heldout_{k}"]) for k in spec.metric_names}
      flat = {k: f[k] for k in f.files if not k.startswith("meta.")}
  except (OSError, KeyError, ValueError):
    return None
  variables = _unflatten(flat)
  expected = jax.eval_shape(lambda: spec.model.init(
      jax.random.key(0), jnp.zeros((1, resolution, resolution, spec.channels))))
  if (jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(variables) or any(
      a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(expected),
                                         jax.tree_util.tree_leaves(variables)))):
    return None
  return variables, metrics


@functools.lru_cache(maxsize=8)
def load_or_train_cached(spec: ClassifierSpec, resolution: int, path: str
                         ) -> tuple[dict[str, Any], dict[str, float]]:
  """(variables, held-out metrics) of `spec` from the cache file `path`, or trained now and
  written there (atomically); remembered in memory per (spec, resolution, path)."""
  cached = read_cache(spec, pathlib.Path(path), resolution)
  if cached is not None:
    return cached
  variables, metrics = train_classifier(spec, resolution)
  logging.info("%s classifier r%d trained: held-out %s", spec.name, resolution,
               ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
  arrays = _flatten(variables)
  arrays.update({"meta.version": np.array(spec.version),
                 "meta.resolution": np.array(resolution)})
  if spec.data_digest is not None:
    arrays["meta.data_sha256"] = np.array(spec.data_digest(resolution))
  arrays.update({f"meta.heldout_{k}": np.array(metrics[k]) for k in spec.metric_names})
  try:
    weights.save_npz_atomic(path, arrays)
  except OSError as e:  # a read-only home still gets a working classifier
    logging.warning("could not cache the %s classifier at %s: %s", spec.name, path, e)
  return variables, metrics


def check_resolution(resolution: Any, what: str) -> int:
  """`resolution` as an int; ValueError unless it is a power of two >= 8."""
  if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or (
      resolution < 8 or resolution & (resolution - 1)):
    raise ValueError(f"classifier resolution must be a power of two >= 8 (the {what} "
                     f"resolutions), got {resolution!r}")
  return int(resolution)


def extractor(spec: ClassifierSpec, variables: Any, resolution: int
              ) -> features_lib.FeatureExtractor:
  """The `FeatureExtractor` of a trained `spec` model: penultimate features and logits of
  [B, H, W, channels] images (float in [-1, 1] or uint8) of any size, resized to `resolution`
  (bilinear, antialiased when downsampling)."""
  model = spec.model

  def apply_fn(v, images):
    images = _as_float(images)
    b, h, w, c = images.shape
    if (h, w) != (resolution, resolution):
      images = jax.image.resize(images, (b, resolution, resolution, c), method="linear",
                                antialias=True)
    return model.apply(v, images)

  return features_lib.FeatureExtractor(
      name=f"{spec.name}_cnn_r{resolution}_v{spec.version}",
      convention=f"{spec.name}_r{resolution}", dim=model.feature_dim,
      num_classes=model.num_classes, apply_fn=apply_fn, params=variables,
      channels=spec.channels, min_samples=0, quantize="none")


# ----------------------------------------------------------------------------------------
# The digits.


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng(seed).permutation(n)
  n_held = int(round(n * HELDOUT_FRACTION))
  return perm[n_held:], perm[:n_held]


def heldout_split(resolution: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train_images, train_labels, heldout_images, heldout_labels) of the fixed split."""
  images, labels = load_digits(resolution=resolution)
  tr, te = _split(len(labels), SEED)
  return images[tr], labels[tr], images[te], labels[te]


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  return {"accuracy": float(np.mean(np.argmax(np.asarray(logits), axis=1) == labels))}


SPEC = ClassifierSpec(
    name="digits", model=DigitsCNN(), channels=1, version=VERSION, split=heldout_split,
    metrics=_accuracy, metric_names=("accuracy",), border=-1.0,
    seed=SEED, epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE)

# The in-memory cache (shared with digits100_classifier); `_load_or_train.cache_clear()`.
_load_or_train = load_or_train_cached


def train(resolution: int = 16, *, seed: int = SEED,
          epochs: int = EPOCHS) -> tuple[dict[str, Any], float]:
  """Trains the classifier deterministically; returns (variables, held-out accuracy)."""
  variables, metrics = train_classifier(SPEC, resolution, seed=seed, epochs=epochs)
  return variables, metrics["accuracy"]


def _read_cache(path: pathlib.Path, resolution: int) -> tuple[dict[str, Any], float] | None:
  cached = read_cache(SPEC, path, resolution)
  return None if cached is None else (cached[0], cached[1]["accuracy"])


def load_or_train(resolution: int = 16) -> tuple[dict[str, Any], float]:
  """(variables, held-out accuracy): from the cache, or trained now and cached."""
  resolution = check_resolution(resolution, "digits'")
  variables, metrics = load_or_train_cached(SPEC, resolution, str(cache_path(resolution)))
  return variables, metrics["accuracy"]


def get_extractor(resolution: int = 16) -> features_lib.FeatureExtractor:
  """The digits `FeatureExtractor`: 128-d penultimate features, 10-way logits.

  Accepts [B, H, W, 1] images (float in [-1, 1] or uint8) of any size.
  """
  return extractor(SPEC, load_or_train(resolution)[0], resolution)


def predict_logits(images: Any, *, resolution: int = 16, batch_size: int = 256) -> np.ndarray:
  """Class logits [N, 10] of digit images [N, H, W, 1]."""
  return features_lib.extract(get_extractor(resolution), images, batch_size=batch_size,
                              progress=False)[1]


def class_accuracy(images: Any, labels: Any, *, resolution: int = 16) -> float:
  """Fraction of images the classifier assigns to their label (e.g. the conditioning class)."""
  return scores.class_accuracy(labels, logits=predict_logits(images, resolution=resolution))
