"""NVIDIA's ADA AugmentPipe (train/augment_pipe.py) against independent numpy transcriptions
of stylegan2-ada-pytorch `training/augment.py`, `upfirdn2d` and `grid_sample`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from gandance_jax.train import augment_pipe as ap
from tests.conftest import REPO_ROOT

EPS32 = float(np.finfo(np.float32).eps)
warp = jax.jit(ap.warp)   # one compile per image shape instead of op-by-op dispatch

# ---------------------------------------------------------------------------------------
# Independent numpy transcriptions (float64) of the reference.


def np_translate2d(tx, ty):
  return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], float)


def np_scale2d(sx, sy):
  return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], float)


def np_rotate2d(t):
  return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def np_geometric_matrix(xflip, rot90, xint, scale, rot_pre, aniso, rot_post, xfrac):
  """augment.py: G_inv = I @ scale2d_inv(1 - 2i, 1) @ rotate2d_inv(-pi/2 i) @ ..."""
  g = np.eye(3)
  g = g @ np.linalg.inv(np_scale2d(1 - 2 * xflip, 1))
  g = g @ np.linalg.inv(np_rotate2d(-np.pi / 2 * rot90))
  g = g @ np.linalg.inv(np_translate2d(*xint))
  g = g @ np.linalg.inv(np_scale2d(scale, scale))
  g = g @ np.linalg.inv(np_rotate2d(-rot_pre))
  g = g @ np.linalg.inv(np_scale2d(aniso, 1 / aniso))
  g = g @ np.linalg.inv(np_rotate2d(-rot_post))
  g = g @ np.linalg.inv(np_translate2d(*xfrac))
  return g


def np_upfirdn_1d(x, f, axis, up=1, down=1, pad=(0, 0), flip_filter=False, gain=1.0):
  """upfirdn2d `_upfirdn2d_ref` along one axis (the separable filter's half)."""
  x = np.moveaxis(x, axis, 0)
  n = x.shape[0]
  z = np.zeros((n * up,) + x.shape[1:])
  z[::up] = x
  z = np.concatenate([np.zeros((max(pad[0], 0),) + x.shape[1:]), z,
                      np.zeros((max(pad[1], 0),) + x.shape[1:])])
  z = z[max(-pad[0], 0):z.shape[0] - max(-pad[1], 0)]
  f = np.asarray(f) * np.sqrt(gain)
  if not flip_filter:
    f = f[::-1]
  out = np.stack([np.tensordot(f, z[i:i + len(f)], axes=(0, 0))
                  for i in range(z.shape[0] - len(f) + 1)])
  return np.moveaxis(out[::down], 0, axis)


def np_upfirdn2d(x, f, **kwargs):
  """x [H, W, C]; a separable filter (scaled by sqrt(gain)) along x then along y."""
  gain = kwargs.pop("gain", 1.0)
  pad = kwargs.pop("padding")
  x = np_upfirdn_1d(x, f, 1, pad=pad[0:2], gain=gain, **kwargs)
  return np_upfirdn_1d(x, f, 0, pad=pad[2:4], gain=gain, **kwargs)


def np_grid_sample(img, grid):
  """torch grid_sample(bilinear, zeros, align_corners=False); img [H, W, C], grid [h, w, 2]."""
  h, w, _ = img.shape
  ix = ((grid[..., 0] + 1) * w - 1) / 2
  iy = ((grid[..., 1] + 1) * h - 1) / 2
  x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
  out = np.zeros(grid.shape[:2] + img.shape[2:])
  for dy in (0, 1):
    for dx in (0, 1):
      yy, xx = y0 + dy, x0 + dx
      wgt = (1 - np.abs(ix - xx)) * (1 - np.abs(iy - yy))
      ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
      val = img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
      out += np.where(ok[..., None], val * wgt[..., None], 0)
  return out


def np_reference_geometry(img, g_inv):
  """The 'Execute geometric transformations' block of AugmentPipe.forward, batch of one."""
  h, w, _ = img.shape
  f = np.asarray(ap.SYM6) / np.sum(ap.SYM6)
  hz_pad = len(f) // 4
  cx, cy = (w - 1) / 2, (h - 1) / 2
  cp = np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], float)
  cp = g_inv @ cp.T
  margin = cp[:2, :]
  margin = np.concatenate([-margin, margin]).max(axis=1)
  margin = margin + np.array([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2)
  margin = np.maximum(margin, 0)
  margin = np.minimum(margin, [w - 1, h - 1] * 2)
  mx0, my0, mx1, my1 = np.ceil(margin).astype(int)
  img = np.pad(img, ((my0, my1), (mx0, mx1), (0, 0)), mode="reflect")
  g = np_translate2d((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv
  fw = len(f)
  img = np_upfirdn2d(img, f, up=2, gain=4,
                     padding=[(fw + 1) // 2, (fw - 2) // 2] * 2)   # upsample2d
  g = np_scale2d(2, 2) @ g @ np_scale2d(0.5, 0.5)
  g = np_translate2d(-0.5, -0.5) @ g @ np_translate2d(0.5, 0.5)
  out_h, out_w = (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2
  g = (np_scale2d(2 / img.shape[1], 2 / img.shape[0]) @ g @
       np_scale2d(out_w / 2, out_h / 2))
  # affine_grid(align_corners=False): pixel centres at (2i + 1) / n - 1.
  xs = (2 * np.arange(out_w) + 1) / out_w - 1
  ys = (2 * np.arange(out_h) + 1) / out_h - 1
  base = np.stack(list(np.meshgrid(xs, ys, indexing="xy")) + [np.ones((out_h, out_w))], -1)
  grid = base @ g[:2, :].T
  img = np_grid_sample(img, grid)
  pad = -hz_pad * 2                                                 # downsample2d
  return np_upfirdn2d(img, f, down=2, flip_filter=True,
                      padding=[pad + (fw - 1) // 2, pad + (fw - 2) // 2] * 2)


def np_color_matrix(b, c, lumaflip, hue, sat):
  v = np.array([1, 1, 1, 0]) / np.sqrt(3)
  vv = np.outer(v, v)
  m = np.eye(4)
  t = np.eye(4)
  t[:3, 3] = b
  m = t @ m
  m = np.diag([c, c, c, 1.0]) @ m
  m = (np.eye(4) - 2 * vv * lumaflip) @ m
  k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])   # cross-product
  rot = np.eye(4)
  rot[:3, :3] = np.eye(3) * np.cos(hue) + np.sin(hue) * k + (1 - np.cos(hue)) * vv[:3, :3]
  m = rot @ m
  m = (vv + (np.eye(4) - vv) * sat) @ m
  return m


def np_filter_bank():
  """The reference's Hz_fbank construction (scipy.signal.convolve on the 2D bank)."""
  lo = np.asarray(ap.SYM2)
  hi = lo * ((-1) ** np.arange(lo.size))
  lo2 = np.convolve(lo, lo[::-1]) / 2
  hi2 = np.convolve(hi, hi[::-1]) / 2
  fb = np.eye(4, 1)
  for i in range(1, fb.shape[0]):
    fb = np.dstack([fb, np.zeros_like(fb)]).reshape(fb.shape[0], -1)[:, :-1]
    fb = scipy.signal.convolve(fb, [lo2])
    fb[i, (fb.shape[1] - hi2.size) // 2:(fb.shape[1] + hi2.size) // 2] += hi2
  return fb


def identity_params(**overrides):
  """AugmentParams with every op off, then `overrides` (gates switched on for them)."""
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  values = dict(xflip=0, rotate90=0, xint=[0, 0], scale=1, rotate_pre=0, aniso=1,
                rotate_post=0, xfrac=[0, 0], brightness=0, contrast=1, lumaflip=0, hue=0,
                saturation=1, imgfilter=[1, 1, 1, 1], noise_sigma=0, cutout_size=0,
                cutout_center=[0.5, 0.5])
  gate_of = {"noise_sigma": "noise", "cutout_size": "cutout"}
  gates = {g: jnp.asarray(False) for g in
           ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post",
            "xfrac", "brightness", "contrast", "lumaflip", "hue", "saturation", "noise",
            "cutout", "imgfilter0", "imgfilter1", "imgfilter2", "imgfilter3")}
  for name, value in overrides.items():
    values[name] = value
    if name == "imgfilter":
      for band in range(4):
        gates[f"imgfilter{band}"] = jnp.asarray(True)
    elif name != "cutout_center":
      gates[gate_of.get(name, name)] = jnp.asarray(True)
  return ap.AugmentParams(gates=gates, **{k: f32(v) for k, v in values.items()})


# ---------------------------------------------------------------------------------------
# Spec and presets.

# stylegan2-ada-pytorch train.py `augpipe_specs`.
REFERENCE_PRESETS = {
    "blit": dict(xflip=1, rotate90=1, xint=1),
    "geom": dict(scale=1, rotate=1, aniso=1, xfrac=1),
    "color": dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "filter": dict(imgfilter=1),
    "noise": dict(noise=1),
    "cutout": dict(cutout=1),
    "bg": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
    "bgc": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "bgcf": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                 brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1, imgfilter=1),
    "bgcfn": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                  brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1, imgfilter=1,
                  noise=1),
    "bgcfnc": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                   brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1, imgfilter=1,
                   noise=1, cutout=1),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PRESETS))
def test_preset_multipliers_and_ranges_equal_the_reference(name):
  spec = ap.AugmentSpec.from_preset(name)
  assert {op: getattr(spec, op) for op in ap.OPS if getattr(spec, op)} == REFERENCE_PRESETS[name]
  # AugmentPipe's default ranges.
  assert (spec.xint_max, spec.scale_std, spec.rotate_max, spec.aniso_std, spec.xfrac_std,
          spec.brightness_std, spec.contrast_std, spec.hue_max, spec.saturation_std,
          spec.imgfilter_bands, spec.imgfilter_std, spec.noise_std, spec.cutout_size) == (
              0.125, 0.2, 1, 0.2, 0.125, 0.2, 0.5, 1, 1, (1, 1, 1, 1), 1, 0.1, 0.5)


def test_spec_errors_name_the_value():
  with pytest.raises(ValueError, match="'bgx'.*allowed presets"):
    ap.AugmentSpec.from_preset("bgx")
  with pytest.raises(ValueError, match="AugmentSpec.scale_std = -1"):
    ap.AugmentSpec(scale_std=-1)
  with pytest.raises(ValueError, match="imgfilter_bands"):
    ap.AugmentSpec(imgfilter_bands=(1, 1))


# ---------------------------------------------------------------------------------------
# Draws: gate probabilities and distributions.

N_DRAWS = 20000
P = 0.4
# Multipliers chosen so that p * m spans 0, (0, 1) and >= 1 (always fires).
DRAW_SPEC = ap.AugmentSpec(xflip=1, rotate90=0.5, xint=0.25, scale=1, rotate=2, aniso=0.75,
                           xfrac=1, brightness=1, contrast=0.5, lumaflip=1, hue=1,
                           saturation=3, imgfilter=1, imgfilter_bands=(1, 0.5, 0, 2),
                           noise=1, cutout=0.5)
IMAGE_SHAPE = (16, 12, 3)


@pytest.fixture(scope="module")
def all_draws():
  """N_DRAWS draws for an RGB image and for a grey one (one compile)."""
  keys = jax.random.split(jax.random.key(7), N_DRAWS)
  fn = jax.jit(jax.vmap(lambda k: (ap.draw_params(k, P, DRAW_SPEC, IMAGE_SHAPE),
                                   ap.draw_params(k, P, DRAW_SPEC, IMAGE_SHAPE[:2] + (1,)))))
  return jax.tree.map(np.asarray, fn(keys))


@pytest.fixture(scope="module")
def draws(all_draws):
  return all_draws[0]


def _binomial_ok(count, n, q, z=5.0):
  """|count / n - q| within z binomial standard deviations (z = 5: a false alarm 6e-7 per
  check); q in {0, 1} must be exact."""
  if q in (0.0, 1.0):
    return count == q * n
  return abs(count / n - q) <= z * np.sqrt(q * (1 - q) / n)


def test_gate_probability_is_p_times_multiplier(draws):
  gates = draws.gates
  for op in ("xflip", "rotate90", "xint", "scale", "aniso", "xfrac", "brightness",
             "contrast", "lumaflip", "hue", "saturation", "noise", "cutout"):
    q = min(1.0, P * getattr(DRAW_SPEC, op))
    assert _binomial_ok(gates[op].sum(), N_DRAWS, q), (op, gates[op].mean(), q)
  # Rotation: pre OR post with probability p * rotate (= 0.8), each alone with p_rot.
  q = min(1.0, P * DRAW_SPEC.rotate)
  either = gates["rotate_pre"] | gates["rotate_post"]
  assert _binomial_ok(either.sum(), N_DRAWS, q), either.mean()
  p_rot = 1 - np.sqrt(1 - q)
  assert _binomial_ok(gates["rotate_pre"].sum(), N_DRAWS, p_rot)
  for band, strength in enumerate(DRAW_SPEC.imgfilter_bands):
    q = min(1.0, P * DRAW_SPEC.imgfilter * strength)
    assert _binomial_ok(gates[f"imgfilter{band}"].sum(), N_DRAWS, q), band


def test_gates_off_give_identity_values(draws):
  off = lambda op: ~draws.gates[op]
  for field, gate, identity in [("xflip", "xflip", 0), ("rotate90", "rotate90", 0),
                                ("scale", "scale", 1), ("rotate_pre", "rotate_pre", 0),
                                ("aniso", "aniso", 1), ("rotate_post", "rotate_post", 0),
                                ("brightness", "brightness", 0), ("contrast", "contrast", 1),
                                ("lumaflip", "lumaflip", 0), ("hue", "hue", 0),
                                ("saturation", "saturation", 1), ("noise_sigma", "noise", 0),
                                ("cutout_size", "cutout", 0)]:
    assert np.all(getattr(draws, field)[off(gate)] == identity), field
  assert np.all(draws.xint[off("xint")] == 0) and np.all(draws.xfrac[off("xfrac")] == 0)
  assert np.all(draws.imgfilter[:, 2] == 1)                        # band multiplier 0


def _standard_normal_ok(z):
  """Mean and variance of n standard normals within 5 standard errors."""
  n = z.size
  return abs(z.mean()) <= 5 / np.sqrt(n) and abs(z.var() - 1) <= 5 * np.sqrt(2 / n)


def test_parameter_distributions(draws):
  g, s = draws.gates, DRAW_SPEC
  height, width, _ = IMAGE_SHAPE
  # Log-normal factors: log2(factor) / std ~ N(0, 1).
  for field, gate, std in [("scale", "scale", s.scale_std), ("aniso", "aniso", s.aniso_std),
                           ("contrast", "contrast", s.contrast_std),
                           ("saturation", "saturation", s.saturation_std)]:
    assert _standard_normal_ok(np.log2(getattr(draws, field)[g[gate]]) / std), field
  for band in (0, 1, 3):
    assert _standard_normal_ok(np.log2(draws.imgfilter[g[f"imgfilter{band}"], band])
                               / s.imgfilter_std), band
  assert _standard_normal_ok(draws.brightness[g["brightness"]] / s.brightness_std)
  assert _standard_normal_ok(draws.xfrac[g["xfrac"]] / (s.xfrac_std * np.array([width, height])))
  # Noise std: half-normal, E|z| = sqrt(2 / pi), E z^2 = 1.
  z = draws.noise_sigma[g["noise"]] / s.noise_std
  assert abs(z.mean() - np.sqrt(2 / np.pi)) <= 5 * np.sqrt((1 - 2 / np.pi) / z.size)
  # Angles uniform on [-pi max, pi max): mean 0, variance 1/3 in units of pi max.
  for field, max_turn in [("rotate_pre", s.rotate_max), ("rotate_post", s.rotate_max),
                          ("hue", s.hue_max)]:
    a = getattr(draws, field)[g[field]] / (np.pi * max_turn)
    assert np.all(np.abs(a) <= 1)
    assert abs(a.mean()) <= 5 * np.sqrt(1 / 3 / a.size), field
    assert abs((a ** 2).mean() - 1 / 3) <= 5 * np.sqrt((1 / 5 - 1 / 9) / a.size), field
  # Discrete choices: xflip and luma flip 1/2, rotate90 uniform on 0..3.
  for field, values in [("xflip", 2), ("lumaflip", 2), ("rotate90", 4)]:
    v = getattr(draws, field)[g[field]]
    for k in range(values):
      assert _binomial_ok((v == k).sum(), v.size, 1 / values), (field, k)
  # Integer translation: round(U(-1, 1) * 0.125 * size) with ties to even; width 12 -> t in
  # [-1.5, 1.5): {-2 (at -1.5 only), -1: [-1.5, -0.5], 0: (-0.5, 0.5), 1: [0.5, 1.5)}.
  tx = draws.xint[g["xint"], 0]
  for k, q in [(-1, 1 / 3), (0, 1 / 3), (1, 1 / 3)]:
    assert _binomial_ok((tx == k).sum(), tx.size, q), k
  ty = draws.xint[g["xint"], 1]                                     # height 16: t in [-2, 2)
  for k, q in [(-2, 1 / 8), (-1, 1 / 4), (0, 1 / 4), (1, 1 / 4), (2, 1 / 8)]:
    assert _binomial_ok((ty == k).sum(), ty.size, q), k
  c = draws.cutout_center
  assert np.all((c >= 0) & (c < 1)) and _binomial_ok((c[:, 0] < 0.25).sum(), c.shape[0], 0.25)


def test_grey_images_draw_no_hue_or_saturation(all_draws):
  rgb, grey = all_draws
  assert not grey.gates["hue"].any() and not grey.gates["saturation"].any()
  assert np.all(grey.hue == 0) and np.all(grey.saturation == 1)
  # The other draws do not depend on the channel count.
  np.testing.assert_array_equal(grey.gates["contrast"], rgb.gates["contrast"])
  np.testing.assert_array_equal(grey.scale, rgb.scale)


# ---------------------------------------------------------------------------------------
# Geometry.

def _bound_composition(mats, terms=3):
  """Float32 rounding bound of a product of k 3x3 matrices: each product adds at most
  3 eps relative error per term, so |error| <= 3 k eps prod ||M_i||_inf (entrywise)."""
  norm = np.prod([np.abs(m).sum(axis=1).max() for m in mats])
  return terms * len(mats) * EPS32 * norm


GEOM_CASES = [  # xflip, rot90, xint, scale, rot_pre, aniso, rot_post, xfrac
    (1, 0, (0, 0), 1, 0, 1, 0, (0, 0)),
    (0, 3, (2, -1), 1, 0, 1, 0, (0, 0)),
    (1, 1, (-1, 2), 1.3, 0.4, 0.8, -2.2, (0.7, -1.3)),
    (0, 2, (0, 0), 0.35, 2.9, 1.6, 0, (2.5, 0.25)),                  # clipped margins
    (0, 0, (0, 0), 2.4, -1.0, 1, 0.3, (-0.4, 0)),
    # Margin clipped on the left only: the zeros beyond this image's own right margin
    # matter (the canvas masks; without them 10 x 12 images differ by ~0.03).
    (0, 0, (0, 0), 0.4, 0, 0.75, 0, (3, 0)),
]


@pytest.mark.parametrize("case", GEOM_CASES)
def test_geometric_matrix_matches_reference_formula(case):
  xflip, rot90, xint, scale, rot_pre, aniso, rot_post, xfrac = case
  params = identity_params(xflip=xflip, rotate90=rot90, xint=xint, scale=scale,
                           rotate_pre=rot_pre, aniso=aniso, rotate_post=rot_post, xfrac=xfrac)
  want = np_geometric_matrix(*case)
  got = np.asarray(ap.geometric_matrix(params))
  factors = [np_scale2d(1, 1), np_rotate2d(0), np_translate2d(*xint),
             np_scale2d(1 / scale, 1 / scale), np_rotate2d(0), np_scale2d(1 / aniso, aniso),
             np_rotate2d(0), np_translate2d(*xfrac)]
  np.testing.assert_allclose(got, want, rtol=0, atol=_bound_composition(factors))


@pytest.mark.parametrize("shape", [(8, 8, 3), (10, 12, 1)])
@pytest.mark.parametrize("case", GEOM_CASES)
def test_warp_matches_reference_transcription(case, shape):
  image = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
  g_inv = np.asarray(ap.geometric_matrix(identity_params(
      xflip=case[0], rotate90=case[1], xint=case[2], scale=case[3], rotate_pre=case[4],
      aniso=case[5], rotate_post=case[6], xfrac=case[7])))
  want = np_reference_geometry(image.astype(float), g_inv.astype(float))
  got = np.asarray(warp(jnp.asarray(image), jnp.asarray(g_inv)))
  # Float32 against float64 on the same G_inv (its float32 value). L1 gains: up-sampling
  # 2 l1 per axis, bilinear 1, down-sampling l1 per axis, so |intermediate| <= A =
  # 4 l1^4 max|x|. Arithmetic: each of the 12 + 12 + 4 + 12 + 12 sums adds <= n eps of
  # its L1 mass (<= A): 52 eps A. Sample coordinates (|s| <= S, the canvas size) carry
  # <= 8 eps S of rounding (affine map of 3 terms, 5 matrix factors); bilinear values
  # move by <= |du/ds| <= 2 max|U| (neighbour difference) per unit, 2 axes, times the
  # down-sampling gain l1^2.
  l1 = np.abs(ap.GEOM_FILTER).sum()
  big_a = 4 * l1 ** 4 * np.abs(image).max()
  max_u = 4 * l1 ** 2 * np.abs(image).max()
  canvas = 6 * max(shape[:2])
  tol = 52 * EPS32 * big_a + 2 * (8 * EPS32 * canvas) * 2 * max_u * l1 ** 2
  np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_identity_matrix_warp_is_identity_up_to_rounding():
  # sym6 is orthogonal: down(up(x)) = x exactly in exact arithmetic (reference behaviour).
  image = np.random.default_rng(2).uniform(-1, 1, (8, 8, 3)).astype(np.float32)
  got = np.asarray(warp(jnp.asarray(image), jnp.eye(3)))
  l1 = np.abs(ap.GEOM_FILTER).sum()
  np.testing.assert_allclose(got, image, rtol=0, atol=52 * EPS32 * 4 * l1 ** 4)


@pytest.mark.parametrize("linear", [
    np_rotate2d(0.3), np_rotate2d(2.5), np_rotate2d(np.pi), np_rotate2d(np.pi / 2),
    np_scale2d(-1, 1), np_scale2d(1 / 1.3, 1 / 1.3), np_scale2d(1 / 0.8, 1 / 0.8)])
def test_geometric_ops_preserve_a_centred_disc(linear):
  """A centred Gaussian disc g (sigma 2 px) comes out as g(A p) (A = G_inv): unchanged by
  rotations and flips, radius scaled by 1/s for isotropic scaling."""
  size, sigma = 32, 2.0
  yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
  disc = lambda x, y: np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
  a = linear[:2, :2]
  mapped = np.einsum("ij,jhw->ihw", a, np.stack([xx, yy]))
  want = disc(*mapped)
  got = np.asarray(warp(jnp.asarray(disc(xx, yy)[..., None], jnp.float32),
                        jnp.asarray(linear, jnp.float32)))[..., 0]
  # Interpolation error. (1) The up-sampler reproduces a ramp offset by tau (the sym6
  # filter's centroid against the grid convention, computed here); down(up) cancels it,
  # but G_inv acts between them, leaving a shift (I - A) tau: error <= max|grad g| |(I-A)
  # tau|, max|grad g| = 1 / (sigma sqrt(e)). sym6's second central moment is 0, so the
  # blur terms vanish. (2) Bilinear interpolation of the up-sampled image (spacing 1/2 px):
  # <= (h^2 / 8)(|g_xx| + |g_yy|) = max|g''| / 16 = 1 / (16 sigma^2), times the down-
  # sampler's gain l1^2. Compared only where every tap lies inside the image (radius
  # size/2 - 7.5: 3 px down, 1/2 px bilinear, 3 px up), so padding plays no part.
  n = np.arange(40.0)
  ramp_up = np_upfirdn_1d(n[:, None], ap.GEOM_FILTER, 0, up=2, gain=4,
                          pad=((12 + 1) // 2, (12 - 2) // 2))[:, 0]
  tau = (ramp_up - np.arange(80) / 2)[20:60]                       # away from the ends
  tau = np.abs(tau).max()
  shift = np.linalg.norm((np.eye(2) - a) @ np.array([tau, tau]))
  l1 = np.abs(ap.GEOM_FILTER).sum()
  rounding = 52 * EPS32 * 4 * l1 ** 4                 # as in the transcription test, |g| <= 1
  bound = shift / (sigma * np.sqrt(np.e)) + l1 ** 2 / (16 * sigma ** 2) + rounding
  # The test can fail: the output moved by 1/2 px (a centre convention off by one
  # up-sampled pixel) differs from g(A p) by more than the bound.
  assert bound < np.abs(disc(xx - 0.5, yy) - disc(xx, yy)).max()
  inside = np.hypot(xx, yy) <= size / 2 - 7.5
  err = np.abs(got - want)[inside].max()
  assert err <= bound, (err, bound)


# ---------------------------------------------------------------------------------------
# Colour.

def test_zero_colour_parameters_give_the_identity_matrix():
  c = np.asarray(ap.color_matrix(identity_params()))
  # Only saturation 1 rounds: v v^T + (I - v v^T) has 1/3 + 2/3 on the diagonal (<= 2 eps).
  np.testing.assert_allclose(c, np.eye(4), rtol=0, atol=2 * EPS32)


@pytest.mark.parametrize("op,value", [("brightness", 0.3), ("contrast", 1.7), ("lumaflip", 1),
                                      ("hue", 2.1), ("saturation", 0.4)])
def test_each_colour_op_matches_reference_formula(op, value):
  args = dict(b=0.0, c=1.0, lumaflip=0, hue=0.0, sat=1.0)
  args[{"brightness": "b", "contrast": "c", "saturation": "sat"}.get(op, op)] = value
  want = np_color_matrix(**args)
  got = np.asarray(ap.color_matrix(identity_params(**{op: value})))
  # Five 4x4 products of matrices with entries <= 2 (|value| <= 2.1): 4 eps per product term.
  np.testing.assert_allclose(got, want, rtol=0, atol=5 * 4 * EPS32 * 4 ** 5)


def test_colour_composition_and_application_match_reference():
  params = identity_params(brightness=-0.2, contrast=0.7, lumaflip=1, hue=-1.2,
                           saturation=2.5)
  want_c = np_color_matrix(-0.2, 0.7, 1, -1.2, 2.5)
  c = np.asarray(ap.color_matrix(params))
  np.testing.assert_allclose(c, want_c, rtol=0, atol=5 * 4 * EPS32 * 4 ** 5)
  rng = np.random.default_rng(3)
  rgb = rng.uniform(-1, 1, (5, 4, 3)).astype(np.float32)
  want = rgb.astype(float) @ c[:3, :3].T.astype(float) + c[:3, 3]
  np.testing.assert_allclose(np.asarray(ap.apply_color(jnp.asarray(rgb), jnp.asarray(c))),
                             want, rtol=0, atol=4 * 4 * EPS32 * np.abs(c).sum(1).max())
  grey = rgb[..., :1]
  row = c[:3, :].astype(float).mean(axis=0)                        # the reference's C mean
  want = grey * row[:3].sum() + row[3]
  np.testing.assert_allclose(np.asarray(ap.apply_color(jnp.asarray(grey), jnp.asarray(c))),
                             want, rtol=0, atol=8 * 4 * EPS32 * np.abs(c).sum(1).max())
  with pytest.raises(ValueError, match="2 channels"):
    ap.apply_color(jnp.zeros((2, 2, 2)), jnp.asarray(c))


# ---------------------------------------------------------------------------------------
# Filter, noise, cutout.

def test_filter_bank_matches_reference_and_reconstructs():
  np.testing.assert_allclose(ap.filter_bank(), np_filter_bank(), rtol=0, atol=1e-15)
  impulse = np.zeros(43)
  impulse[21] = 1
  # The tabulated sym2 taps are orthonormal only to d ~ 6e-13 (sum h_k h_{k+2m} - delta_m);
  # lo2 + hi2 = delta + O(2 d) at each of 3 levels, carried by lo2's L1 gain per level.
  h = np.asarray(ap.SYM2)
  d = max(abs((h ** 2).sum() - 1), abs((h[:2] * h[2:]).sum()))
  lo2_l1 = np.abs(np.convolve(h, h[::-1]) / 2).sum()
  np.testing.assert_allclose(ap.filter_bank().sum(axis=0), impulse, rtol=0,
                             atol=3 * 2 * d * lo2_l1 ** 3 + 1e-15)


def test_image_filter_matches_reference_transcription():
  gains = np.array([1.7, 0.5, 1.0, 2.6])
  # The reference's loop: each band's gain normalised to the expected power, accumulated.
  g = np.ones(4)
  power = np.array([10, 1, 1, 1]) / 13
  for i in range(4):
    t = np.ones(4)
    t[i] = gains[i]
    g = g * t / np.sqrt((power * t ** 2).sum())
  taps = g @ np_filter_bank()
  image = np.random.default_rng(4).uniform(-1, 1, (24, 26, 3))
  p = len(taps) // 2
  padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
  rows = np.stack([np.tensordot(taps, padded[:, j:j + len(taps)], axes=(0, 1))
                   for j in range(image.shape[1])], axis=1)
  want = np.stack([np.tensordot(taps, rows[i:i + len(taps)], axes=(0, 0))
                   for i in range(image.shape[0])])
  got_taps = ap.filter_taps(jnp.asarray(gains, jnp.float32))
  got = np.asarray(ap.apply_filter(jnp.asarray(image, jnp.float32), got_taps))
  # Two 43-term sums, each <= 43 eps of its L1 mass; taps from 4 rounded normalisations.
  l1 = np.abs(taps).sum()
  np.testing.assert_allclose(np.asarray(got_taps), taps, rtol=0, atol=64 * EPS32 * l1)
  np.testing.assert_allclose(got, want, rtol=0, atol=(2 * 43 + 2 * 64) * EPS32 * l1 ** 2)


def test_noise_and_cutout_match_reference():
  spec = ap.AugmentSpec(noise=1, cutout=1)
  rng = np.random.default_rng(5)
  image = rng.uniform(-1, 1, (6, 10, 3)).astype(np.float32)
  noise = rng.standard_normal(image.shape).astype(np.float32)
  params = identity_params(noise_sigma=0.3, cutout_size=0.5, cutout_center=[0.33, 0.8])
  got = np.asarray(ap.apply_params(jnp.asarray(image), params, spec, jnp.asarray(noise)))
  noisy = image + noise * np.float32(0.3)
  x = (np.arange(10) + 0.5) / 10
  y = (np.arange(6) + 0.5) / 6
  keep = (np.abs(x - 0.33)[None, :] >= 0.25) | (np.abs(y - 0.8)[:, None] >= 0.25)
  np.testing.assert_array_equal(got, noisy * keep[..., None])
  assert (~keep).sum() == 5 * 3                    # centres x in (0.08, 0.58), y in (0.55, 1)


# ---------------------------------------------------------------------------------------
# The batch function.

BATCH = 4
BGCFNC = ap.AugmentSpec.from_preset("bgcfnc")


@pytest.fixture(scope="module")
def augment_and_grad():
  """One compile for the batch tests: (augment(keys, x, p), d sum(augment * w) / dx)."""
  def fn(keys, x, p, weights):
    out, vjp = jax.vjp(lambda im: ap.augment(keys, im, p, BGCFNC), x)
    return out, vjp(weights)[0]
  return jax.jit(fn)


def _images(shape=(BATCH, 24, 24, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def test_identity_at_p0_bit_for_bit(augment_and_grad):
  x = _images()
  keys = jax.random.split(jax.random.key(1), BATCH)
  out, grad = augment_and_grad(keys, x, 0.0, x)
  np.testing.assert_array_equal(np.asarray(out), x)
  np.testing.assert_array_equal(np.asarray(grad), x)               # identity Jacobian
  # p > 0 so tiny that no gate fires: the per-image skip path, not the batch-level one.
  np.testing.assert_array_equal(np.asarray(augment_and_grad(keys, x, 1e-12, x)[0]), x)


def test_gradients_are_finite_and_flow_through_every_op(augment_and_grad):
  # p = 1 fires every op of 'bgcfnc' in every image (p * multiplier = 1 > U).
  x = _images()
  weights = _images(seed=6)
  keys = jax.random.split(jax.random.key(5), BATCH)
  out, grad = (np.asarray(a) for a in augment_and_grad(keys, x, 1.0, weights))
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
  assert np.all(np.abs(grad).sum(axis=(1, 2, 3)) > 0)
  assert not np.allclose(grad, np.asarray(weights))                # not the identity's


def test_each_image_depends_only_on_its_key(augment_and_grad):
  x = _images()
  keys = jax.random.split(jax.random.key(3), BATCH)
  full = np.asarray(augment_and_grad(keys, x, 1.0, x)[0])
  perm = np.array([2, 0, 3, 1])
  permuted = np.asarray(augment_and_grad(keys[perm], x[perm], 1.0, x)[0])
  np.testing.assert_array_equal(permuted, full[perm])
  # One key: image i uses fold_in(key, i).
  key = jax.random.key(4)
  folded = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(BATCH))
  np.testing.assert_array_equal(jax.random.key_data(ap.sample_keys(key, BATCH)),
                                jax.random.key_data(folded))
  with pytest.raises(ValueError, match="3 keys for a batch of 4"):
    ap.sample_keys(keys[:3], BATCH)


def test_r1_penalty_differentiates_through_the_pipeline():
  """R1 needs d/dtheta ||dD(aug(x))/dx||^2: second derivatives through warp (gathers,
  masks), colour and the rest. A toy D(y) = sum tanh(theta * y)."""
  x = _images((2, 8, 8, 3), seed=8)
  theta = jnp.asarray(np.random.default_rng(9).standard_normal((8, 8, 3)), jnp.float32)
  spec = ap.AugmentSpec.from_preset("bgc")

  def r1(th):
    grad_x = jax.grad(lambda im: jnp.sum(jnp.tanh(ap.augment(jax.random.key(0), im, 1.0, spec)
                                                  * th)))(x)
    return jnp.sum(grad_x ** 2)

  grad_theta = np.asarray(jax.jit(jax.grad(r1))(theta))
  assert np.all(np.isfinite(grad_theta)) and np.abs(grad_theta).sum() > 0


_SHARDED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from gandance_jax.train import augment_pipe as ap, sharding
spec = ap.AugmentSpec.from_preset("bgc")
x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)), jnp.float32)
fn = jax.jit(lambda key, x: ap.augment(key, x, 0.8, spec))
one = fn(jax.random.key(9), jax.device_put(x, jax.devices()[0]))
mesh = sharding.make_mesh()
four = fn(jax.random.key(9), jax.device_put(x, NamedSharding(mesh, P("data"))))
json.dump({"devices": len(four.sharding.device_set), "one": np.asarray(one).tolist(),
           "four": np.asarray(four).tolist()}, sys.stdout)
"""


def test_same_output_on_one_and_four_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  result = json.loads(run.stdout)
  assert result["devices"] == 4
  one, four = np.asarray(result["one"]), np.asarray(result["four"])
  # Per-image maths on every device; only XLA's fusion of the two programs may differ
  # (reassociated float32 sums of <= 43 terms bounded by the warp's A = 4 l1^4 max|x|).
  l1 = np.abs(ap.GEOM_FILTER).sum()
  np.testing.assert_allclose(four, one, rtol=0, atol=64 * EPS32 * 4 * l1 ** 4)


# ---------------------------------------------------------------------------------------
# ADA's p rule.

def test_adjust_p_is_nvidias_rule():
  # training_loop.py: p += sign(r_t - target) * (batch * interval) / (ada_kimg * 1000).
  step = 64 * 4 / (500 * 1000)
  np.testing.assert_allclose(ap.adjust_p(0.1, 0.7, 64, 4, 500), 0.1 + step, rtol=1e-6)
  np.testing.assert_allclose(ap.adjust_p(0.1, 0.5, 64, 4, 500), 0.1 - step, rtol=1e-6)
  assert float(ap.adjust_p(0.1, 0.6, 64, 4, 500)) == np.float32(0.1)   # sign(0) = 0
  assert float(ap.adjust_p(0.0002, -1.0, 64, 4, 500)) == 0.0       # clamped at 0
  np.testing.assert_allclose(ap.adjust_p(1.0, 1.0, 32, 4, 100, target=0.9),
                             1.0 + 32 * 4 / 1e5, rtol=1e-6)        # not clamped above
