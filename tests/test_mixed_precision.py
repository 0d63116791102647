"""bfloat16 mixed precision (num_bf16_res): which blocks run in bfloat16, float32 outputs and
gradients, results close to float32, and a training step that stays finite."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import config_lib
from gandance_jax.networks import stylegan2
from gandance_jax.train import loop
from tests import _mp_common as common

NET = dict(resolution=32, img_channels=3, channel_base=256, channel_max=32, mapping_layers=2)


def _nets(n: int):
  G = stylegan2.Generator(z_dim=16, w_dim=16, num_classes=3, architecture="skip",
                          num_bf16_res=n, **NET)
  D = stylegan2.Discriminator(num_classes=3, architecture="resnet", num_bf16_res=n, **NET)
  return G, D


def _bf16_convs(fn, *args) -> tuple[int, int]:
  """(convolutions in bfloat16, all convolutions) in the jaxpr of fn(*args)."""
  lines = [l for l in str(jax.make_jaxpr(fn)(*args)).splitlines() if "conv_general_dilated" in l]
  return sum("bf16" in l for l in lines), len(lines)


@pytest.mark.parametrize("res, total, n, want", [
    (64, 64, 4, jnp.bfloat16), (8, 64, 4, jnp.bfloat16), (4, 64, 4, jnp.float32),
    (64, 64, 1, jnp.bfloat16), (32, 64, 1, jnp.float32), (4, 64, 10, jnp.float32),
    (8, 64, 10, jnp.bfloat16), (64, 64, 0, jnp.float32)])
def test_compute_dtype_follows_nvidias_rule(res, total, n, want):
  assert stylegan2.compute_dtype(res, total, n) == want


def test_outputs_close_to_float32_and_blocks_in_bfloat16():
  z = jax.random.normal(jax.random.key(2), (4, 16))
  c = jnp.array([0, 1, 2, 0])
  G0, D0 = _nets(0)
  g_vars = stylegan2.init_generator(G0, jax.random.key(0))
  d_vars = stylegan2.init_discriminator(D0, jax.random.key(1))
  # Jitted: op-by-op dispatch compiles every primitive of the networks one at a time.
  ref_img = jax.jit(lambda v: G0.apply(v, z, c, noise_mode="const"))(g_vars)
  ref_logits = jax.jit(lambda v: D0.apply(v, ref_img, c))(d_vars)
  counts = {}
  for n in (0, 2, 4):
    G, D = _nets(n)  # same parameters: mixed precision adds none
    img = jax.jit(lambda v, G=G: G.apply(v, z, c, noise_mode="const"))(g_vars)
    logits = jax.jit(lambda v, D=D: D.apply(v, ref_img, c))(d_vars)
    assert img.dtype == jnp.float32 and logits.dtype == jnp.float32
    scale = float(jnp.abs(ref_img).max())
    # bfloat16 keeps 8 bits of mantissa: each conv rounds its inputs and weights to 2^-9
    # relative (2e-3), which moves a K-term dot product by ~2 * 2e-3 of its typical size;
    # over <= 8 bfloat16 convs that random walk is ~1% of the output range (sqrt(8) * 4e-3).
    # 3% is 3x that; a wrong dtype rule or a missing cast-back breaks the dtype asserts and
    # a lost layer moves outputs by O(1).
    np.testing.assert_allclose(img, ref_img, rtol=0, atol=0.03 * scale)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=0.03)
    counts[n] = (_bf16_convs(lambda v: G.apply(v, z, c, noise_mode="const"), g_vars),
                 _bf16_convs(lambda v: D.apply(v, ref_img, c), d_vars))
  # G at 32 px, skip: block 4 has 1 conv + torgb; 8, 16, 32 have 2 convs + torgb (the image
  # skip path has no conv): 11. D resnet: fromrgb (32 only), then conv0, conv1, skip in
  # blocks 32, 16, 8, and the float32 epilogue conv: 11.
  (g0, g_all), (d0, d_all) = counts[0]
  assert g0 == 0 and d0 == 0
  (g2, _), (d2, _) = counts[2]   # 16 and 32 in bfloat16
  (g4, _), (d4, _) = counts[4]   # 8, 16, 32 (never 4)
  assert g2 == 6 and g4 == 9 and g_all == 11
  assert d2 == 7 and d4 == 10 and d_all == 11


def test_gradients_are_float32_and_finite():
  G, D = _nets(3)
  g_vars = stylegan2.init_generator(G, jax.random.key(0))
  d_vars = stylegan2.init_discriminator(D, jax.random.key(1))
  z = jax.random.normal(jax.random.key(2), (4, 16))
  c = jnp.array([0, 1, 2, 2])

  def g_loss(params):
    img = G.apply({**g_vars, "params": params}, z, c, noise_mode="const")
    return jax.nn.softplus(-D.apply(d_vars, img, c)).mean()

  grads = jax.jit(jax.grad(g_loss))(g_vars["params"])  # jit: see above
  for leaf in jax.tree.leaves(grads):
    assert leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf)))
  # R1 differentiates D with respect to the (float32) image.
  img = jax.jit(lambda v: G.apply(v, z, c, noise_mode="const"))(g_vars)
  r1 = jax.jit(jax.grad(lambda x: D.apply(d_vars, x, c).sum()))(img)
  assert r1.dtype == jnp.float32 and float(jnp.abs(r1).sum()) > 0


def test_invalid_setting_is_named():
  with pytest.raises(ValueError, match="num_bf16_res must be an integer >= 0, got -1"):
    stylegan2.Generator(num_classes=3, resolution=16, num_bf16_res=-1)
  with pytest.raises(ValueError, match="num_bf16_res"):
    stylegan2.Discriminator(num_classes=3, resolution=16, num_bf16_res=1.5)


def test_training_steps_stay_finite(tmp_path):
  """Every phase (G main + path length, D main + R1 through the bfloat16 blocks) at step 0."""
  config = common.tiny_config(generator__num_bf16_res=1, discriminator__num_bf16_res=1,
                              train__total_kimg=0.016, checkpoint_every_steps=2,
                              sample_every_steps=1000, log_every_steps=1)
  loop.train(config_lib.validate_config(config), str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  rows = [r for r in records if "loss/G" in r]
  assert rows and all(np.isfinite(r[k]) for r in rows for k in
                      ("loss/G", "loss/D", "loss/D_reg", "loss/G_reg") if k in r)
  assert any("loss/D_reg" in r for r in rows) and any("loss/G_reg" in r for r in rows)
