"""SAN layers and losses (gandance_jax.san): values and where the gradients go."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax.networks import san
from gandance_jax.networks import toy2d
from tests.conftest import random_vars

EPS32 = float(np.finfo(np.float32).eps)
# Hand-computed values from a handful of float32 operations on O(1) inputs: each rounds by
# <= eps/2 relative and decimal inputs (0.6, 0.8) are rounded too, so 8 eps (9.5e-7) covers
# them in any order or fusion; a wrong term, factor or sign is O(1) relative.
FEW_OPS = dict(rtol=8 * EPS32, atol=0)

def test_san_logits_values_and_gradient_routing():
  h = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
  u = jnp.array([[0.6, 0.8], [1.0, 0.0]])
  s = jnp.array([2.0, 3.0])
  fun, dir_ = san.san_logits(h, u, s)
  plain = san.plain_logits(h, u, s)
  np.testing.assert_allclose(fun, [2.0 * (0.6 + 1.6), -3.0], **FEW_OPS)  # seen 2.2e-8 rel.
  np.testing.assert_allclose(dir_, plain, **FEW_OPS)
  np.testing.assert_allclose(fun, plain, **FEW_OPS)

  gf = jax.grad(lambda h, u, s: jnp.sum(san.san_logits(h, u, s)[0]), argnums=(0, 1, 2))(h, u, s)
  gd = jax.grad(lambda h, u, s: jnp.sum(san.san_logits(h, u, s)[1]), argnums=(0, 1, 2))(h, u, s)
  # fun: d/dh = s * u, d/du = 0, d/ds = <u, h>.
  np.testing.assert_allclose(gf[0], s[:, None] * u, **FEW_OPS)
  np.testing.assert_array_equal(gf[1], 0.0)
  np.testing.assert_allclose(gf[2], jnp.sum(u * h, axis=1), **FEW_OPS)
  # dir: d/dh = 0, d/du = s * h, d/ds = 0.
  np.testing.assert_array_equal(gd[0], 0.0)
  np.testing.assert_allclose(gd[1], s[:, None] * h, **FEW_OPS)
  np.testing.assert_array_equal(gd[2], 0.0)


def test_discriminator_and_generator_loss_hand_computed():
  fun_r, fun_f = jnp.array([0.5, 2.0]), jnp.array([-2.0, 0.5])
  dir_r, dir_f = jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0])
  loss, parts = san.discriminator_loss(fun_r, dir_r, fun_f, dir_f, "hinge")
  # hinge: mean(relu(1 - [.5, 2])) + mean(relu(1 + [-2, .5])) = .25 + .75; dir: .5 - 2.
  # Halves and quarters: exact in binary floating point whatever the order.
  np.testing.assert_array_equal(parts["loss_fun"], 1.0)
  np.testing.assert_array_equal(parts["loss_dir"], -1.5)
  np.testing.assert_array_equal(loss, -0.5)
  loss_l, parts_l = san.discriminator_loss(fun_r, dir_r, fun_f, dir_f, "logistic")
  sp = lambda x: np.log1p(np.exp(x))
  want = np.mean(sp(-np.array([0.5, 2.0]))) + np.mean(sp(np.array([-2.0, 0.5])))
  # softplus of O(1) values and two means in float32 against float64 (seen 5.7e-8 relative).
  np.testing.assert_allclose(parts_l["loss_fun"], want, **FEW_OPS)
  np.testing.assert_allclose(loss_l, want - 1.5, **FEW_OPS)
  np.testing.assert_array_equal(san.generator_loss(jnp.array([1.0, 3.0]), "hinge"), -2.0)
  np.testing.assert_allclose(san.generator_loss(jnp.array([0.0]), "logistic"), np.log(2.0),
                             **FEW_OPS)
  with pytest.raises(ValueError, match="base loss"):
    san.generator_loss(jnp.zeros(2), "wgan")


def test_embedding_direction_gradient_hand_computed():
  """dir = s <v / |v|, h>: d/dv = s (h - (h.u) u) / |v| (tangential); fun gives none."""
  emb = san.SANEmbedding(num_embeddings=2, features=2)
  params = {"params": {"direction": jnp.array([[3.0, 4.0], [1.0, 0.0]]),
                       "scale": jnp.array([2.0, 1.0])}}
  h = jnp.array([[1.0, 0.0]])
  ids = jnp.array([0])

  def part(p, which):
    u, s = emb.apply(p, ids)
    return jnp.sum(san.san_logits(h, u, s)[which])

  g_fun, g_dir = jax.jit(lambda p: (jax.grad(part)(p, 0)["params"],
                                    jax.grad(part)(p, 1)["params"]))(params)
  # A norm, a division and a projection of O(1) values (seen 4.7e-8 relative).
  np.testing.assert_allclose(g_dir["direction"][0], 2.0 * np.array([0.64, -0.48]) / 5.0,
                             **FEW_OPS)
  np.testing.assert_array_equal(g_dir["direction"][1], 0.0)   # row of another class
  np.testing.assert_array_equal(g_dir["scale"], 0.0)
  np.testing.assert_array_equal(g_fun["direction"], 0.0)
  np.testing.assert_allclose(g_fun["scale"], [0.6, 0.0], **FEW_OPS)  # <u, h> for class 0


def test_raw_heads_split_radial_and_tangential():
  """StyleGAN2 path: with raw cmap vectors the base loss reaches only their norm and the
  direction loss only their direction; plain logits equal <h, cmap> / sqrt(F)."""
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
  raw = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
  norm = 1 / np.sqrt(6)
  # The same 6 products summed in another order, through |raw| and raw / |raw| (a sqrt, a
  # division, a product: ~8 roundings in all), so the difference is <= 8 eps sum|products|
  # norm (~2e-6 here) whatever the logit's size; seen 3e-8.
  sum_abs = float(np.max(np.sum(np.abs(np.asarray(h) * np.asarray(raw)), axis=1)))
  np.testing.assert_allclose(san.plain_logits(h, *san.raw_heads(raw, norm)),
                             jnp.sum(h * raw, axis=1) * norm, rtol=0,
                             atol=8 * EPS32 * sum_abs * norm)
  part = lambda r, i: jnp.sum(san.san_logits(h, *san.raw_heads(r, norm))[i])
  g_fun, g_dir = jax.jit(lambda r: (jax.grad(part)(r, 0), jax.grad(part)(r, 1)))(raw)
  unit = raw / jnp.linalg.norm(raw, axis=1, keepdims=True)
  radial_fun = jnp.sum(g_fun * unit, axis=1, keepdims=True) * unit
  # Gradients O(1) (seen <= 0.6) through a norm and a 6-term projection: a few ulps (seen
  # <= 1.2e-7); a leaked radial / tangential part would be O(0.1).
  np.testing.assert_allclose(g_fun, radial_fun, atol=1e-5)          # fun: radial only
  np.testing.assert_allclose(jnp.sum(g_dir * unit, axis=1), 0.0, atol=1e-5)  # dir: tangential


def test_toy_san_discriminator_gradients_reach_only_intended_params():
  D = toy2d.Toy2DDiscriminator(num_classes=3, hidden=8, num_layers=2, cmap_dim=4, head="san")
  rng = np.random.default_rng(1)
  xr, xf = (jnp.asarray(rng.standard_normal((6, 2)), jnp.float32) for _ in range(2))
  c = jnp.array([0, 1, 2, 0, 1, 2])
  v = random_vars(D, xr, c)

  def losses(params):
    fr, dr = D.apply({"params": params}, xr, c, method=D.san_outputs)
    ff, df = D.apply({"params": params}, xf, c, method=D.san_outputs)
    return san.discriminator_loss(fr, dr, ff, df)[1]

  # One jitted program for both gradients (cheaper than op-by-op dispatch on CPU).
  g_fun, g_dir = jax.jit(lambda p: (jax.grad(lambda q: losses(q)["loss_fun"])(p),
                                    jax.grad(lambda q: losses(q)["loss_dir"])(p)))(v["params"])
  body = [k for k in g_fun if k != "san_head"]
  assert body  # fcs_*, out
  for k in body:
    assert all(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(g_fun[k])), k
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g_dir[k])), k
  assert np.all(np.asarray(g_fun["san_head"]["direction"]) == 0)
  assert np.any(np.asarray(g_fun["san_head"]["scale"]) != 0)
  assert np.any(np.asarray(g_dir["san_head"]["direction"]) != 0)
  assert np.all(np.asarray(g_dir["san_head"]["scale"]) == 0)
  # Plain forward == fun == dir in value.
  fr, dr = D.apply(v, xr, c, method=D.san_outputs)
  # The same body, then the 4-term head sum as one dot or split into norm * direction: a few
  # ulps of the O(3) products (seen exactly equal); atol for a logit that cancels near 0.
  np.testing.assert_allclose(D.apply(v, xr, c), fr, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fr, dr, rtol=1e-6, atol=1e-6)


def test_loss_from_features_matches_parts():
  rng = np.random.default_rng(2)
  hr, hf = (jnp.asarray(rng.standard_normal((5, 3)), jnp.float32) for _ in range(2))
  table = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
  scales = jnp.array([1.0, 2.0, 0.5, 1.5])
  cr, cf = jnp.array([0, 1, 2, 3, 0]), jnp.array([1, 1, 2, 0, 3])
  head_r, head_f = san.class_heads(table, cr, scales), san.class_heads(table, cf, scales)
  loss, m = san.discriminator_loss_from_features(hr, head_r, hf, head_f)
  fr, dr = san.san_logits(hr, *head_r)
  ff, df = san.san_logits(hf, *head_f)
  # The same 3-term logits and means of 5 through two call paths: a few ulps of O(1) (seen
  # exactly equal); atol for values that cancel near 0.
  np.testing.assert_allclose(loss, san.discriminator_loss(fr, dr, ff, df)[0], rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(m["real_logits"], fr, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(san.generator_loss_from_features(hf, head_f),
                             -jnp.mean(san.plain_logits(hf, *head_f)), rtol=1e-6, atol=1e-6)


def test_stylegan2_features_reproduce_logits_and_route_gradients():
  """The StyleGAN2 hook (capture_intermediates, no network change): h and cmap give D's
  logits exactly; the SAN D loss's direction term reaches only the label mapping."""
  from gandance_jax.networks import stylegan2  # pylint: disable=g-import-not-at-top
  D = stylegan2.Discriminator(num_classes=3, resolution=8, channel_base=64, channel_max=8,
                              mapping_layers=1, mbstd_group_size=2)
  v = stylegan2.init_discriminator(D, 0)
  rng = np.random.default_rng(3)
  xr, xf = (jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32) for _ in range(2))
  c = jnp.array([0, 2])

  @jax.jit
  def run(params):
    vv = {"params": params, "buffers": v["buffers"]}
    logits, h, head, offset = san.stylegan2_features(D, vv, xr, c)
    part = lambda i: lambda p: san.stylegan2_discriminator_loss(
        D, {"params": p, "buffers": v["buffers"]}, xr, c, xf, c)[1][i]
    return (logits, san.plain_logits(h, *head) + offset, jax.grad(part("loss_dir"))(params),
            jax.grad(part("loss_fun"))(params))

  logits, rebuilt, g_dir, g_fun = run(v["params"])
  # The same 8 products of O(1) (|logit| <= 1) in another order: a few ulps of O(1) (seen
  # 3e-8); a missing offset or 1/sqrt(F) is O(0.1).
  np.testing.assert_allclose(rebuilt, logits, rtol=1e-5, atol=1e-6)
  nonzero = lambda t: any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(t))
  assert nonzero(g_dir["mapping"]) and not nonzero(g_dir["b4"]) and not nonzero(g_dir["b8"])
  assert nonzero(g_fun["b4"]) and nonzero(g_fun["b8"])


