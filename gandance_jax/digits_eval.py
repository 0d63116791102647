"""Class accuracy of class-conditional digits samples (the digits analogue of the paper's
classifier score, supplementary Table S1).

`num_per_class` samples per class are drawn from a generator (EMA weights, constant noise,
truncation 1, guidance scale 1 = plain conditional sampling) and classified by a classifier
fitted on the real digits; the class accuracy is the fraction recognised as the class they
were conditioned on. Two classifiers are reported:

  class_accuracy         the evaluator's small CNN (`evaluation.digits_classifier`, about 0.98
                         held-out accuracy on real digits, trained once and cached)
  class_accuracy_logreg  scikit-learn logistic regression on the original 8x8 digits; the
                         16x16 samples are 2x2-average-pooled back to 8x8 on the 0..16 scale
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax import multihost
from gandance_jax.networks import stylegan2


def class_conditional_samples(G: stylegan2.Generator, g_vars: dict[str, Any],
                              num_per_class: int, *, seed: int = 0, batch_size: int = 250,
                              sharding: jax.sharding.Sharding | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
  """(images [K * n, H, W, C] float32 in about [-1, 1], labels [K * n]) with n per class.

  All processes of a multi-process run must call this (the sampler is one global program).
  """
  labels = np.repeat(np.arange(G.num_classes, dtype=np.int32), num_per_class)
  z = np.asarray(jax.random.normal(jax.random.key(seed), (labels.size, G.z_dim)))
  sample = make_sampler(G, sharding)
  images = []
  for i in range(0, labels.size, batch_size):
    images.append(sample(g_vars, z[i:i + batch_size], labels[i:i + batch_size]))
  return np.concatenate(images), labels


@functools.lru_cache(maxsize=8)
def make_sampler(G: stylegan2.Generator, sharding: jax.sharding.Sharding | None):
  """(g_vars, z [n, z_dim], labels int [n]) -> numpy images [n, H, W, C]: plain conditional
  sampling (guidance scale 1, truncation 1, constant noise), jitted once per (G, sharding)."""
  def sample(g_vars, z, labels):
    ws = G.apply(g_vars, z, labels, method=G.mapping)
    return G.apply(g_vars, ws, noise_mode="const", method=G.synthesis)
  jitted = jax.jit(sample, out_shardings=sharding)

  def run(g_vars, z, labels):
    return multihost.to_host(jitted(g_vars, jnp.asarray(z), jnp.asarray(labels)))
  return run


def _to_digits8(images: np.ndarray) -> np.ndarray:
  """[N, R, R, 1] in [-1, 1] -> [N, 64] on scikit-learn's 0..16 scale (area downsampling)."""
  x = np.asarray(images, np.float32)[..., 0]
  n, r, _ = x.shape
  f = r // 8
  x = x.reshape(n, 8, f, 8, f).mean(axis=(2, 4))
  return np.clip((x + 1.0) * 8.0, 0.0, 16.0).reshape(n, 64)


@functools.lru_cache(maxsize=1)
def _logreg():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  return LogisticRegression(max_iter=5000).fit(bunch.data, bunch.target)


def logreg_class_accuracy(images: np.ndarray, labels: np.ndarray) -> float:
  """Accuracy of a logistic regression fitted on the real 8x8 digits."""
  pred = _logreg().predict(_to_digits8(images))
  return float(np.mean(pred == np.asarray(labels)))


def class_accuracy(images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """{'class_accuracy': CNN accuracy, 'class_accuracy_logreg': logistic regression's}."""
  from gandance_jax.evaluation import digits_classifier  # pylint: disable=g-import-not-at-top
  # Samples are judged as they would be saved: clipped to the image range.
  images = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
  resolution = max(16, int(images.shape[1]))
  cnn = digits_classifier.class_accuracy(images, labels, resolution=resolution)
  return {"class_accuracy": float(cnn),
          "class_accuracy_logreg": logreg_class_accuracy(images, labels)}


def evaluate_generator(G: stylegan2.Generator, g_vars: dict[str, Any], num_per_class: int = 100,
                       *, seed: int = 0, batch_size: int = 250,
                       sharding: jax.sharding.Sharding | None = None) -> dict[str, float]:
  """Samples `num_per_class` per class from `g_vars` and returns their class accuracies.

  Every process samples; every process also classifies (cheap), so all return the same.
  """
  images, labels = class_conditional_samples(G, g_vars, num_per_class, seed=seed,
                                             batch_size=batch_size, sharding=sharding)
  return class_accuracy(images, labels)
