"""Inception Score, classifier score, and target-class accuracy.

* `inception_score`: ADM's (guided-diffusion `evaluations/evaluator.py`) version: class
  probabilities are `softmax(pool3 @ W)` with the 1008-way fc weight *without* its bias (the
  TF graph's `softmax/logits/MatMul`; `inception.make_extractor` returns exactly these
  logits), the set is cut into consecutive splits of 5000 (the last may be shorter),
  `IS_split = exp(mean_i KL(p(y|x_i) || mean_j p(y|x_j)))`, and the score is the mean over
  splits.
* `classifier_score`: the same quantity under a domain classifier over the whole set, as the
  GANdance supplementary's Table S1 reports it: `exp(E_x[KL(p(y|x) || p(y))])`, p(y) the
  marginal over the generated set.
* `class_accuracy` / `mean_target_probability`: how often the classifier's argmax is the
  conditioning label, and the mean p(c|x) of that label.

Everything is computed in float64 numpy from log-probabilities (no log(0)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.special

IS_SPLIT_SIZE = 5000


def _as_2d(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"{name} must be [N, K] with N >= 1, got shape {x.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contain NaN/Inf")
  return x


def _log_probs_from_probs(probs: Any) -> np.ndarray:
  p = _as_2d(probs, "probs")
  if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
    raise ValueError("probs must be non-negative rows summing to 1 (pass logits= for scores)")
  with np.errstate(divide="ignore"):
    return np.log(p / p.sum(axis=1, keepdims=True))


def _log_probs(logits: Any | None, probs: Any | None) -> np.ndarray:
  if (logits is None) == (probs is None):
    raise ValueError("pass exactly one of logits= or probs=")
  if logits is not None:
    return scipy.special.log_softmax(_as_2d(logits, "logits"), axis=1)
  return _log_probs_from_probs(probs)


def _exp_mean_kl(log_p: np.ndarray) -> float:
  """exp(mean_i KL(p_i || mean_j p_j)) for rows of log-probabilities."""
  p = np.exp(log_p)
  log_marginal = scipy.special.logsumexp(log_p, axis=0) - np.log(log_p.shape[0])
  # p * log p is 0 where p underflows to 0 (log_p = -inf would give nan otherwise).
  terms = np.where(p > 0, p * (log_p - log_marginal[None, :]), 0.0)
  return float(np.exp(terms.sum(axis=1).mean()))


def inception_score(logits: Any, *, split_size: int = IS_SPLIT_SIZE) -> float:
  """ADM's Inception Score of class logits [N, K] (Inception: bias-free 1008-way logits).

  The set is cut into consecutive splits of `split_size` (ADM: 5000); returns the mean of the
  per-split scores. Bounded by [1, K].
  """
  log_p = _log_probs(logits, None)
  if split_size < 1:
    raise ValueError(f"split_size must be >= 1, got {split_size}")
  scores = [_exp_mean_kl(log_p[i:i + split_size]) for i in range(0, len(log_p), split_size)]
  return float(np.mean(scores))


def classifier_score(probs: Any | None = None, *, logits: Any | None = None) -> float:
  """exp(E_x[KL(p(y|x) || p(y))]) over the whole set (GANdance supplementary, Table S1).

  Args:
    probs: [N, K] class probabilities of a domain classifier (rows sum to 1), or
    logits: [N, K] its pre-softmax scores instead.
  """
  return _exp_mean_kl(_log_probs(logits, probs))


def _labels(labels: Any, n: int, k: int) -> np.ndarray:
  y = np.asarray(labels)
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape ({n},), got {y.dtype} {y.shape}")
  if n and (y.min() < 0 or y.max() >= k):
    raise ValueError(f"labels must lie in [0, {k}), got [{y.min()}, {y.max()}]")
  return y


def class_accuracy(labels: Any, probs: Any | None = None, *, logits: Any | None = None) -> float:
  """Fraction of images whose top class is their conditioning label."""
  log_p = _log_probs(logits, probs)
  y = _labels(labels, *log_p.shape)
  return float(np.mean(np.argmax(log_p, axis=1) == y))


def mean_target_probability(labels: Any, probs: Any | None = None, *,
                            logits: Any | None = None) -> float:
  """Mean p(c|x) of the conditioning label c over the images."""
  log_p = _log_probs(logits, probs)
  y = _labels(labels, *log_p.shape)
  return float(np.mean(np.exp(log_p[np.arange(len(y)), y])))


def classifier_metrics(logits: Any, labels: Any | None = None) -> dict[str, float]:
  """{'classifier_score', and with labels 'class_accuracy', 'target_probability'}."""
  out = {"classifier_score": classifier_score(logits=logits)}
  if labels is not None:
    out["class_accuracy"] = class_accuracy(labels, logits=logits)
    out["target_probability"] = mean_target_probability(labels, logits=logits)
  return out
