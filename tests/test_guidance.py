"""The GANdance maths (gandance_jax.guidance.guided_ws and helpers) on a tiny generator."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import guidance
from gandance_jax.networks import stylegan2
from tests.conftest import random_variables

NUM_CLASSES = 7
BATCH = 5
# The same guidance maths as two programs (the module vs Alg. 2/3 written out, another jit or
# order of the mean over classes). w is O(3) (seen max 3.1): the mapping is 2 FC layers of
# fan-in <= 32 whose products are ~0.2 (sum of |products| ~5), then a mean of <= 7 rows and
# one multiply-add by a scale <= 1.5. Reassociating a K-term float32 sum moves it by at most
# ~K eps sum|products| = 32 * 1.2e-7 * 5 = 2e-5 per layer (typically ~sqrt(K) ulps: seen
# <= 4.8e-7). 4e-5 keeps that worst case and is still far below what a wrong scale, class or
# opposite mean does to w (> 1e-3, asserted below).
W_TOL = 4e-5




@pytest.fixture(scope="module")
def gen():
  """A tiny conditional G (ws rows drive resolutions [4, 8, 8, 16, 16, 16])."""
  G = stylegan2.Generator(z_dim=16, w_dim=16, num_classes=NUM_CLASSES, empty_class=True,
                          resolution=16, img_channels=3, channel_base=128, channel_max=16,
                          mapping_layers=2)
  v = random_variables(G)
  z = jax.random.normal(jax.random.key(2), (BATCH, G.z_dim))
  labels = jnp.asarray([0, 3, 6, 2, 3], jnp.int32)
  # jit the mappings with the variables as arguments: eager Flax is slow on 2 CPU cores, and
  # closed-over constants would be folded at compile time (possibly rounded differently).
  jit3 = jax.jit(lambda v_, z_, c_: G.apply(v_, z_, c_, method=G.mapping))
  jit2 = jax.jit(lambda v_, z_, c_: G.apply(v_, z_, c_, broadcast=False, method=G.mapping))
  map3 = lambda z_, c_: jit3(v, z_, c_)
  map2 = lambda z_, c_: jit2(v, z_, c_)
  return G, v, z, labels, map3, map2


def _alg2_literal(map3, z, c, c_oppo, guide_scale):
  """Supplementary Alg. 2, line by line (torch repeat = jnp.tile; lerp as torch defines it)."""
  batch_size, num_oppo_conds = z.shape[0], c_oppo.shape[0]
  cond_wp = map3(z, c)
  repeated_z = jnp.tile(z, (num_oppo_conds, 1))
  repeated_c_oppo = jnp.tile(c_oppo, batch_size)
  repeated_c_oppo = repeated_c_oppo.reshape(batch_size, num_oppo_conds)
  repeated_c_oppo = repeated_c_oppo.T
  repeated_c_oppo = repeated_c_oppo.reshape(batch_size * num_oppo_conds)
  all_oppo_wp = map3(repeated_z, repeated_c_oppo)
  all_oppo_wp = all_oppo_wp.reshape(num_oppo_conds, batch_size, *cond_wp.shape[1:])
  oppo_wp = all_oppo_wp.mean(axis=0)
  return oppo_wp + guide_scale * (cond_wp - oppo_wp)  # torch.lerp(oppo_wp, cond_wp, s)


def test_scale_one_is_unguided_bitwise(gen):
  G, v, z, labels, map3, map2 = gen
  unguided = np.asarray(map3(z, labels))
  opposite = jnp.asarray([1, 4, 5])
  for kwargs in (dict(opposite_labels=opposite), dict(empty_label=G.empty_label)):
    # Scale 1 known on the host: exactly the unguided mapping (3-D or 2-D + broadcast).
    for scale in (1.0, np.ones(G.num_ws), jnp.ones(G.num_ws)):
      np.testing.assert_array_equal(guidance.guided_ws(map3, z, labels, scale=scale, **kwargs),
                                    unguided)
      np.testing.assert_array_equal(guidance.guided_ws(map2, z, labels, scale=scale,
                                                       num_ws=G.num_ws, **kwargs), unguided)
    # Traced scale 1 (scalar or all-ones vector): the select returns w_c bit for bit.
    w_c, w_oppo = map2(z, labels), map2(z, jnp.zeros_like(labels))
    f = jax.jit(functools.partial(guidance.apply_guidance, num_ws=G.num_ws))
    for scale in (jnp.float32(1.0), jnp.ones((G.num_ws,), jnp.float32)):
      w = np.asarray(f(w_c, w_oppo, scale))
      np.testing.assert_array_equal(w, np.broadcast_to(np.asarray(w_c)[:, None], w.shape)
                                    if w.ndim == 3 else w_c)
    # Whereas the lerp of Alg. 2 does not round-trip at 1 for some entries.
    lerp = np.asarray(w_oppo + jnp.float32(1.0) * (w_c - w_oppo))
    assert not np.array_equal(lerp, np.asarray(w_c))


def test_training_free_equals_literal_alg2(gen):
  G, v, z, labels, map3, map2 = gen
  opposite = jnp.asarray([1, 4, 5, 0], jnp.int32)
  expected = _alg2_literal(map3, z, labels, opposite, 1.3)
  got3 = guidance.guided_ws(map3, z, labels, scale=1.3, opposite_labels=opposite)
  got2 = guidance.guided_ws(map2, z, labels, scale=1.3, opposite_labels=opposite,
                            num_ws=G.num_ws)
  assert got3.shape == got2.shape == (BATCH, G.num_ws, G.w_dim)
  np.testing.assert_allclose(got3, expected, rtol=0, atol=W_TOL)
  np.testing.assert_allclose(got2, expected, rtol=0, atol=W_TOL)
  synth = jax.jit(lambda v_, ws: G.apply(v_, ws, noise_mode="const", method=G.synthesis))
  # One synthesis program on ws a few ulps apart (seen 2.4e-7): images of magnitude <= 30 (raw
  # N(0, 1) toRGB weights, not demodulated) move by that times the network's gain (seen
  # 4.8e-6, ~20x); 1e-4 + 1e-4 |img| is 20x more, and a wrong w moves images by O(1).
  np.testing.assert_allclose(synth(v, got2), synth(v, expected), rtol=1e-4, atol=1e-4)
  # The guidance actually moved w.
  assert float(jnp.abs(got2 - map3(z, labels)).max()) > 1e-3


def test_learned_equals_alg3(gen):
  G, v, z, labels, map3, map2 = gen
  cond_wp = map3(z, labels)
  empty_wp = map3(z, jnp.full((BATCH,), G.empty_label, jnp.int32))
  expected = empty_wp + 1.4 * (cond_wp - empty_wp)
  got = guidance.guided_ws(map2, z, labels, scale=1.4, empty_label=G.empty_label,
                           num_ws=G.num_ws)
  np.testing.assert_allclose(got, expected, rtol=0, atol=W_TOL)


def test_all_classes_opposite_set_is_the_full_mean(gen):
  G, v, z, labels, map3, map2 = gen
  full_mean = np.mean([np.asarray(map2(z, jnp.full((BATCH,), c, jnp.int32)))
                       for c in range(NUM_CLASSES)], axis=0)
  w_c = np.asarray(map2(z, labels))
  expected = full_mean + 1.2 * (w_c - full_mean)
  got = guidance.guided_ws(map2, z, labels, scale=1.2, opposite_labels=jnp.arange(NUM_CLASSES))
  np.testing.assert_allclose(got, expected, rtol=0, atol=W_TOL)
  # Per-sample sets [B, M] that are permutations of all classes give the same mean.
  perms = jnp.stack([jax.random.permutation(jax.random.key(i), NUM_CLASSES)
                     for i in range(BATCH)])
  got_perm = guidance.opposite_mean(map2, z, perms)
  np.testing.assert_allclose(got_perm, full_mean, rtol=0, atol=W_TOL)  # another sum order
  # Chunked (lax.scan with a padded last chunk) equals the single vmap.
  for max_pairs in (BATCH, 3 * BATCH):
    chunked = guidance.opposite_mean(map2, z, jnp.arange(NUM_CLASSES), max_pairs=max_pairs)
    np.testing.assert_allclose(chunked, full_mean, rtol=0, atol=W_TOL)


def test_layerwise_scale_touches_only_its_layers(gen):
  G, v, z, labels, map3, map2 = gen
  assert G.ws_resolutions() == [4, 8, 8, 16, 16, 16]
  scale = guidance.layerwise_scale(G, {8: 1.5}, default=1.0)
  np.testing.assert_array_equal(scale, [1, 1.5, 1.5, 1, 1, 1])
  opposite = jnp.asarray([2, 5])
  w_c = np.asarray(map3(z, labels))
  got = np.asarray(guidance.guided_ws(map2, z, labels, scale=scale, opposite_labels=opposite,
                                      num_ws=G.num_ws))
  scalar = np.asarray(guidance.guided_ws(map2, z, labels, scale=1.5, opposite_labels=opposite,
                                         num_ws=G.num_ws))
  untouched = scale == 1
  np.testing.assert_array_equal(got[:, untouched], w_c[:, untouched])
  # Guided rows: the same w_c / w_oppo (same programs, same inputs) through one multiply-add
  # with the scale per row instead of scalar: at most a fused vs unfused rounding, ~1 ulp of
  # values <= 6 (5e-7; seen exactly equal). A wrong row moves w by >= 0.5 |w_c - w_oppo|.
  np.testing.assert_allclose(got[:, ~untouched], scalar[:, ~untouched], rtol=1e-6, atol=1e-6)
  assert np.abs(got[:, ~untouched] - w_c[:, ~untouched]).min() > 0


def test_schedule_helpers(gen):
  G = gen[0]
  # Table look-ups into float32 arrays: exactly the float32 values given, no arithmetic.
  f32 = lambda values: np.asarray(values, np.float32)
  np.testing.assert_array_equal(guidance.layerwise_scale(G, {4: 1.5, 8: 1.4, 16: 1.1}),
                                f32([1.5, 1.4, 1.4, 1.1, 1.1, 1.1]))
  np.testing.assert_array_equal(guidance.low_high(G, low=1.5, high=1.1, split=8),
                                f32([1.5, 1.5, 1.5, 1.1, 1.1, 1.1]))
  np.testing.assert_array_equal(guidance.low_high([4, 8, 16, 32, 64, 64], 2.0, 1.0),
                                f32([2, 2, 2, 1, 1, 1]))
  assert guidance.parse_layer_scales("4:1.5, 8:1.5,16:1.2") == {4: 1.5, 8: 1.5, 16: 1.2}
  with pytest.raises(ValueError, match="misses resolutions"):
    guidance.layerwise_scale(G, {4: 1.5})
  with pytest.raises(ValueError, match="drive no ws row"):
    guidance.layerwise_scale(G, {4: 1.5, 8: 1.0, 16: 1.0, 32: 1.0})
  with pytest.raises(ValueError, match="must be finite"):
    guidance.layerwise_scale(G, {4: float("nan")}, default=1.0)
  with pytest.raises(ValueError, match="layer scales"):
    guidance.parse_layer_scales("4=1.5")


def test_truncation_composes_with_guidance(gen):
  G, v, z, labels, map3, map2 = gen
  w_avg = v["buffers"]["mapping_network"]["w_avg"]
  opposite = jnp.asarray([0, 1, 2])
  psi = 0.7
  guided = guidance.guided_ws(map2, z, labels, scale=1.3, opposite_labels=opposite,
                              num_ws=G.num_ws)
  got = guidance.guided_ws(map2, z, labels, scale=1.3, opposite_labels=opposite,
                           num_ws=G.num_ws, truncation_psi=psi, w_avg=w_avg)
  # The same guided w (same programs, same inputs) through one multiply-add: at most a fused
  # vs unfused rounding, ~1 ulp of values <= 6 (seen exactly equal); psi off by 0.01 moves w
  # by ~1e-2.
  np.testing.assert_allclose(got, w_avg + psi * (guided - w_avg), rtol=1e-6, atol=1e-6)
  # Truncating w_c and w_oppo first, then guiding, is the same map (affine weights sum to 1).
  trunc = lambda w: w_avg + psi * (w - w_avg)
  w_c, w_oppo = map2(z, labels), guidance.opposite_mean(map2, z, opposite)
  other_order = trunc(w_oppo) + 1.3 * (trunc(w_c) - trunc(w_oppo))
  np.testing.assert_allclose(got[:, 0], other_order, rtol=0, atol=W_TOL)
  # Unguided + truncation is NVIDIA's truncated mapping; psi = 1 is exactly untruncated.
  nvidia = jax.jit(lambda v_, z_, c_: G.apply(v_, z_, c_, truncation_psi=psi,
                                              method=G.mapping))(v, z, labels)
  # Two jitted mapping programs (truncation fused into the mapping or applied after it).
  np.testing.assert_allclose(
      guidance.guided_ws(map2, z, labels, scale=1.0, empty_label=G.empty_label,
                         num_ws=G.num_ws, truncation_psi=psi, w_avg=w_avg), nvidia, rtol=0,
      atol=W_TOL)
  np.testing.assert_array_equal(guidance.truncate(w_c, w_avg, jnp.float32(1.0)), w_c)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=float("nan"), empty_label=7), "scale must be finite"),
    (dict(scale=float("inf"), empty_label=7), "scale must be finite"),
    (dict(scale=np.ones(5), empty_label=7, num_ws=6), r"scale must be a scalar or a \[6\]"),
    (dict(scale=np.ones(5), empty_label=7), "scale has 5 entries"),
    (dict(scale=np.ones((2, 6)), empty_label=7), "scale must be a scalar"),
    (dict(scale=1.3, opposite_labels=np.zeros((0,), np.int32)),
     "opposite_labels must be a non-empty"),
    (dict(scale=1.3, opposite_labels=np.asarray([1, 9]), num_classes=7),
     r"ids must be in \[0, 7\)"),
    (dict(scale=1.3, opposite_labels=np.asarray([-1]), num_classes=7),
     r"ids must be in \[0, 7\)"),
    (dict(scale=1.3, opposite_labels=np.arange(8), num_classes=7),
     "has 8 entries but the model has only 7"),
    (dict(scale=1.3, opposite_labels=np.asarray([1, 1])), "must not repeat"),
    (dict(scale=1.3, opposite_labels=np.asarray([1.0, 2.0])), "integer class ids"),
    (dict(scale=1.3), "exactly one of"),
    (dict(scale=1.3, opposite_labels=np.asarray([1]), empty_label=7), "exactly one of"),
    (dict(scale=1.3, empty_label=7, truncation_psi=0.5), "needs w_avg"),
    (dict(scale=1.3, empty_label=7, truncation_psi=float("nan"), w_avg=np.zeros(16)),
     "truncation_psi must be a finite"),
])
def test_bad_inputs_raise_before_computing(gen, kwargs, match):
  z, labels, map3 = gen[2], gen[3], gen[4]
  def mapping(z_, c_):  # Abstract evaluation (shapes) is allowed, computing is not.
    if not isinstance(z_, jax.core.Tracer):
      raise AssertionError("the mapping must not run on invalid input")
    return map3(z_, c_)
  with pytest.raises(ValueError, match=match):
    guidance.guided_ws(mapping, z, labels, **kwargs)
