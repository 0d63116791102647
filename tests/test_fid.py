"""Frechet distance, streaming statistics, statistics files, and the extraction loop."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from gandance_jax.evaluation import features, fid

EPS32 = float(np.finfo(np.float32).eps)


def _reference_fid(mu1, s1, mu2, s2):
  """Float64 scipy-sqrtm reference (the pytorch-fid formula without its fallbacks)."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _stats(rng, n, d, shift=0.0, scale=1.0):
  mix = rng.standard_normal((d, d)) / np.sqrt(d)
  x = rng.standard_normal((n, d)) @ mix * scale + shift
  return np.mean(x, 0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_matches_scipy(method):
  rng = np.random.default_rng(0)
  mu1, s1 = _stats(rng, 200, 24)
  mu2, s2 = _stats(rng, 300, 24, shift=0.3, scale=1.5)
  got = fid.frechet_distance(mu1, s1, mu2, s2, method=method)
  # float64 eigen / Schur decompositions (LAPACK, any thread count): backward errors of
  # ~d eps64 |S| = 24 * 2.2e-16 * 77 = 4e-13 on the traces, amplified by the square root's
  # conditioning (seen 1.6e-11 absolute, 6e-13 relative of FID 26); 1e-10 relative is 160x
  # that, and a wrong term (a trace, a factor 2) is O(1).
  np.testing.assert_allclose(got, _reference_fid(mu1, s1, mu2, s2), rtol=1e-10)


def test_frechet_distance_rank_deficient():
  """N < dim: both covariances are singular (rank 7 and 9 of 32)."""
  rng = np.random.default_rng(1)
  mu1, s1 = _stats(rng, 8, 32)
  mu2, s2 = _stats(rng, 10, 32, shift=0.1)
  assert np.linalg.matrix_rank(s1) == 7
  got = fid.frechet_distance(mu1, s1, mu2, s2)
  # Independent reference: tr sqrt(s1 s2) = sum sqrt(eigenvalues of s1 s2), all real >= 0.
  ev = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
  want = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())
  # sqrt amplifies the null-space noise: each of the 25 zero eigenvalues of s1 s2 comes out as
  # float64 noise up to ~d eps64 |s1| |s2| = 32 * 2.2e-16 * 7.9 * 10.4 = 6e-13, whose square
  # root (up to 7.6e-7) enters the trace: <= 2 * 25 * 7.6e-7 = 3.8e-5 absolute, 8e-7
  # relative of FID 47, in each of the two computations (seen 6e-7 absolute, 1.3e-8
  # relative; the old rtol 1e-7 was below this bound). A wrong term is O(1).
  np.testing.assert_allclose(got, want, rtol=2e-6)
  np.testing.assert_allclose(got, _reference_fid(mu1, s1, mu2, s2), rtol=2e-6)
  assert got > 0


def test_fid_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((500, 64)) * 3 + 1
  mu, sigma = fid.feature_statistics(x)
  # The symmetric form takes sqrt of sigma^{1/2} sigma sigma^{1/2} = sigma^2: no square root
  # of a noise eigenvalue, so the error is ~d eps64 |sigma| (~1e-14 of the trace; seen 4e-16
  # and 0); 1e-9 of the trace is far above it and far below any real distance.
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
  # Also rank-deficient (N < dim).
  mu, sigma = fid.feature_statistics(x[:20])
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_streaming_equals_one_shot():
  rng = np.random.default_rng(3)
  # A large common offset: E[xx^T] - mu mu^T in float32 would lose every digit here.
  x = (rng.standard_normal((1003, 16)) + 1e4).astype(np.float32)
  acc = fid.StreamingStatistics(16)
  for lo, hi in ((0, 1), (1, 2), (2, 500), (500, 501), (501, 1003)):
    acc.update(x[lo:hi])
  mu, sigma = acc.finalize()
  assert mu.dtype == sigma.dtype == np.float64
  x64 = x.astype(np.float64)
  # float64 sums of 1003 positive values: pairwise (numpy) or chunked, <= ~log2(n) eps64 =
  # 2e-15 relative (seen 1.8e-16, 1 ulp of 1e4); 1e-13 is 50x that.
  np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-13)
  # Centred deviations are O(1) and exact (x - mean near 1e4 cancels exactly, Sterbenz), but
  # each chunk mean carries ulp(1e4) = 1.8e-12 of rounding, which the merge multiplies by
  # deltas of O(0.1): ~1e-13 in sigma whatever the entry's size (seen 1.0e-13). atol 1e-11
  # is 100x that; a float32 path would be off by ~1e-1 at this offset.
  np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-11)
  mu1, sigma1 = fid.feature_statistics(x)
  np.testing.assert_allclose(sigma1, sigma, rtol=1e-9, atol=1e-11)