def test_stylegan2_san_head_directions_only_follow_the_wasserstein_term():
  """D(head='san') (what train.loss='san' builds): StyleSAN-XL's split on the StyleGAN2 D.
  The hinge (function) term reaches the body and the table's scales, never its directions;
  the direction term reaches the directions only, as for the toy D above."""
  from gandance_jax.networks import stylegan2  # pylint: disable=g-import-not-at-top
  D = stylegan2.Discriminator(num_classes=3, empty_class=True, resolution=8, channel_base=64,
                              channel_max=8, mbstd_group_size=2, head="san")
  v = stylegan2.init_discriminator(D, 0)
  assert set(v["params"]["san_head"]) == {"direction", "scale"} and "mapping" not in v["params"]
  rng = np.random.default_rng(4)
  xr, xf = (jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32) for _ in range(2))
  c = jnp.array([0, 2, 3, 0])       # 3 = the empty class (its own row); no class 1

  @jax.jit
  def run(params):
    vv = {"params": params, "buffers": v["buffers"]}
    logits, h, head, offset = san.stylegan2_features(D, vv, xr, c)
    part = lambda i: lambda p: san.stylegan2_discriminator_loss(
        D, {"params": p, "buffers": v["buffers"]}, xr, c, xf, c)[1][i]
    return (logits, san.plain_logits(h, *head) + offset, jax.grad(part("loss_dir"))(params),
            jax.grad(part("loss_fun"))(params))

  logits, rebuilt, g_dir, g_fun = run(v["params"])
  # Plain logits = scale_c <unit_c, out(x)> / sqrt(F) (StyleSAN-XL keeps the 1/sqrt(F)):
  # the same products in another order, float32 rounding of sums of 8 terms.
  np.testing.assert_allclose(rebuilt, logits, rtol=1e-5, atol=1e-6)
  nonzero = lambda t: any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(t))
  assert nonzero(g_dir["san_head"]["direction"])
  assert not nonzero(g_dir["san_head"]["scale"])
  assert not nonzero(g_dir["b4"]) and not nonzero(g_dir["b8"])
  assert not nonzero(g_fun["san_head"]["direction"])        # exactly zero: the split holds
  assert nonzero(g_fun["san_head"]["scale"]) and nonzero(g_fun["b4"]) and nonzero(g_fun["b8"])
  # Rows of classes absent from the batch get no gradient.
  g_rows = np.abs(np.asarray(g_dir["san_head"]["direction"])).sum(axis=1)
  assert np.all(g_rows[[0, 2, 3]] > 0) and g_rows[1] == 0
  with pytest.raises(ValueError, match="head must be one of"):
    stylegan2.Discriminator(num_classes=3, resolution=8, head="table")
