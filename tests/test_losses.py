"""Tests of the GAN losses, R1, path length and the differentiable augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax.train import losses
from gandance_jax.train import augment


def test_logistic_losses_match_log_sigmoid():
  logits = jnp.array([-30.0, -2.0, 0.0, 1.5, 30.0])
  sig = jax.nn.sigmoid(logits)
  # softplus vs -log(sigmoid): a few float32 roundings of each O(1-30) value, ~1e-7 relative
  # (seen 3e-8 at 30); atol for the tiny losses near logit 30, where -log(sig) ~ 1e-13 is
  # itself rounding. A wrong sign or a missing term is O(1).
  np.testing.assert_allclose(losses.generator_loss(logits), -jnp.log(sig), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(losses.discriminator_real_loss(logits), -jnp.log(sig),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.discriminator_fake_loss(logits[:4]),
                             -jnp.log1p(-sig[:4]), rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(losses.generator_loss(jnp.array([-1e4, 1e4]))))


def test_r1_penalty_of_a_quadratic():
  # logits_b = sum(a * x_b^2)  =>  grad = 2 a x_b  =>  penalty_b = sum(4 a^2 x_b^2).
  a = 0.7
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  penalty, logits = losses.r1_penalty(lambda img: jnp.sum(a * img ** 2, axis=(1, 2, 3)), x)
  # Sums of 32 positive float32 terms in another order: relative error <= 32 eps = 3.8e-6
  # (seen 9.7e-8); a wrong factor (2 a, a^2) is O(1) relative.
  np.testing.assert_allclose(penalty, jnp.sum(4 * a * a * x ** 2, axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(logits, jnp.sum(a * x ** 2, axis=(1, 2, 3)), rtol=1e-5)


def test_r1_penalty_is_differentiable_in_the_weights():
  x = jax.random.normal(jax.random.key(1), (2, 2, 2, 1))
  loss = lambda w: jnp.mean(losses.r1_penalty(lambda img: jnp.sum(w * img ** 2, (1, 2, 3)),
                                              x)[0])
  # d/dw mean_b sum 4 w^2 x^2 = mean_b sum 8 w x^2: 16 positive terms, <= 16 eps = 1.9e-6
  # relative whatever the order (seen exactly equal).
  np.testing.assert_allclose(jax.grad(loss)(0.5), jnp.mean(jnp.sum(8 * 0.5 * x ** 2,
                                                                    (1, 2, 3))), rtol=1e-5)


def test_path_length_of_a_linear_synthesis():
  # images = einsum(ws, M): J^T y = M y, so lengths are analytic.
  b, num_ws, w_dim, h = 4, 3, 5, 2
  m = jax.random.normal(jax.random.key(2), (num_ws, w_dim, h, h, 1))
  ws = jax.random.normal(jax.random.key(3), (b, num_ws, w_dim))
  synth = lambda w: jnp.einsum("bnd,ndhwc->bhwc", w, m)
  key = jax.random.key(4)
  penalty, lengths, pl_mean = losses.path_length_penalty(synth, ws, key, jnp.float32(0.5),
                                                         0.01)
  y = jax.random.normal(key, (b, h, h, 1)) / np.sqrt(h * h)
  grads = jnp.einsum("bhwc,ndhwc->bnd", y, m)
  want = jnp.sqrt(jnp.mean(jnp.sum(grads ** 2, axis=2), axis=1))
  # Sums of <= 15 positive squares (the VJP sums 4 pixels of mixed sign first, a cancellation
  # of O(1) terms): <= ~20 eps = 2.4e-6 relative; the penalty (L - m)^2 squares a difference
  # of O(1) values, ~10x that relative to its size, hence 1e-4 (all seen exactly equal).
  np.testing.assert_allclose(lengths, want, rtol=1e-5)
  np.testing.assert_allclose(pl_mean, 0.5 + (want.mean() - 0.5) * 0.01, rtol=1e-5)
  np.testing.assert_allclose(penalty, (want - pl_mean) ** 2, rtol=1e-4)


def test_path_length_penalty_differentiates_through_the_new_mean():
  # images_i = a_i * (linear map of ws_i): the lengths are L_i = |a_i| * l_i with l_i
  # independent of a, so d L_i / d a_i = L_i / a_i. NVIDIA's penalty uses
  # m = m0 + d * (mean(L) - m0) with its gradient (loss.py detaches only the stored copy):
  #   d sum_i (L_i - m)^2 / d a_j = [2 (L_j - m) - 2 d / b * sum_i (L_i - m)] * L_j / a_j.
  b, w_dim, h, decay, m0 = 4, 6, 2, 0.5, 0.3
  m = jax.random.normal(jax.random.key(12), (w_dim, h, h, 1))
  ws = jax.random.normal(jax.random.key(13), (b, 1, w_dim))
  a = jnp.array([0.5, -1.5, 2.0, 1.0])
  key = jax.random.key(14)

  def total(a):
    synth = lambda w: a[:, None, None, None] * jnp.einsum("bnd,dhwc->bhwc", w, m)
    penalty, lengths, pl_mean = losses.path_length_penalty(synth, ws, key, jnp.float32(m0),
                                                           decay)
    return jnp.sum(penalty), (lengths, pl_mean)

  grad, (lengths, pl_mean) = jax.grad(total, has_aux=True)(a)
  lengths, a_np = np.asarray(lengths, np.float64), np.asarray(a, np.float64)
  mean = m0 + decay * (lengths.mean() - m0)
  np.testing.assert_allclose(pl_mean, mean, rtol=1e-6)
  want = (2 * (lengths - mean) - 2 * decay / b * np.sum(lengths - mean)) * lengths / a_np
  detached = 2 * (lengths - mean) * lengths / a_np       # the stop-gradient variant
  # float32 arithmetic on O(1) values: relative errors ~1e-6; the two variants differ by
  # 2 d / b * sum(L - m) * L / a = O(0.1-1), far outside the tolerance.
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5)
  assert np.max(np.abs(want - detached)) > 1e-2
  # The stored mean carries no gradient.
  stored = jax.grad(lambda a: total(a)[1][1])(a)
  np.testing.assert_array_equal(stored, np.zeros(b))


@pytest.mark.parametrize("ops", [("color",), ("translation",), ("cutout",),
                                 ("color", "translation", "cutout")])
def test_augment_shapes_identity_and_gradients(ops):
  x = jax.random.uniform(jax.random.key(5), (8, 8, 8, 3), minval=-1, maxval=1)
  key = jax.random.key(6)
  np.testing.assert_array_equal(augment.augment(x, key, 0.0, ops), x)
  y = augment.augment(x, key, 1.0, ops)
  assert y.shape == x.shape and not np.allclose(y, x)
  np.testing.assert_array_equal(augment.augment(x, key, 1.0, ops), y)  # deterministic
  grad = jax.grad(lambda v: jnp.sum(augment.augment(v, key, 1.0, ops) ** 2))(x)
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_translation_fills_with_zero_and_cutout_masks_a_quarter():
  x = jnp.ones((64, 16, 16, 1))
  u = jax.random.uniform(jax.random.key(7), (64, augment.NUM_DRAWS))
  y = augment.translation(x, u)
  assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 1.0}
  # Shifts are in [-2, 2] pixels: at most 2 rows and 2 columns become zero.
  assert float(y.mean()) > (14 * 14) / 256 - 1e-6
  z = augment.cutout(x, u)
  # An 8x8 square, partly outside the image when centred near the border.
  zero_frac = 1 - np.asarray(z).mean(axis=(1, 2, 3))
  assert np.all(zero_frac <= 0.25 + 1e-6) and np.all(zero_frac >= 0.0625 - 1e-6)


def test_parse_policy_rejects_unknown_ops():
  assert augment.parse_policy("color, cutout") == ("color", "cutout")
  with pytest.raises(ValueError, match="rotate"):
    augment.parse_policy("color,rotate")

