"""Improved precision/recall: a hand-checkable case and a brute-force numpy reference."""

import numpy as np
import pytest

from gandance_jax.evaluation import precision_recall as pr


def _on_a_line(xs):
  return np.stack([np.asarray(xs, np.float32), np.zeros(len(xs), np.float32)], axis=1)


def test_hand_checkable_case():
  ref = _on_a_line([0, 1, 2, 3, 4])
  samples = _on_a_line([2, 10, 20, 30, 40])
  # Squared distance to the 3rd nearest other point (row sorted incl. the self 0, index 3):
  # ref 0: [0, 1, 4, 9, 16] -> 9; ref 1: [0, 1, 1, 4, 9] -> 4; ref 2: [0, 1, 1, 4, 4] -> 4.
  np.testing.assert_array_equal(pr.manifold_radii(ref), [9, 4, 4, 4, 9])
  # sample 2: [0, 64, 324, 784, 1444] -> 784; 10: [0, 64, 100, 400, 900] -> 400; ...
  np.testing.assert_array_equal(pr.manifold_radii(samples), [784, 400, 324, 400, 900])
  # Only sample 2 lies in a reference ball (at distance 0); sample 2's ball (radius 28)
  # holds every reference point.
  precision, recall = pr.precision_recall(ref, samples)
  assert (precision, recall) == (0.2, 1.0)
  # Ball boundaries count as inside (<=): 7 is at squared distance 9 from ref 4, whose radius
  # is 9 (7.5 is not); with radius 9 around sample 7, ref 4 is inside it, ref 3 (16) is not.
  ref_in, s_in = pr.manifold_membership(ref, [9, 4, 4, 4, 9], _on_a_line([7.5, 7]), [0, 9])
  assert s_in.tolist() == [False, True]
  assert ref_in.tolist() == [False, False, False, False, True]


def _brute_force(ref, samples, k=3):
  def radii(x):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.partition(d, k, axis=1)[:, k]
  r_ref, r_s = radii(ref), radii(samples)
  d = ((ref[:, None, :] - samples[None, :, :]) ** 2).sum(-1)  # [N_ref, N_samples]
  precision = np.mean((d <= r_ref[:, None]).any(axis=0))
  recall = np.mean((d <= r_s[None, :]).any(axis=1))
  return r_ref, r_s, precision, recall


@pytest.mark.parametrize("blocks", [(10_000, 10_000), (64, 100)])
def test_matches_brute_force(blocks):
  rng = np.random.default_rng(0)
  ref = rng.standard_normal((300, 16))
  samples = 0.8 * rng.standard_normal((250, 16)) + 0.5
  kw = dict(row_batch_size=blocks[0], col_batch_size=blocks[1])
  r_ref, r_s, precision, recall = _brute_force(ref, samples)
  # The module's float32 |u|^2 - 2 u.v + |v|^2 (16 dims) vs float64 differences: <= (2 * 16 +
  # 2) eps32 (|u|^2 + |v|^2) = 2.9e-4 absolute with |u|^2 <= 36, i.e. <= 6e-5 of the
  # smallest radius (5.0); seen 6e-6. A wrong k or a missing exclusion of the point itself
  # changes radii by O(1).
  sq_norm = max(np.sum(ref ** 2, 1).max(), np.sum(samples ** 2, 1).max())
  dist_err = (2 * 16 + 2) * np.finfo(np.float32).eps * 2 * sq_norm
  np.testing.assert_allclose(pr.manifold_radii(ref, **kw), r_ref, rtol=1e-4)
  np.testing.assert_allclose(pr.manifold_radii(samples, **kw), r_s, rtol=1e-4)
  # Membership is d <= r: float32 rounding of d and r can only flip a pair within 2 dist_err
  # of a ball's boundary; this data has none (the closest is 9.4e-4 away), so the fractions
  # are equal exactly.
  d = ((ref[:, None, :] - samples[None, :, :]) ** 2).sum(-1)
  assert min(np.abs(d - r_ref[:, None]).min(), np.abs(d - r_s[None]).min()) > 2 * dist_err
  got = pr.precision_recall(ref, samples, **kw)
  assert got == pytest.approx((precision, recall), abs=1e-12)
  assert 0.2 < precision < 1 and 0.2 < recall < 1  # a non-trivial case


def test_errors():
  with pytest.raises(ValueError, match="more than k=3 points"):
    pr.manifold_radii(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="feature dimensions differ"):
    pr.precision_recall(np.zeros((5, 4)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="NaN"):
    pr.precision_recall(np.full((5, 4), np.nan), np.zeros((5, 4)))