def test_statistics_errors():
  with pytest.raises(ValueError, match="at least 2 samples"):
    fid.feature_statistics(np.zeros((1, 4)))
  acc = fid.StreamingStatistics(4)
  with pytest.raises(ValueError, match=r"features must be \[n, 4\], got shape \(3, 5\)"):
    acc.update(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="NaN"):
    acc.update(np.full((3, 4), np.nan))
  mu, s = np.zeros(4), np.eye(4)
  with pytest.raises(ValueError, match="another feature dimension"):
    fid.frechet_distance(mu, s, np.zeros(5), np.eye(5))
  with pytest.raises(ValueError, match=r"sigma2 has shape \(3, 3\), expected \(4, 4\)"):
    fid.frechet_distance(mu, s, mu, np.eye(3))
  with pytest.raises(ValueError, match="mu1 contains NaN"):
    fid.frechet_distance(np.full(4, np.nan), s, mu, s)


# -------------------------------------------------------------------------- statistics files


def _fid_stats(rng, convention="tf1", extractor="inception_v3_2015_12_05_pool3", d=8, n=50):
  mu, sigma = _stats(rng, n, d)
  return fid.FIDStatistics(mu, sigma, convention=convention, extractor=extractor, num_samples=n,
                           quantize="adm")


def test_save_load_roundtrip_and_provenance(tmp_path):
  rng = np.random.default_rng(4)
  a = _fid_stats(rng)
  a.save(tmp_path / "a.npz")
  with np.load(tmp_path / "a.npz") as f:  # readable as pytorch-fid reads it
    np.testing.assert_array_equal(f["mu"], a.mu)
    np.testing.assert_array_equal(f["sigma"], a.sigma)
  b = fid.load_statistics(tmp_path / "a.npz")
  assert (b.convention, b.extractor, b.num_samples, b.quantize) == ("tf1", a.extractor, 50, "adm")
  # The same float64 arrays (bit-exact round trip): FID ~d eps64 |sigma| ~ 1e-14, not 1e-9.
  assert b.frechet_distance(a) == pytest.approx(0, abs=1e-9)
  with pytest.raises(ValueError, match="records convention 'tf1', but 'pytorch_fid' was stated"):
    fid.load_statistics(tmp_path / "a.npz", convention="pytorch_fid")


def test_community_files(tmp_path):
  rng = np.random.default_rng(5)
  mu, sigma = _stats(rng, 40, 8)
  np.savez(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # pytorch-fid's layout
  with pytest.raises(ValueError, match="records no preprocessing convention"):
    fid.load_statistics(tmp_path / "pytorch_fid.npz")
  s = fid.load_statistics(tmp_path / "pytorch_fid.npz", convention="pytorch_fid")
  assert (s.convention, s.extractor, s.num_samples) == (
      "pytorch_fid", fid.COMMUNITY_EXTRACTOR, -1)
  # ADM reference batch: images, pool3 statistics and spatial statistics.
  images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "adm_ref.npz", arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:4],
           sigma_s=sigma[:4, :4])
  adm = fid.load_statistics(tmp_path / "adm_ref.npz", convention="tf1")
  np.testing.assert_array_equal(adm.sigma, sigma)
  assert fid.load_statistics(tmp_path / "adm_ref.npz", convention="tf1", spatial=True).dim == 4
  np.testing.assert_array_equal(fid.load_npz_images(tmp_path / "adm_ref.npz"), images)
  np.savez(tmp_path / "samples.npz", arr_0=images, arr_1=np.arange(6))
  with pytest.raises(ValueError, match="statistics_from_npz_images"):
    fid.load_statistics(tmp_path / "samples.npz", convention="tf1")
  # Refusals: other convention, other extractor, other dimension.
  with pytest.raises(ValueError, match="different preprocessing conventions"):
    adm.frechet_distance(s)
  ours = _fid_stats(rng, convention="tf1", extractor="digits_cnn_r16_v1")
  with pytest.raises(ValueError, match="different feature extractors"):
    adm.frechet_distance(ours)
  with pytest.raises(ValueError, match="feature dimensions differ: 8 vs 4"):
    adm.frechet_distance(_fid_stats(rng, d=4))


def test_cli_fid(tmp_path, capsys):
  rng = np.random.default_rng(6)
  _fid_stats(rng).save(tmp_path / "a.npz")
  mu, sigma = _stats(rng, 50, 8)
  np.savez(tmp_path / "community.npz", mu=mu, sigma=sigma)
  assert fid.main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "community.npz"),
                   "--convention", "tf1"]) == 0
  assert "FID: " in capsys.readouterr().out
  # Exit 2: bad input (errors.ExitCode.BAD_INPUT).
  assert fid.main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "community.npz")]) == 2
  assert "records no preprocessing convention" in capsys.readouterr().err


