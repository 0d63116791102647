"""FID Inception-v3: parity with pytorch-fid's outputs, weight loading, preprocessing."""

import hashlib
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import interop
from gandance_jax.evaluation import features, inception, weights

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "fid_inception"
# Against pytorch-fid's network (PyTorch CPU, float32), relative to the tensor's largest value:
# ~48 conv layers of fan-in K up to ~1e4 reassociate their sums, ~sqrt(48 K) eps = 8e-5
# relative typically; 1e-3 is 12x that, while a wrong padding, pooling or BN eps changes
# features by > 1e-2 relative.
TOL = 1e-3


def _rel_err(got, want):
  """max |got - want| / max |want| over the whole tensor."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / np.abs(want).max())


def _golden_dir():
  if not GOLDEN.is_dir():
    pytest.skip(f"golden data not found at {GOLDEN.resolve()}")
  return GOLDEN


@pytest.fixture(scope="module")
def golden_state():
  return weights.state_dict_from_int8_npz(_golden_dir() / "weights_int8.npz")


@pytest.fixture(scope="module")
def golden_vars(golden_state):
  # The same loader a real pt_inception-2015-12-05-6726825d.pth state dict goes through.
  return inception.from_pytorch_fid_state_dict(golden_state)


@pytest.fixture(scope="module")
def golden_out():
  with np.load(_golden_dir() / "reference_outputs.npz") as f:
    return {k: f[k] for k in f.files}


def _nhwc_pm1(x_nchw01):
  """Golden inputs are NCHW in [0, 1]; the project's images are NHWC in [-1, 1]."""
  return jnp.asarray(x_nchw01.transpose(0, 2, 3, 1)) * 2.0 - 1.0


# -------------------------------------------------------------------------------------- parity


def test_state_dict_layout_matches_pytorch_fid():
  info = json.loads((_golden_dir() / "inception_fid.json").read_text())
  want = {k: tuple(s) for k, s in info["state_dict_keys"] if not k.endswith("num_batches_tracked")}
  assert inception.state_dict_shapes() == want


@pytest.mark.parametrize("size", [32, 64, 299])
def test_pool3_and_logits_match_pytorch_fid(golden_vars, golden_out, size):
  images = _nhwc_pm1(golden_out[f"in.x{size}"])
  if size == 32:  # the public one-liner
    pool3 = inception.pool3_features(golden_vars, images)
    assert _rel_err(pool3, golden_out[f"out.pool3_x{size}"]) <= TOL
    return
  out = inception.inception_outputs(golden_vars, images)
  assert _rel_err(out["pool3"], golden_out[f"out.pool3_x{size}"]) <= TOL
  assert _rel_err(out["logits"], golden_out[f"out.logits_x{size}"]) <= TOL


def test_intermediate_blocks_match_pytorch_fid(golden_vars, golden_out):
  out = inception.inception_outputs(golden_vars, _nhwc_pm1(golden_out["in.xblocks"]))
  for name, shape in (("block0", (2, 64, 73, 73)), ("block1", (2, 192, 35, 35)),
                      ("block2", (2, 768, 17, 17))):
    got = np.asarray(out[name]).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    assert got.shape == shape
    assert _rel_err(got, golden_out[f"out.{name}"]) <= TOL, name
  assert _rel_err(out["pool3"], golden_out["out.pool3_blocks"]) <= TOL


def test_extractor_batches_and_adm_logits(golden_vars, golden_state, golden_out):
  """The batched extractor (padded last batch) gives pool3 and ADM's bias-free logits."""
  images = np.asarray(_nhwc_pm1(golden_out["in.x64"]))
  ext = inception.make_extractor(golden_vars)
  assert (ext.name, ext.convention, ext.dim, ext.num_classes) == (
      inception.EXTRACTOR_NAME, "pytorch_fid", 2048, 1008)
  feats, logits = features.extract(ext, images, batch_size=3, progress=False)  # 3 + 1 padded
  assert feats.shape == (4, 2048) and logits.shape == (4, 1008)
  assert _rel_err(feats, golden_out["out.pool3_x64"]) <= TOL
  no_bias = golden_out["out.logits_x64"] - golden_state["fc.bias"]
  assert _rel_err(logits, no_bias) <= TOL


# ------------------------------------------------------------------------------ weight loading


