"""Inception Score (ADM's), classifier score, target-class accuracy."""

import numpy as np
import pytest
import scipy.special

from gandance_jax.evaluation import scores


def _adm_inception_score(logits, split_size):
  """guided-diffusion's compute_inception_score on softmax(logits), in float64."""
  preds = scipy.special.softmax(np.asarray(logits, np.float64), axis=1)
  out = []
  for i in range(0, len(preds), split_size):
    part = preds[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    out.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(out))


def test_inception_score_known_values():
  k = 10
  # Identical predictions: IS = 1. Confident and evenly spread over K classes: IS = K.
  assert scores.inception_score(np.zeros((40, k))) == pytest.approx(1.0)
  assert scores.inception_score(np.tile(200.0 * np.eye(k), (3, 1))) == pytest.approx(k)
  # Two images, p = (1, 0) and (0.5, 0.5): marginal (0.75, 0.25);
  # KL1 = log(1 / 0.75), KL2 = 0.5 log(0.5 / 0.75) + 0.5 log(0.5 / 0.25).
  logits = np.log(np.array([[1.0, 1e-300], [0.5, 0.5]]))
  kl = [np.log(4 / 3), 0.5 * np.log(2 / 3) + 0.5 * np.log(2)]
  # float64 softmax, logs and a mean of 2 terms: a few ulps (eps64 = 2.2e-16), 1e-12 is 4500.
  assert scores.inception_score(logits) == pytest.approx(np.exp(np.mean(kl)), rel=1e-12)


def test_inception_score_matches_adm_with_splits():
  logits = np.random.default_rng(0).standard_normal((23, 1008)) * 3
  # float64 sums over 1008 classes in another order: <= 1008 eps64 sum|terms| / KL, ~1e-12
  # relative; 1e-10 is 100x that, and a wrong split or marginal changes IS by > 1e-2.
  for split in (5000, 7):  # 7: splits of 7, 7, 7, 2
    assert scores.inception_score(logits, split_size=split) == pytest.approx(
        _adm_inception_score(logits, split), rel=1e-10)


def test_classifier_score_and_accuracy():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((50, 10)) * 2
  probs = scipy.special.softmax(logits, axis=1)
  p_y = probs.mean(0)
  want = np.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(p_y)), axis=1)))
  # float64 over 10 classes and 50 rows: ~1e-14 relative in any order; 1e-10 is far above.
  assert scores.classifier_score(probs) == pytest.approx(want, rel=1e-10)
  assert scores.classifier_score(logits=logits) == pytest.approx(want, rel=1e-10)
  labels = np.argmax(logits, axis=1).astype(np.int32)
  labels[:10] = (labels[:10] + 1) % 10  # 10 of 50 wrong
  assert scores.class_accuracy(labels, logits=logits) == pytest.approx(0.8)
  assert scores.class_accuracy(labels, probs) == pytest.approx(0.8)
  assert scores.mean_target_probability(labels, probs) == pytest.approx(
      probs[np.arange(50), labels].mean())
  m = scores.classifier_metrics(logits, labels)
  assert m["class_accuracy"] == pytest.approx(0.8) and m["classifier_score"] == pytest.approx(want)


def test_score_errors():
  with pytest.raises(ValueError, match="rows summing to 1"):
    scores.classifier_score(np.full((3, 4), 0.5))
  with pytest.raises(ValueError, match="exactly one of"):
    scores.classifier_score()
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
    scores.class_accuracy(np.array([0, 4]), logits=np.zeros((2, 4)))
  with pytest.raises(ValueError, match="NaN"):
    scores.inception_score(np.full((2, 4), np.nan))
