"""The 2D toy networks (mapping / synthesis split) and the jitted toy trainer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import sampler as sampler_lib
from gandance_jax.networks import toy2d
from gandance_jax.train import toy as toy_train

K = 5


def random_vars(module, *args, seed=0):
  """Variables of `module` with N(0, 1) leaves, from eval_shape (no init compile: on CPU
  the jitted init costs seconds of compilation, a test only needs some weights)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def gen():
  G = toy2d.Toy2DGenerator(z_dim=4, w_dim=8, num_classes=K, empty_class=True, hidden=16,
                           num_layers=3, output_scale=3.0)
  v = random_vars(G, jnp.zeros((2, G.z_dim)), jnp.zeros((2,), jnp.int32))
  # A non-zero truncation centre, so truncation is visible.
  v = {"params": v["params"],
       "buffers": {"mapping_network": {"w_avg": jnp.linspace(-1, 1, G.w_dim)}}}
  return G, v


def test_generator_mirrors_stylegan2_split(gen):
  G, v = gen
  assert G.num_ws == 4 and G.empty_label == K and G.c_dim == K + 1
  assert v["buffers"]["mapping_network"]["w_avg"].shape == (G.w_dim,)
  z = jax.random.normal(jax.random.key(1), (6, G.z_dim))
  c = jnp.array([0, 1, 2, 3, 4, K])
  w = G.apply(v, z, c, broadcast=False, method=G.mapping)
  ws = G.apply(v, z, c, method=G.mapping)
  assert w.shape == (6, G.w_dim) and ws.shape == (6, G.num_ws, G.w_dim)
  np.testing.assert_array_equal(ws, jnp.broadcast_to(w[:, None], ws.shape))
  x = G.apply(v, ws, method=G.synthesis)
  assert x.shape == (6, 2)
  # The same eager ops on the same inputs (seen exactly equal); 1e-6 of O(6) outputs (8 ulp)
  # for a differently fused 16-wide layer, atol for an output that cancels near 0.
  np.testing.assert_allclose(G.apply(v, z, c), x, rtol=1e-6, atol=1e-6)
  # Truncation towards w_avg, as StyleGAN2's mapping.
  wt = G.apply(v, z, c, truncation_psi=0.5, broadcast=False, method=G.mapping)
  w_avg = v["buffers"]["mapping_network"]["w_avg"]
  # One multiply-add on the same w: ~1 ulp of O(3) (seen exactly equal).
  np.testing.assert_allclose(wt, w_avg + 0.5 * (w - w_avg), rtol=1e-5, atol=1e-6)
  # Every hidden layer can be tapped and resumed.
  for layer in range(3):
    h = G.apply(v, ws, layer, method=G.synthesis_features)
    assert h.shape == (6, 16)
    # The same layers split at `layer`: at most a fusion's rounding of 16-term sums of O(1)
    # products, a few ulps of O(6) (seen exactly equal).
    np.testing.assert_allclose(
        G.apply(v, h, ws, layer, method=G.synthesis_from_features), x, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="layer"):
    G.apply(v, ws, 3, method=G.synthesis_features)
  with pytest.raises(ValueError, match="empty"):
    toy2d.Toy2DGenerator(num_classes=0, empty_class=True)


def test_gandance_sampler_applies_unchanged(gen):
  """sampler_lib.make_sampler (written for StyleGAN2) runs on the toy generator as is."""
  G, v = gen
  labels = np.array([0, 1, 2, 3, 4, 0, 1], np.int32)
  key = jax.random.key(2)
  plain = sampler_lib.make_sampler(G, mode="none")(v, key, labels)
  assert plain.shape == (7, 2)
  tf1 = sampler_lib.make_sampler(G, mode="training_free", scale=1.0)(v, key, labels)
  np.testing.assert_array_equal(tf1, plain)        # scale 1 is unguided, bit for bit
  learned = sampler_lib.make_sampler(G, mode="learned", scale=1.5)
  ws = learned.latents(v, key, labels)
  z = sampler_lib.sample_z(key, jnp.arange(7), G.z_dim)
  w_c = G.apply(v, z, labels, broadcast=False, method=G.mapping)
  w_e = G.apply(v, z, jnp.full((7,), K), broadcast=False, method=G.mapping)
  # The sampler's jitted mapping vs the eager one (fan-in <= 16) and one multiply-add: a
  # few ulps of O(3) (seen 1.2e-7); a wrong scale or class moves w by O(0.1).
  np.testing.assert_allclose(ws[:, 0], w_e + 1.5 * (w_c - w_e), rtol=1e-5, atol=1e-5)