def test_loader_errors_name_the_key():
  state = inception.random_state_dict(0)
  bad = dict(state)
  del bad["Mixed_6b.branch7x7_2.bn.running_var"]
  with pytest.raises(ValueError, match=r"missing.*Mixed_6b\.branch7x7_2\.bn\.running_var"):
    inception.from_pytorch_fid_state_dict(bad)
  bad = dict(state, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected.*AuxLogits\.fc\.weight"):
    inception.from_pytorch_fid_state_dict(bad)
  bad = dict(state, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(ValueError, match=r"fc\.weight has shape \(1000, 2048\), expected "
                     r"\(1008, 2048\)"):
    inception.from_pytorch_fid_state_dict(bad)
  # num_batches_tracked (as in a real .pth) is accepted.
  ok = dict(state, **{"Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0)})
  params = inception.from_pytorch_fid_state_dict(ok)["params"]
  assert params["Mixed_7c"]["branch_pool"]["kernel"].shape == (1, 1, 2048, 192)
  assert params["fc"]["kernel"].shape == (2048, 1008)


def test_batchnorm_is_folded_with_eps_1e3():
  state = inception.random_state_dict(1)
  k = "Conv2d_3b_1x1"
  p = inception.from_pytorch_fid_state_dict(state)["params"][k]
  w = state[f"{k}.conv.weight"][:, :, 0, 0].astype(np.float64)  # [out, in]
  g, b = state[f"{k}.bn.weight"], state[f"{k}.bn.bias"]
  m, v = state[f"{k}.bn.running_mean"], state[f"{k}.bn.running_var"]
  x = np.random.default_rng(0).standard_normal(w.shape[1])
  want = (w @ x - m) / np.sqrt(v + 1e-3) * g + b  # conv then BatchNorm (inference)
  got = np.asarray(p["kernel"][0, 0], np.float64).T @ x + np.asarray(p["bias"])
  # The folded kernel and bias are rounded to float32 (6e-8 relative each), the dot is float64:
  # <= 6e-8 sum|w x| ~ 1e-6 absolute; an unfolded BN or eps 1e-5 is off by > 1e-3.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_npz_roundtrip_and_hash_verification(tmp_path, golden_state):
  path = tmp_path / "state.npz"
  weights.save_npz_atomic(path, golden_state)
  loaded = weights.load_state_dict(path)
  assert loaded.keys() == golden_state.keys()
  np.testing.assert_array_equal(loaded["fc.weight"], golden_state["fc.weight"])

  data = b"not really inception weights"
  prefix = hashlib.sha256(data).hexdigest()[:8]
  good = tmp_path / f"pt_inception-2015-12-05-{prefix}.pth"
  good.write_bytes(data)
  assert weights.verify_sha256_prefix(good).startswith(prefix)
  assert weights.main(["verify", str(good)]) == 0
  bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  bad.write_bytes(data)
  with pytest.raises(ValueError, match="does not start with '6726825d'"):
    weights.verify_sha256_prefix(bad)
  with pytest.raises(ValueError, match="no '-<sha256 prefix>.' suffix"):
    weights.verify_sha256_prefix(tmp_path / "state.npz")


def test_pth_converts_without_torch(tmp_path):
  """`convert` reads the .pth with gandance_jax.interop (torch.save's format, no torch)."""
  state = inception.random_state_dict(2)
  pth = tmp_path / "w.pth"
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
  except ImportError:
    interop.write_torch_file(pth, state)
  weights.convert(pth, tmp_path / "w.npz", verify=False)
  np.testing.assert_array_equal(weights.load_state_dict(tmp_path / "w.npz")["fc.bias"],
                                state["fc.bias"])
  np.testing.assert_array_equal(weights.load_state_dict(pth)["fc.weight"], state["fc.weight"])


# ------------------------------------------------------------------------------- preprocessing


def _tap_error(in_size: int, out_size: int) -> float:
  """A bound of the float32 source coordinate's error on either grid (the taps are float32
  on purpose, as TF1's and torch's): the rounded scale times i <= out_size * ulp(scale) / 2,
  the product and the half-pixel offsets rounded at the coordinate's size (<= 2 ulp(in_size)),
  with 2x to spare on the first term."""
  scale = np.float32(in_size) / np.float32(out_size)
  return float(out_size * np.spacing(scale) + 2 * np.spacing(np.float32(in_size)))


def _resize_tol(in_hw, out_hw, value_range: float) -> float:
  """|float32 resize - a resize with exact coordinates|: each axis' coordinate error times
  the largest step between neighbours (value_range), plus the two float32 lerps' roundings."""
  coordinate = sum(_tap_error(i, o) for i, o in zip(in_hw, out_hw))
  return value_range * coordinate + 4 * float(np.spacing(np.float32(value_range)))


def _tf1_resize_loop(img, out_h, out_w):
  """TF1 legacy ResizeBilinear (align_corners=False, half_pixel_centers=False), literally."""
  in_h, in_w, c = img.shape
  out = np.zeros((out_h, out_w, c), np.float64)
  sh, sw = in_h / out_h, in_w / out_w
  for y in range(out_h):
    in_y = y * sh
    top = int(np.floor(in_y))
    bottom = min(top + 1, in_h - 1)
    y_lerp = in_y - top
    for x in range(out_w):
      in_x = x * sw
      left = int(np.floor(in_x))
      right = min(left + 1, in_w - 1)
      x_lerp = in_x - left
      tl, tr = img[top, left], img[top, right]
      bl, br = img[bottom, left], img[bottom, right]
      t = tl + (tr - tl) * x_lerp
      b = bl + (br - bl) * x_lerp
      out[y, x] = t + (b - t) * y_lerp
  return out


def _torch_bilinear_loop(img, out_h, out_w):
  """torch F.interpolate(mode='bilinear', align_corners=False), no antialias, literally."""
  in_h, in_w, c = img.shape
  out = np.zeros((out_h, out_w, c), np.float64)

  def src(i, in_size, out_size):
    s = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    lo = int(s)
    return lo, min(lo + 1, in_size - 1), s - lo

  for y in range(out_h):
    y0, y1, ly = src(y, in_h, out_h)
    for x in range(out_w):
      x0, x1, lx = src(x, in_w, out_w)
      out[y, x] = ((1 - ly) * ((1 - lx) * img[y0, x0] + lx * img[y0, x1]) +
                   ly * ((1 - lx) * img[y1, x0] + lx * img[y1, x1]))
  return out


@pytest.mark.parametrize("in_hw,out_hw", [((8, 64), (299, 61)), ((13, 7), (5, 11))])
def test_tf1_resize_matches_loop_transcription(in_hw, out_hw):
  img = np.random.default_rng(0).uniform(0, 255, in_hw + (3,)).astype(np.float32)
  got = features.resize_bilinear(jnp.asarray(img[None]), out_hw, method="tf1")[0]
  # The loop runs in float64, the resize with float32 taps: 6.4e-3 for 64 -> 61 at values up
  # to 255 (seen 9.8e-4; the old 1e-3 was below this bound). A grid shifted by a fraction of
  # a pixel is off by tens.
  np.testing.assert_allclose(got, _tf1_resize_loop(img.astype(np.float64), *out_hw),
                             rtol=0, atol=_resize_tol(in_hw, out_hw, 255.0))


@pytest.mark.parametrize("in_hw,out_hw", [((64, 8), (37, 299)), ((20, 9), (6, 4))])
def test_half_pixel_resize_matches_torch_formula(in_hw, out_hw):
  """Includes downsampling, where F.interpolate does not antialias (jax.image.resize does)."""
  img = np.random.default_rng(1).uniform(-1, 1, in_hw + (2,)).astype(np.float32)
  got = features.resize_bilinear(jnp.asarray(img[None]), out_hw, method="half_pixel")[0]
  # float32 taps vs the float64 loop, values in [-1, 1] (seen 4.4e-6; bound 4.5e-5 for 64 ->
  # 37); an antialiased or shifted grid is off by > 1e-2.
  np.testing.assert_allclose(got, _torch_bilinear_loop(img.astype(np.float64), *out_hw),
                             rtol=0, atol=_resize_tol(in_hw, out_hw, 2.0))


@pytest.mark.parametrize("in_hw,out_hw", [((64, 64), (299, 299)), ((32, 20), (299, 7)),
                                          ((299, 299), (64, 64))])
def test_both_resizes_match_tensorflow_kernels(in_hw, out_hw):
  """Against TensorFlow's own kernels (tensorflow-cpu ships with clu): TF1's legacy
  ResizeBilinear, which the ADM / TTUR graphs run, and TF2's half-pixel bilinear without
  antialiasing, the grid of torch's F.interpolate(align_corners=False)."""
  tf = pytest.importorskip("tensorflow")
  img = np.random.default_rng(2).uniform(0, 255, (2,) + in_hw + (3,)).astype(np.float32)
  want_tf1 = tf.compat.v1.image.resize_bilinear(img, out_hw, align_corners=False,
                                                half_pixel_centers=False).numpy()
  got_tf1 = features.resize_bilinear(jnp.asarray(img), out_hw, method="tf1")
  # TF's kernels compute the same float32 coordinates by the same formulas (in * scale, and
  # (i + 0.5) * scale - 0.5), so only the two lerps' roundings differ: a few ulps of 255
  # (1.5e-5 each; seen 4.6e-5). 2e-3 is ~130 ulps; a grid off by a fraction of a pixel is
  # off by tens (the grids differ by > 1 below).
  tol = 2e-3
  np.testing.assert_allclose(got_tf1, want_tf1, rtol=0, atol=tol)
  want_hp = tf.image.resize(img, out_hw, method="bilinear", antialias=False).numpy()
  got_hp = features.resize_bilinear(jnp.asarray(img), out_hw, method="half_pixel")
  np.testing.assert_allclose(got_hp, want_hp, rtol=0, atol=tol)
  # The two grids really differ here (the test would notice a swapped method).
  assert np.abs(want_tf1 - want_hp).max() > 1.0


def test_the_two_grids_differ_by_a_constant_shift():
  lo_h, _, f_h = features._half_pixel_taps(64, 299)
  lo_t, _, f_t = features._tf1_taps(64, 299)
  inner = slice(3, 296)  # the half-pixel grid clamps its first source coordinates at 0
  shift = (lo_h + f_h)[inner] - (lo_t + f_t)[inner]
  # Two float32 coordinates up to 64 (ulp 7.6e-6), each within _tap_error (seen 2.1e-6).
  np.testing.assert_allclose(shift, 0.5 * 64 / 299 - 0.5, rtol=0,  # -0.393 pixels
                             atol=2 * _tap_error(64, 299))


def test_quantisation_conventions():
  x = jnp.asarray([-1.0, -0.999, 0.0, 0.5, 1.0, 1.0005])
  np.testing.assert_array_equal(features.quantize_uint8(x, "adm"), [0, 0, 127, 191, 255, 255])
  np.testing.assert_array_equal(features.quantize_uint8(x, "nvidia"), [0, 0, 128, 191, 255, 255])
  u = features.to_uint8(x.reshape(1, 1, 6, 1), "adm")
  assert u.dtype == np.uint8


def test_preprocess_conventions():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  u = features.to_uint8(x, "adm")
  # tf1: float images are quantised like ADM's sampler, so they equal their uint8 file.
  a = inception.preprocess(jnp.asarray(x), "tf1")
  b = inception.preprocess(jnp.asarray(u), "tf1")
  np.testing.assert_array_equal(a, b)
  assert a.shape == (2, 299, 299, 3)
  # (The resizes themselves are checked against the loop transcriptions above.)
  want = (features.resize_bilinear(jnp.asarray(u, jnp.float32), (299, 299), method="tf1")
          - 128) / 128
  # The same resize and affine map, perhaps fused differently: a few ulps of values in
  # [-1, 1] (2.4e-7 each); a wrong offset or scale is >= 1/128.
  np.testing.assert_allclose(a, want, atol=1e-6)
  # pytorch_fid: [0, 1] -> half-pixel resize -> 2x - 1.
  c = inception.preprocess(jnp.asarray(x), "pytorch_fid")
  want = 2 * features.resize_bilinear(jnp.asarray((x + 1) / 2), (299, 299),
                                      method="half_pixel") - 1
  np.testing.assert_allclose(c, want, atol=1e-6)
  # 1-channel images are tiled.
  g = inception.preprocess(jnp.asarray(x[..., :1]), "pytorch_fid")
  np.testing.assert_array_equal(g[..., 0], g[..., 2])
  with pytest.raises(ValueError, match="convention must be one of"):
    inception.preprocess(jnp.asarray(x), "tf2")
  with pytest.raises(ValueError, match="quantize must be one of"):
    inception.preprocess(jnp.asarray(x), "tf1", "round")


def test_bad_images_are_refused():
  good = np.zeros((2, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="wants 3 channels, images have 2"):
    features.check_images(np.zeros((2, 8, 8, 2), np.float32), 3)
  with pytest.raises(ValueError, match=r"must lie in \[-1, 1\], got values in \[-1, 1.5\]"):
    features.check_images(good + np.float32(1.5) * (np.arange(8) == 3)[None, :, None, None]
                          - (np.arange(8) == 0)[None, :, None, None], 3)
  with pytest.raises(ValueError, match="NaN"):
    features.check_images(np.full((1, 8, 8, 3), np.nan, np.float32), 3)
  with pytest.raises(ValueError, match="NHWC"):
    features.check_images(np.zeros((8, 8, 3), np.float32), 3)
  with pytest.warns(UserWarning, match="tiling the channel to 3"):
    tiled = features.check_images(np.zeros((2, 8, 8, 1), np.float32), 3)
  assert tiled.shape == (2, 8, 8, 3)
  # A little round-off outside [-1, 1] is tolerated; uint8 needs no range check.
  features.check_images(good + 1.0005, 3)
  features.check_images(np.full((1, 8, 8, 3), 255, np.uint8), 3)
  with pytest.raises(ValueError, match="dtype int32"):
    features.check_images(np.zeros((1, 8, 8, 3), np.int32), 3)
