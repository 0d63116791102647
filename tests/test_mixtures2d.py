"""Tests of the 2D Gaussian-mixture benchmarks: specs, sampling, metrics, source."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gandance_jax import data
from gandance_jax.data import mixtures2d


@pytest.fixture(scope="module", params=["mixture_8gaussians", "mixture_25gaussians"])
def spec(request):
  return mixtures2d.get_spec(request.param)


def test_imbalanced_8gaussians_spec():
  spec = mixtures2d.get_spec("mixture_8gaussians")
  radius = 10.0 / math.sqrt(2.0)
  # float64 cos / sin / sqrt: a few ulps (eps64 2.2e-16), far below the default rtol 1e-7; a
  # wrong radius, angle or weight is off by >= 1e-2.
  np.testing.assert_allclose(np.linalg.norm(spec.centres, axis=1), radius)
  np.testing.assert_allclose(spec.centres[0], [radius, 0.0], atol=1e-12)
  np.testing.assert_allclose(spec.centres[1], [radius / math.sqrt(2)] * 2)
  assert spec.std == pytest.approx(0.02 * 10.0 / math.sqrt(2.0))
  np.testing.assert_allclose(spec.weights, [0.45, 0.45] + [0.1 / 6] * 6)
  assert spec.num_classes == 8


def test_25gaussians_spec():
  spec = mixtures2d.get_spec("mixture_25gaussians")
  assert spec.num_classes == 25 and spec.std == 0.05
  assert sorted(set(spec.centres[:, 0])) == [-4.0, -2.0, 0.0, 2.0, 4.0]
  assert len({tuple(c) for c in spec.centres}) == 25
  np.testing.assert_allclose(spec.centres[5 * 3 + 1], [2.0, -2.0])  # 5 * ix + iy
  np.testing.assert_allclose(spec.weights, np.full(25, 0.04))


def test_spec_validation():
  with pytest.raises(ValueError, match=r"weights must be non-negative and sum to 1"):
    mixtures2d.MixtureSpec("x", np.zeros((2, 2)), 0.1, np.array([0.5, 0.6]))
  with pytest.raises(ValueError, match=r"centres must be \[K, 2\]"):
    mixtures2d.MixtureSpec("x", np.zeros((2, 3)), 0.1, np.array([0.5, 0.5]))
  with pytest.raises(ValueError, match=r"data\.name must be one of"):
    mixtures2d.get_spec("mixture_9gaussians")


def test_sample_shapes_determinism_and_statistics(spec):
  points, labels = spec.sample(0, 10_000)
  assert points.shape == (10_000, 2) and points.dtype == np.float32
  assert labels.shape == (10_000,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < spec.num_classes
  p2, l2 = spec.sample(0, 10_000)
  np.testing.assert_array_equal(points, p2)
  np.testing.assert_array_equal(labels, l2)
  assert not np.array_equal(points, spec.sample(1, 10_000)[0])
  # Label frequencies follow the weights (4 binomial std), and the labels are the modes.
  freq = np.bincount(labels, minlength=spec.num_classes) / 10_000
  assert np.all(np.abs(freq - spec.weights) < 4 * np.sqrt(spec.weights / 10_000) + 1e-3)
  offsets = points - spec.centres[labels]
  assert np.std(offsets) == pytest.approx(spec.std, rel=0.05)
  assert abs(np.mean(offsets)) < 0.05 * spec.std


def test_sample_accepts_jax_keys(spec):
  import jax  # pylint: disable=g-import-not-at-top
  a = spec.sample(jax.random.key(3), 16)
  b = spec.sample(jax.random.PRNGKey(3), 16)  # raw uint32 key with the same bits
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], spec.sample(jax.random.key(4), 16)[0])


def test_sample_class(spec):
  labels = np.arange(spec.num_classes).repeat(50)
  points = spec.sample_class(5, labels)
  assert points.shape == (labels.size, 2) and points.dtype == np.float32
  np.testing.assert_array_equal(points, spec.sample_class(5, labels))
  result = mixtures2d.evaluate(points, spec)
  nearest = np.argmin(np.linalg.norm(points[:, None] - spec.centres[None], axis=-1), axis=1)
  np.testing.assert_array_equal(nearest, labels)
  assert result["good_fraction"] > 0.99
  with pytest.raises(ValueError, match=r"labels must be in \[0, "):
    spec.sample_class(0, np.array([spec.num_classes]))


def test_metrics_on_exact_centres(spec):
  # Counts proportional to the weights (8 Gaussians: 0.45 / 0.45 / 6 x 1/60 -> 60 samples).
  counts = np.rint(spec.weights * 300).astype(int)
  points = np.repeat(spec.centres, counts, axis=0)
  result = mixtures2d.evaluate(points, spec)
  assert result["good_fraction"] == 1.0
  # p = q exactly (counts proportional to the weights): each term p log(p / q) is a log of a
  # ratio within an ulp of 1 (<= 2.2e-16), so KL and JS stay far below 1e-12; the mean
  # distance of exact centres is 0 up to the rounding of coordinates ~10 (~1e-15).
  assert result["kl"] == pytest.approx(0.0, abs=1e-12)
  assert result["js"] == pytest.approx(0.0, abs=1e-12)
  assert result["mean_distance"] == pytest.approx(0.0, abs=1e-6)
  assert result["num_modes_covered"] == spec.num_classes
  np.testing.assert_array_equal(result["mode_counts"], counts)
  np.testing.assert_allclose(result["mode_freq"], spec.weights)


def test_metrics_on_far_away_points(spec):
  points = np.full((1000, 2), 100.0)
  result = mixtures2d.evaluate(points, spec)
  assert result["good_fraction"] == 0.0
  assert result["num_modes_covered"] == 0
  # All mass in the "bad" bin, which the data never uses: JS is its maximum ln 2.
  assert result["js"] == pytest.approx(math.log(2.0))
  np.testing.assert_allclose(result["mode_freq"], 1.0 / spec.num_classes)


def test_metrics_threshold_is_num_std_of_nearest_centre():
  spec = mixtures2d.get_spec("mixture_25gaussians")
  inside = spec.centres[7] + np.array([[3.9 * spec.std, 0.0]])
  outside = spec.centres[7] + np.array([[0.0, 4.1 * spec.std]])
  assert mixtures2d.evaluate(inside, spec)["good_fraction"] == 1.0
  assert mixtures2d.evaluate(outside, spec)["good_fraction"] == 0.0
  assert mixtures2d.evaluate(outside, spec, num_std=5.0)["good_fraction"] == 1.0


def test_metrics_on_mode_collapse():
  spec = mixtures2d.get_spec("mixture_8gaussians")
  points = np.repeat(spec.centres[:1], 1000, axis=0)  # everything in mode 0
  result = mixtures2d.evaluate(points, spec)
  q = np.full(8, 1e-12)
  q[0] = 1.0
  q /= q.sum()
  expected_kl = float(np.sum(spec.weights * np.log(spec.weights / q)))
  assert result["good_fraction"] == 1.0 and result["num_modes_covered"] == 1
  # float64 sums of 8-9 terms with a 1e-12 floor inside a log: ~1e-15 relative; 1e-9 is lax.
  assert result["kl"] == pytest.approx(expected_kl, rel=1e-9)
  assert result["kl"] > 10.0
  # JS over (modes + bad bin): p = weights, q = one-hot(mode 0).
  p, q = np.append(spec.weights, 0.0), np.eye(9)[0]
  m = 0.5 * (p + q)
  expected_js = 0.5 * np.sum(p[p > 0] * np.log(p[p > 0] / m[p > 0])) + 0.5 * np.log(1 / m[0])
  assert result["js"] == pytest.approx(expected_js, rel=1e-9)
  assert 0.0 < result["js"] < math.log(2.0)


def test_metrics_on_real_samples_are_near_zero(spec):
  points, _ = spec.sample(0, 10_000)
  result = mixtures2d.evaluate(points, spec)
  assert result["good_fraction"] > 0.998  # P(r > 4 std) = exp(-8) for a 2D Gaussian
  assert result["kl"] < 0.01 and result["js"] < 0.01
  assert result["num_modes_covered"] == spec.num_classes


def test_evaluate_validates_points(spec):
  with pytest.raises(ValueError, match=r"points must be \[n, 2\]"):
    mixtures2d.evaluate(np.zeros((4, 3)), spec)


@pytest.mark.parametrize("name", ["mixture_8gaussians", "mixture_25gaussians"])
def test_mixture_source(name):
  src = data.make_source({"name": name, "seed": 11, "resolution": 32, "xflip": False})
  assert isinstance(src, data.MixtureSource)
  assert src.example_shape == (2,) and src.num_examples is None
  assert src.num_classes == (8 if name == "mixture_8gaussians" else 25)
  full = list(itertools.islice(src.batches(64, 0, process_index=0, process_count=1), 6))
  resumed = list(itertools.islice(src.batches(64, 4, process_index=0, process_count=1), 2))
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  batch = full[0]
  assert batch["image"].shape == (64, 2) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  assert not np.array_equal(full[0]["image"], full[1]["image"])
  # Two processes concatenated equal the global batch.
  for step in (0, 5):
    shards = [next(src.batches(64, step, process_index=p, process_count=2)) for p in range(2)]
    glob = src.global_batch_at(step, 64)
    np.testing.assert_array_equal(np.concatenate([s["image"] for s in shards]), glob["image"])
    np.testing.assert_array_equal(np.concatenate([s["label"] for s in shards]), glob["label"])
  # Points lie at the mode given by their label.
  spec = src.spec
  dist = np.linalg.norm(batch["image"] - spec.centres[batch["label"]], axis=1)
  assert np.all(dist < 6 * spec.std)