def test_discriminator_projection_head():
  # (The SAN head is tested in test_san.py.)
  D = toy2d.Toy2DDiscriminator(num_classes=K, empty_class=True, hidden=8, num_layers=2,
                               cmap_dim=4, input_scale=2.0)
  x = jnp.ones((3, 2))
  c = jnp.array([0, K, 2])
  v = random_vars(D, x, c)
  logits, h = jax.jit(lambda v: (D.apply(v, x, c), D.apply(v, x, method=D.features)))(v)
  assert logits.shape == (3,) and h.shape == (3, 4)
  # The same 4 products summed in another program: <= 4 eps sum|products| / 2 absolute,
  # whatever the logit's size (rtol alone would fail on a logit that cancels near 0).
  prods = np.abs(np.asarray(h) * np.asarray(v["params"]["embed"])[np.asarray(c)])
  np.testing.assert_allclose(logits, jnp.sum(h * v["params"]["embed"][c], axis=1) / 2.0,
                             rtol=0, atol=4 * np.finfo(np.float32).eps * prods.sum(1).max())
  with pytest.raises(ValueError, match="head"):
    toy2d.Toy2DDiscriminator(num_classes=2, head="bogus")


TINY = toy_train.ToyConfig(data="mixture_8gaussians", steps=30, batch_size=32, chunk=15,
                           z_dim=4, w_dim=8, g_hidden=16, d_hidden=16, cmap_dim=8,
                           mapping_layers=1, g_layers=2, d_layers=2, loss="san",
                           empty_class=True, label_reset_prob=0.2)


def test_toy_trainer_is_deterministic_and_tracks_w_avg():
  a = toy_train.train(TINY)
  b = toy_train.train(TINY)   # same program (cached) and same numbers
  for x, y in zip(jax.tree.leaves((a.g_vars, a.d_vars)), jax.tree.leaves((b.g_vars, b.d_vars))):
    np.testing.assert_array_equal(x, y)
  assert a.G.empty_class and a.D.head == "san" and a.G.num_classes == 8
  assert list(a.history["step"]) == [15, 30]
  assert np.all(np.isfinite(a.history["loss_d"])) and np.all(np.isfinite(a.history["loss_g"]))
  assert np.any(a.g_vars["buffers"]["mapping_network"]["w_avg"] != 0)
  c = dataclasses.replace(TINY, seed=1)
  other = toy_train.train(c)  # same compiled program, different numbers
  assert not np.array_equal(other.g_vars["buffers"]["mapping_network"]["w_avg"],
                            a.g_vars["buffers"]["mapping_network"]["w_avg"])


@pytest.mark.parametrize("field,value,match", [
    ("loss", "wgan", "loss"),
    ("label_reset_prob", 0.1, "empty_class"),
    ("data", "swissroll", "data"),
    ("steps", 0, "steps"),
])
def test_toy_config_validation(field, value, match):
  cfg = dataclasses.replace(toy_train.ToyConfig(), **{field: value})
  with pytest.raises(ValueError, match=match):
    cfg.validate()


def test_class_labels_follow_weights():
  spec = toy_train.mixtures2d.get_spec("mixture_8gaussians")
  labels = toy_train.class_labels(spec, 0, 20000)
  freq = np.bincount(labels, minlength=8) / 20000
  # A multinomial draw (seeded, so deterministic): 5 binomial standard deviations per class,
  # sqrt(p (1 - p) / n) = 0.0035 for p = 0.45 (seen 0.0075 = 2.1 std; the old flat 0.01 was
  # only 2.8 std). A wrong weight table is off by >= 0.05.
  np.testing.assert_array_less(np.abs(freq - spec.weights),
                               5 * np.sqrt(spec.weights * (1 - spec.weights) / 20000))
  np.testing.assert_array_equal(labels, toy_train.class_labels(spec, 0, 20000))