# ------------------------------------------------------------------- the extraction loop


def _toy_extractor(dim=6, min_samples=0):
  """A linear 'feature network' on 4x4x3 images: features = flatten @ W."""
  w = np.random.default_rng(7).standard_normal((48, dim)).astype(np.float32)

  def apply_fn(params, images):
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
      x = x / 127.5 - 1.0
    f = x.reshape(x.shape[0], -1) @ params
    return f, f[:, :3]

  return features.FeatureExtractor(name="toy", convention="toy", dim=dim, num_classes=3,
                                   apply_fn=apply_fn, params=jnp.asarray(w),
                                   min_samples=min_samples)


def test_compute_statistics_streams_chunks():
  rng = np.random.default_rng(8)
  images = rng.uniform(-1, 1, (23, 4, 4, 3)).astype(np.float32)
  ext = _toy_extractor()
  feats, logits = features.extract(ext, images, batch_size=5, progress=True)
  assert feats.shape == (23, 6) and logits.shape == (23, 3)
  # float32 dots of 48 products |image * w| <= 3.3, summed in XLA's order vs numpy's: <= 48
  # eps32 max|product| = 1.9e-5 (seen 1.4e-6 at |f| <= 14); a wrong image, order or scale is
  # O(1).
  fan_in_tol = 48 * EPS32 * float(np.max(np.abs(images))) * float(np.max(np.abs(ext.params)))
  np.testing.assert_allclose(feats, images.reshape(23, -1) @ np.asarray(ext.params), rtol=0,
                             atol=fan_in_tol)
  chunks = (images[i:i + 7] for i in range(0, 23, 7))  # chunk sizes that do not match batches
  stats = fid.compute_statistics(ext, chunks, batch_size=5)
  mu, sigma = fid.feature_statistics(feats)
  # The same batches of 5 (the chunks are re-batched), so the same float32 features; the
  # statistics differ only by float64 streaming vs one shot (seen 2e-16 and 7e-15). If the
  # features ever came from other batch sizes, they would move by <= fan_in_tol, mu by as
  # much and sigma by <= 2 |f| fan_in_tol = 5e-4 -- still far below a missing or doubled chunk.
  np.testing.assert_allclose(stats.mu, mu, rtol=0, atol=fan_in_tol)
  np.testing.assert_allclose(stats.sigma, sigma, rtol=0,
                             atol=2 * float(np.max(np.abs(feats))) * fan_in_tol)
  assert (stats.num_samples, stats.convention, stats.extractor) == (23, "toy", "toy")
  with pytest.warns(UserWarning, match="N=6 .* strongly biased"):
    fid.compute_statistics(ext, images[:6], batch_size=4)
  with pytest.raises(ValueError, match="at least 2 images"):
    fid.compute_statistics(ext, images[:1])
  with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
    fid.compute_statistics(ext, images * 3)


def test_nan_features_are_refused():
  ext = _toy_extractor()
  bad = features.FeatureExtractor(name="bad", convention="toy", dim=6, num_classes=3,
                                  apply_fn=lambda p, x: (ext.apply_fn(p, x)[0] * jnp.nan,
                                                         ext.apply_fn(p, x)[1]),
                                  params=ext.params)
  with pytest.raises(ValueError, match="NaN/Inf features"):
    features.extract(bad, np.zeros((3, 4, 4, 3), np.float32))


def test_sharded_extraction_matches_single_device():
  """With 2 (virtual CPU) devices the batches are sharded over a `data` mesh axis."""
  code = textwrap.dedent("""
      import numpy as np, jax, jax.numpy as jnp
      from gandance_jax.evaluation import features
      assert jax.device_count() == 2
      assert features._data_sharding(4) is not None and features._data_sharding(3) is None
      w = jnp.asarray(np.random.default_rng(0).standard_normal((48, 5)), jnp.float32)
      seen = []
      def apply_fn(p, x):
        seen.append(x.sharding if hasattr(x, 'sharding') else None)
        f = x.reshape(x.shape[0], -1) @ p
        return f, f
      ext = features.FeatureExtractor('t', 't', 5, 5, apply_fn, w)
      x = np.random.default_rng(1).uniform(-1, 1, (10, 4, 4, 3)).astype(np.float32)
      f, _ = features.extract(ext, x, batch_size=4, progress=False)
      # 48-term float32 dots of products <= 3.2: <= 48 eps32 * 3.2 = 1.8e-5 in any order.
      np.testing.assert_allclose(f, x.reshape(10, -1) @ np.asarray(w), rtol=0, atol=2.5e-5)
      print('OK', f.shape)
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "OK (10, 5)" in out.stdout
