"""Fused vs non-fused modulated convolution, and the per-tap GEMM convolution gradients.

Both are reassociations of the same sums, so they may differ only by float32 rounding. The
tolerances are forward error bounds of a float32 sum of products: a result built from K
products, each rounded a few times, is within (K + c) * eps * sum(|terms|) of the exact value,
for each of the two forms, so they differ by at most twice that. sum(|terms|) is the same
computation on absolute values (demodulation coefficients depend on squares only, so they
are unchanged by taking absolute values).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import layers
from gandance_jax.networks import stylegan2

EPS = float(np.finfo(np.float32).eps)


def _bound(num_terms: int, magnitude) -> np.ndarray:
  # Two forms, each within (K + 8) eps * sum|terms| (K products plus the handful of scalings
  # and the FIR taps' own sums, which are counted in num_terms by the caller).
  return 2 * (num_terms + 8) * EPS * np.asarray(magnitude)


CASES = [  # (up, down, kernel, padding)
    (1, 1, 3, 1),
    (2, 1, 3, 1),
    (1, 2, 3, 1),
    (1, 1, 1, 0),
]


@pytest.mark.parametrize("up,down,k,padding", CASES)
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_equals_non_fused(up, down, k, padding, demodulate):
  rng = np.random.default_rng(k * 10 + up + 3 * down)
  n, res, cin, cout = 3, 8, 6, 5
  x = jnp.asarray(rng.standard_normal((n, res, res, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
  s = jnp.asarray(rng.standard_normal((n, cin)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((1, res * up // down, res * up // down, 1)),
                      jnp.float32)
  f = jnp.asarray(layers.setup_filter([1, 3, 3, 1]))
  kw = dict(up=up, down=down, padding=padding, resample_filter=f, demodulate=demodulate,
            flip_weight=(up == 1))
  a = layers.modulated_conv2d(x, w, s, noise=noise, fused_modconv=False, **kw)
  b = layers.modulated_conv2d(x, w, s, noise=noise, fused_modconv=True, **kw)
  assert a.shape == b.shape == (n, res * up // down, res * up // down, cout)
  mag = layers.modulated_conv2d(jnp.abs(x), jnp.abs(w), jnp.abs(s), noise=jnp.abs(noise),
                                fused_modconv=False, **kw)
  # K = kh*kw*I products per output, then up to 4x4 FIR taps (twice when up and down).
  num_terms = k * k * cin + (2 * 16 if up > 1 or down > 1 else 0)
  bound = _bound(num_terms, mag)
  err = np.abs(np.asarray(a) - np.asarray(b))
  assert np.all(err <= bound), (
      f"fused vs non-fused differ by {err.max():.3g} where the rounding bound is "
      f"{bound.reshape(-1)[np.argmax(err - bound)]:.3g} (up={up}, down={down}, k={k})")
  # The forms really differ in how they compute (not the same code path twice).
  jaxpr_a = str(jax.make_jaxpr(lambda x: layers.modulated_conv2d(x, w, s, **kw))(x))
  jaxpr_b = str(jax.make_jaxpr(
      lambda x: layers.modulated_conv2d(x, w, s, fused_modconv=True, **kw))(x))
  assert jaxpr_a != jaxpr_b


def test_fused_auto_is_non_fused_on_cpu_and_fused_elsewhere():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 4, 4, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 2)), jnp.float32)
  s = jnp.asarray(rng.standard_normal((2, 3)), jnp.float32)
  trace = lambda fused: str(jax.make_jaxpr(
      lambda x: layers.modulated_conv2d(x, w, s, padding=1, fused_modconv=fused))(x))
  want_fused = jax.default_backend() != "cpu"
  assert trace(None) == trace(want_fused) and trace(None) != trace(not want_fused)


def test_generator_fused_modconv_option():
  G = stylegan2.Generator(z_dim=8, w_dim=8, num_classes=3, resolution=8, mapping_layers=1,
                          channel_base=64, channel_max=16)
  v = stylegan2.init_generator(G, 0)
  ws = jax.random.normal(jax.random.key(1), (2, G.num_ws, 8))
  synth = lambda fused, mode="const": G.apply(v, ws, noise_mode=mode, fused_modconv=fused,
                                              rngs={"noise": jax.random.key(2)},
                                              method=G.synthesis)
  non_fused, fused = synth(False), synth(True)
  # A loose sanity scale: per output, 3*3*16 products through 3 layers and the skip sums; the
  # images are O(1), so a rounding difference is ~1e-5; a wrong weight is O(1).
  np.testing.assert_allclose(fused, non_fused, rtol=0, atol=1e-4)
  np.testing.assert_array_equal(synth(None), fused if jax.default_backend() != "cpu"
                                else non_fused)  # auto: non-fused on the CPU (faster there)
  # Training mode (random noise) never fuses (NVIDIA: not in training); sampling chooses.
  trace = lambda mode, fused: str(jax.make_jaxpr(lambda ws: G.apply(
      v, ws, noise_mode=mode, fused_modconv=fused, rngs={"noise": jax.random.key(2)},
      method=G.synthesis))(ws))
  assert trace("random", None) == trace("random", False)
  assert trace("const", None) == trace("const", jax.default_backend() != "cpu")


CONV_CASES = [  # (up, down, kernel, padding, flip)
    (1, 1, 3, 1, True),
    (2, 1, 3, 1, False),
    (1, 2, 3, 1, True),
    (1, 2, 1, 0, True),
    (2, 1, 1, 0, False),
    (1, 1, 3, (1, 0, 2, 1), True),
]


@pytest.fixture
def taps_everywhere(monkeypatch):
  # The per-tap form at the small widths of these tests (layers.py uses it from 64/128 ch).
  monkeypatch.setattr(layers, "_TAPS_MIN_CHANNELS", 0)
  monkeypatch.setattr(layers, "_TAPS_MIN_CHANNELS_DILATED", 0)


@pytest.mark.parametrize("cin,cout,up,taps", [
    (16, 16, 1, False), (16, 16, 2, False), (64, 64, 1, False), (64, 64, 2, True),
    (128, 512, 1, True), (512, 127, 1, False)])
def test_conv_form_follows_channel_rule(cin, cout, up, taps):
  # The per-tap custom gradient appears in the program exactly where the rule says.
  x = jax.ShapeDtypeStruct((1, 4, 4, cin), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, cin, cout), jnp.float32)
  f = jnp.asarray(layers.setup_filter([1, 3, 3, 1]))
  conv = lambda x, w: jnp.sum(layers.conv2d_resample(x, w, f=f, up=up, padding=1))
  jaxpr = str(jax.make_jaxpr(jax.grad(conv, argnums=1))(x, w))
  assert ("custom_vjp_call" in jaxpr) == taps, jaxpr[:300]


@pytest.mark.usefixtures("taps_everywhere")
@pytest.mark.parametrize("up,down,k,padding,flip", CONV_CASES)
def test_conv_gradients_match_xla(monkeypatch, up, down, k, padding, flip):
  rng = np.random.default_rng(up + 2 * down + 5 * k)
  n, res, cin, cout = 2, 8, 5, 4
  x = jnp.asarray(rng.standard_normal((n, res, res, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
  f = jnp.asarray(layers.setup_filter([1, 3, 3, 1]))
  conv = lambda x, w: layers.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding,
                                             flip_weight=flip)
  y, vjp = jax.vjp(conv, x, w)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  dx, dw = vjp(g)
  with monkeypatch.context() as m:
    m.setattr(layers, "_conv_hwio", layers._conv_native)  # XLA's own convolution + autodiff
    y_ref, vjp_ref = jax.vjp(conv, x, w)
    dx_ref, dw_ref = vjp_ref(g)
    _, vjp_abs = jax.vjp(conv, jnp.abs(x), jnp.abs(w))
    dx_mag, dw_mag = vjp_abs(jnp.abs(g))
    y_mag = conv(jnp.abs(x), jnp.abs(w))
  # Products per element: y and dx sum over taps x channels (+ FIR taps); dw over all pixels.
  fir = 2 * 16 if up > 1 or down > 1 else 0
  for name, got, ref, mag, terms in [
      ("y", y, y_ref, y_mag, k * k * cin + fir),
      ("dx", dx, dx_ref, dx_mag, k * k * cout + fir),
      ("dw", dw, dw_ref, dw_mag, int(np.prod(y.shape[:3])) * 16 + fir)]:
    err = np.abs(np.asarray(got) - np.asarray(ref))
    bound = _bound(terms, mag)
    assert np.all(err <= bound), f"{name}: error {err.max():.3g} above its rounding bound"
  assert float(jnp.max(jnp.abs(dw_ref))) > 0  # the gradient is not trivially zero


@pytest.mark.usefixtures("taps_everywhere")
def test_conv_second_order_gradient():
  # R1 differentiates D's input gradient w.r.t. its weights: reverse over the custom rule.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  f = jnp.asarray(layers.setup_filter([1, 3, 3, 1]))

  def r1(w, conv_impl):
    orig = layers._conv_hwio
    layers._conv_hwio = conv_impl
    try:
      d = lambda x: jnp.sum(jnp.square(layers.conv2d_resample(x, w, f=f, down=2, padding=1)))
      return jnp.sum(jnp.square(jax.grad(d)(x)))
    finally:
      layers._conv_hwio = orig

  got = jax.grad(lambda w: r1(w, layers._conv_hwio))(w)
  ref = jax.grad(lambda w: r1(w, layers._conv_native))(w)
  # Fourth-degree sums over all pixels; a generous rounding scale relative to the largest.
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
