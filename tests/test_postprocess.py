"""DRS, MH-GAN and collaborative refinement (gandance_jax.postprocess) on hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import postprocess as pp
from gandance_jax.networks import toy2d
from tests.conftest import random_vars


# ----------------------------------------------------------------------------- core maths


def test_drs_acceptance_hand_computed():
  # With eps = 0 and gamma = 0, sigmoid(F) = exp(logit - max): plain rejection sampling.
  logits = jnp.log(jnp.array([0.5, 0.25, 0.1]))
  acc = pp.drs_acceptance(logits, jnp.float32(0.0), 0.0, eps=0.0)
  # A log, a subtraction, a log1p and a sigmoid of O(1) float32 values: a few ulps, ~1e-6
  # relative at most (seen 3e-9); the hand values differ from wrong maths by O(0.1).
  np.testing.assert_allclose(acc, [0.5, 0.25, 0.1], rtol=1e-5)
  # F = d - log(1 - exp(d)): d = log .5 -> F = 0; d = log .25 -> F = log(1/3).
  np.testing.assert_allclose(pp.drs_f(logits[:2], 0.0, eps=0.0), [0.0, np.log(1 / 3)],
                             atol=1e-6)
  # gamma shifts F: sigmoid(log(1/3) - log(1/3)) = 0.5.
  np.testing.assert_allclose(pp.drs_acceptance(logits[1], 0.0, np.log(1 / 3), eps=0.0), 0.5,
                             rtol=1e-5)
  # eps keeps the max-logit sample finite: F(max) = -log(1 - exp(-eps)). 1 - exp(-1e-3) in
  # float32 cancels: an ulp of 1 (1.2e-7) is 1.2e-4 of the difference, i.e. <= ~2.4e-4 in F
  # = 6.9 (seen 1e-5); rtol 1e-4 (6.9e-4) covers it, a wrong formula is off by O(1).
  np.testing.assert_allclose(pp.drs_f(jnp.float32(2.0), 2.0, eps=1e-3),
                             -np.log(1 - np.exp(-1e-3)), rtol=1e-4)


def test_mh_acceptance_hand_computed():
  logit = lambda p: np.log(p / (1 - p))
  # alpha = min(1, (1/D(x_k) - 1) / (1/D(x') - 1)).
  a = pp.mh_acceptance(jnp.float32(logit(0.8)), jnp.float32(logit(0.5)))
  # exp of float32 logits, a ratio: a few ulps (seen exactly 0.25); min(1, .) is exactly 1.
  np.testing.assert_allclose(a, (1 / 0.8 - 1) / (1 / 0.5 - 1), rtol=1e-5)   # 0.25
  np.testing.assert_array_equal(pp.mh_acceptance(jnp.float32(0.0), jnp.float32(logit(0.8))),
                                1.0)


def test_platt_recovers_known_logistic():
  # real logits ~ N(1, 1), fake ~ N(-1, 1), balanced: P(real | l) = sigmoid(2 l) exactly.
  rng = np.random.default_rng(0)
  cal = pp.fit_platt(rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000))
  assert abs(float(cal.a) - 2.0) < 0.1 and abs(float(cal.b)) < 0.05
  # One multiply-add in float32, fused or not: <= 2 ulps of a value ~1 (seen exactly equal).
  np.testing.assert_allclose(cal(jnp.array([0.5])), cal.a * 0.5 + cal.b, rtol=1e-6)


def test_isotonic_pav_and_calibration():
  # float64 means of small integers: exact.
  np.testing.assert_array_equal(pp._pav(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)),
                                [1.0, 2.5, 2.5, 4.0])
  cal = pp.fit_isotonic(np.array([1.0, 2.0, 3.0]), np.array([-3.0, -2.0, -1.0]))
  p = jax.nn.sigmoid(cal(jnp.array([-2.5, 0.0, 2.5])))
  assert float(p[0]) < 1e-3 and float(p[2]) > 1 - 1e-3
  assert np.all(np.diff(np.asarray(cal(jnp.linspace(-4, 4, 50)))) >= 0)


# ----------------------------------------------------------------------------- samplers on a
# hand-made "GAN": x = z (1-D), logits chosen per test.

B = 2000


def make_fns(logit_fn):
  def latents(g, key, labels):
    return jax.random.normal(key, (labels.shape[0], 1, 1)) + g["shift"]
  return pp.GANFns(latents=latents, synthesis=lambda g, ws: ws[:, 0, :],
                   logits=lambda d, x, c: logit_fn(d, x[:, 0]))


VARS = {"g": {"shift": jnp.float32(0.0)}, "d": {"a": jnp.float32(1.0)}}
LABELS = jnp.zeros((B,), jnp.int32)


def test_drs_constant_logit_accepts_half_and_is_deterministic():
  """Constant D: F is constant, gamma its percentile, so every proposal is accepted with
  sigmoid(0) = 1/2."""
  fns = make_fns(lambda d, x: jnp.zeros_like(x) + d["a"])
  sampler = pp.make_drs_sampler(fns, jnp.array([1.0]), percentile=95.0)
  x, info = sampler(VARS, jax.random.key(0), LABELS)
  assert abs(float(info["acceptance_rate"]) - 0.5) < 0.03
  assert float(info["fallback_fraction"]) == 0.0
  # Accepted proposals fill any empty slot of their class: ~1/0.5 rounds plus a short tail.
  assert 2 <= int(info["rounds"]) <= 5
  x2, _ = sampler(VARS, jax.random.key(0), LABELS)
  np.testing.assert_array_equal(x, x2)
  with pytest.raises(ValueError, match="real classes"):
    sampler(VARS, jax.random.key(0), jnp.ones((4,), jnp.int32))


def test_match_by_class_hand_computed():
  labels = jnp.array([0, 1, 0, 1, 0])
  accept = jnp.array([True, False, True, True, False])
  empty = jnp.array([False, True, True, False, True])
  take, src = pp.match_by_class(accept, empty, labels, 2)
  np.testing.assert_array_equal(take, [False, True, True, False, True])
  np.testing.assert_array_equal(np.asarray(src)[[1, 2, 4]], [3, 0, 2])
  # More empty slots of class 1 than accepted candidates: only the first is served.
  take, src = pp.match_by_class(jnp.array([False, True, False]), jnp.array([True, True, True]),
                                jnp.array([1, 1, 1]), 2)
  np.testing.assert_array_equal(take, [True, False, False])
  assert int(src[0]) == 1


def test_drs_reweights_towards_high_logits():
  """D logit = x - max: rejection sampling with ratio exp(x) turns N(0, 1) into N(1, 1)
  (eps -> 0, gamma = 0 via percentile 100 of F with the true max)."""
  fns = make_fns(lambda d, x: d["a"] * x)
  sampler = pp.make_drs_sampler(fns, jnp.array([4.0]), percentile=100.0, eps=1e-6,
                                max_rounds=200)
  x, info = sampler(VARS, jax.random.key(1), LABELS)
  assert float(info["fallback_fraction"]) < 0.01
  assert 0.7 < float(jnp.mean(x)) < 1.3   # plain proposals have mean 0
  assert float(info["max_logit"][0]) >= 4.0


def test_mh_chain_moves_or_falls_back():
  pool = pp.RealPool.from_arrays(np.full((10, 1), 5.0, np.float32), np.zeros(10, np.int32), 1)
  ident = pp.identity_calibration()
  # Constant D: every proposal is accepted (alpha = 1), one segment, no fallback.
  fns = make_fns(lambda d, x: jnp.zeros_like(x))
  x, info = pp.make_mh_sampler(fns, ident, k=5, real_pool=pool)(VARS, jax.random.key(2), LABELS)
  assert float(info["acceptance_rate"]) == 1.0 and int(info["segments"]) == 1
  assert float(info["fallback_fraction"]) == 0.0 and float(jnp.max(jnp.abs(x - 5.0))) > 0
  # D loves the real point (x = 5) and hates every proposal: chains never move, are
  # restarted max_restarts times, then fall back to their last proposal (never a real one).
  fns = make_fns(lambda d, x: jnp.where(x > 4.9, 50.0, -50.0))
  x, info = pp.make_mh_sampler(fns, ident, k=5, real_pool=pool, max_restarts=2)(
      VARS, jax.random.key(3), LABELS)
  assert int(info["segments"]) == 3 and float(info["fallback_fraction"]) == 1.0
  assert float(info["acceptance_rate"]) == 0.0 and float(jnp.max(x)) < 4.9
  # init='proposal' needs no real data.
  _, info = pp.make_mh_sampler(fns, ident, k=4, init="proposal")(VARS, jax.random.key(4),
                                                                 LABELS)
  assert float(info["evals_per_sample"]) == 4.0
  with pytest.raises(ValueError, match="real_pool"):
    pp.make_mh_sampler(fns, ident, k=4)


def test_refinement_one_step_hand_computed():
  """logit = -(x - 3)^2: one SGD step moves x by lr * -2 (x - 3); Adam's first step by
  lr * sign(grad)."""
  fns = make_fns(lambda d, x: -jnp.square(x - 3.0))
  key = jax.random.key(5)
  x0 = fns.synthesis(VARS["g"], fns.latents(VARS["g"], key, LABELS))
  sgd = pp.make_refine_sampler(fns, layer="output", steps=1, step_size=0.1, optimizer="sgd",
                               keep_best=False)
  x, info = sgd(VARS, key, LABELS)
  # One float32 gradient step on |x| = O(3): a few ulps (1e-6); a wrong sign or lr is O(0.1).
  np.testing.assert_allclose(x, x0 + 0.1 * (-2.0) * (x0 - 3.0), rtol=1e-5, atol=1e-5)
  assert float(info["logit_after"]) > float(info["logit_before"])
  adam = pp.make_refine_sampler(fns, layer="output", steps=1, step_size=0.1, keep_best=False)
  x, _ = adam(VARS, key, LABELS)
  # Adam's first step is lr g / (|g| + 1e-8) (bias corrections in float32): off lr sign(g)
  # by lr 1e-8 / |g|, <= 1e-5 unless |x0 - 3| < 5e-5, plus a few ulps of O(3).
  np.testing.assert_allclose(x, x0 + 0.1 * jnp.sign(3.0 - x0), rtol=1e-4, atol=1e-4)
  # A target stops samples that already reach it.
  tgt = pp.make_refine_sampler(fns, layer="output", steps=5, step_size=0.1, optimizer="sgd",
                               target_logit=-1.0, keep_best=False)
  x, info = tgt(VARS, key, LABELS)
  done = np.asarray(-(x0 - 3.0) ** 2 >= -1.0)[:, 0]
  np.testing.assert_array_equal(np.asarray(x)[done], np.asarray(x0)[done])
  with pytest.raises(ValueError, match="features"):
    pp.make_refine_sampler(fns, layer=1)


def test_composition_with_toy_and_guidance():
  """GANdance latents compose with DRS on the toy networks."""
  G = toy2d.Toy2DGenerator(z_dim=4, w_dim=8, num_classes=3, hidden=16, num_layers=2)
  D = toy2d.Toy2DDiscriminator(num_classes=3, hidden=16, num_layers=2, cmap_dim=4)
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)
  v = {"g": random_vars(G, jnp.zeros((8, 4)), labels),
       "d": random_vars(D, jnp.zeros((8, 2)), labels, seed=1)}
  guided = pp.gan_fns(G, D, pp.latents_fn(G, mode="training_free", scale=1.3))
  x, info = pp.make_drs_sampler(guided, jnp.zeros((3,)))(v, jax.random.key(6), labels)
  assert x.shape == (8, 2) and 0 < float(info["acceptance_rate"]) <= 1
  assert info["max_logit"].shape == (3,)
  with pytest.raises(ValueError, match="learned"):
    pp.latents_fn(G, mode="learned", scale=1.5)   # G has no empty class
