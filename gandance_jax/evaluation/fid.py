"""Frechet distance, streaming feature statistics, and reference-statistics files.

Maths (as pytorch-fid / TTUR / ADM's evaluator): features X [N, D];
`mu = mean(X)`, `sigma = cov(X)` with the unbiased N - 1 normalisation (`np.cov`), both float64;
`FID = |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2)`.

`tr sqrt(s1 s2)` is computed from the symmetric form: `s1 s2` is similar to
`sqrt(s1) s2 sqrt(s1)`, which is symmetric PSD, so its trace-sqrt is the sum of the square roots
of its (clipped at 0) eigenvalues, via two `eigh` calls in float64. This is exact for
rank-deficient covariances (N <= D), needs no eps fallback and never produces an imaginary
part. `method='sqrtm'` reproduces pytorch-fid's scipy `sqrtm` path instead (eps = 1e-6
fallback on a non-finite result, error on a large imaginary diagonal) for bit-level comparisons
with the community's numbers; scipy 1.11-1.12 `sqrtm` could return huge imaginary parts for
singular products, and `sqrtm(..., disp=...)` is gone in scipy 1.18, so it is not called.

Statistics are accumulated in a streaming, centred way (`StreamingStatistics`): each batch's
mean and centred scatter in float64, merged with Chan et al.'s pairwise update, so
50k x 2048 features need never be held at once and no `E[xx^T] - mu mu^T` cancellation occurs.

Files: `FIDStatistics.save` writes `mu`/`sigma` (the pytorch-fid layout, readable by
pytorch-fid and ADM's evaluator) plus `convention`, `extractor`, `quantize`, `num_samples`.
`load_statistics` reads those, pytorch-fid's files and ADM's reference batches (`mu`/`sigma`,
or `mu_s`/`sigma_s` for the spatial features). Community files record no convention: the user
states it. Statistics of different conventions or extractors are never compared.

Command line (reference statistics of an ADM-layout image npz, `arr_0` uint8 NHWC)::

  python -m gandance_jax.evaluation.fid ref images.npz ref_stats.npz \
      --weights pt_inception.npz --convention tf1
  python -m gandance_jax.evaluation.fid ref digits ref_digits.npz --extractor digits
  python -m gandance_jax.evaluation.fid fid a_stats.npz b_stats.npz [--convention tf1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.linalg

from gandance_jax import errors, multihost
from gandance_jax.data.digits import load_digits
from gandance_jax.evaluation import digits_classifier
from gandance_jax.evaluation import features as features_lib
from gandance_jax.evaluation import inception, weights


class StreamingStatistics:
  """Running float64 mean and unbiased covariance of feature batches.

  Example:
    acc = StreamingStatistics(2048)
    for feats in batches:          # [n_i, 2048]
      acc.update(feats)
    mu, sigma = acc.finalize()      # [2048] float64, [2048, 2048] float64
  """

  def __init__(self, dim: int):
    if dim < 1:
      raise ValueError(f"dim must be >= 1, got {dim}")
    self.dim = int(dim)
    self.count = 0
    self._mean = np.zeros(self.dim, np.float64)
    self._scatter = np.zeros((self.dim, self.dim), np.float64)  # sum (x - mean)(x - mean)^T

  def update(self, feats: Any) -> None:
    """Adds a batch of features [n, dim] (any float dtype; accumulated in float64)."""
    x = np.asarray(feats, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"features must be [n, {self.dim}], got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
      return
    if not np.isfinite(x).all():
      raise ValueError(f"features contain NaN/Inf ({int((~np.isfinite(x)).sum())} entries)")
    mean_b = x.mean(axis=0)
    xc = x - mean_b
    scatter_b = xc.T @ xc
    # Chan, Golub & LeVeque's pairwise merge of (count, mean, centred scatter).
    self._merge(n, mean_b, scatter_b)

  def _merge(self, n: int, mean_b: np.ndarray, scatter_b: np.ndarray) -> None:
    if n == 0:
      return
    n_a = self.count
    total = n_a + n
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (n / total)
    self._scatter += scatter_b + np.outer(delta, delta) * (n_a * n / total)
    self.count = total

  def merge(self, other: "StreamingStatistics") -> None:
    """Adds the features `other` has seen (as if its batches had been passed here)."""
    if other.dim != self.dim:
      raise ValueError(f"cannot merge statistics of dim {other.dim} into dim {self.dim}")
    self._merge(other.count, other._mean, other._scatter)  # pylint: disable=protected-access

  def reduced_across_processes(self) -> "StreamingStatistics":
    """The statistics of every process's features, on every process (a collective).

    Each process's (count, mean, scatter) travels bit-exactly (float64 as raw words) and
    the parts are merged in process order, so all processes finalize the same numbers.
    """
    packed = np.concatenate([[float(self.count)], self._mean, self._scatter.ravel()])
    parts = multihost.allgather(packed)  # [P, 1 + D + D * D] float64
    out = StreamingStatistics(self.dim)
    d = self.dim
    for part in parts:
      out._merge(int(part[0]), part[1:1 + d], part[1 + d:].reshape(d, d))  # pylint: disable=protected-access
    return out

  def finalize(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu [dim], sigma [dim, dim]) in float64; sigma uses N - 1 (like np.cov)."""
    if self.count < 2:
      raise ValueError(f"need at least 2 samples for a covariance, got {self.count}")
    sigma = self._scatter / (self.count - 1)
    sigma = 0.5 * (sigma + sigma.T)  # exactly symmetric
    return self._mean.copy(), sigma


def feature_statistics(feats: Any) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) float64 of features [N, D]; sigma unbiased (N - 1), as np.cov."""
  x = np.asarray(feats)
  if x.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {x.shape}")
  acc = StreamingStatistics(x.shape[1])
  acc.update(x)
  return acc.finalize()


def _check_pair(mu1, sigma1, mu2, sigma2):
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                  np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.ndim != 1 or mu2.shape != mu1.shape:
    raise ValueError(f"means must be vectors of one length, got {mu1.shape} and {mu2.shape} "
                     "(statistics of another feature dimension?)")
  for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
    if s.shape != (d, d):
      raise ValueError(f"{name} has shape {s.shape}, expected {(d, d)} to match the means")
  for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.isfinite(a).all():
      raise ValueError(f"{name} contains NaN/Inf")
  return mu1, sigma1, mu2, sigma2


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
  """Zeroes eigenvalues below eigh's round-off floor (negative ones included).

  A PSD matrix's zero eigenvalues come out of eigh as +-(dim * eps * max|w|) noise, and the
  square root would amplify that noise to sqrt(noise) per null direction (rank-deficient
  covariances, N <= dim, have many).
  """
  floor = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 0.0)
  return np.where(w > floor, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(0.5 * (s + s.T))
  return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr sqrt(sigma1 @ sigma2) for symmetric PSD matrices, float64, via the symmetric form."""
  r = _psd_sqrt(sigma1)
  m = r @ sigma2 @ r
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sqrt(_clip_eigenvalues(w)).sum())


def _trace_sqrt_scipy(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
  """pytorch-fid's `calculate_frechet_distance` trace term (scipy sqrtm + eps fallback)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # sqrtm's "singular matrix" chatter
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      warnings.warn(f"FID: singular product; adding {eps} to the covariance diagonals")
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FID: sqrtm has an imaginary component {np.abs(covmean.imag).max():g}")
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *,
                     method: str = "eigh", eps: float = 1e-6) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Args:
    mu1, mu2: [D] means. sigma1, sigma2: [D, D] covariances (symmetric PSD).
    method: 'eigh' (default; symmetric form, robust to rank deficiency) or 'sqrtm'
      (pytorch-fid's scipy path with its eps fallback and imaginary-part check).
    eps: the diagonal offset of the 'sqrtm' fallback.

  Returns:
    `|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)` as a Python float.
  """
  mu1, sigma1, mu2, sigma2 = _check_pair(mu1, sigma1, mu2, sigma2)
  diff = mu1 - mu2
  if method == "eigh":
    tr_covmean = trace_sqrt_product(sigma1, sigma2)
  elif method == "sqrtm":
    tr_covmean = _trace_sqrt_scipy(sigma1, sigma2, eps)
  else:
    raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# ----------------------------------------------------------------------------------------------
# Statistics with provenance.

# What community files (pytorch-fid, ADM reference batches) were made with, when not recorded.
COMMUNITY_EXTRACTOR = "inception_v3_2015_12_05_pool3"


@dataclasses.dataclass
class FIDStatistics:
  """Mean/covariance of one image set's features, with how they were made.

  Attributes:
    mu: [D] float64. sigma: [D, D] float64.
    convention: the preprocessing convention ('pytorch_fid', 'tf1', 'digits_r16', ...).
    extractor: the feature network's name (`FeatureExtractor.name`).
    num_samples: N, or -1 when unknown (community files).
    quantize: how float images were quantised ('none', 'adm', 'nvidia'; 'uint8' for images
      that were uint8 already; '' when unknown). Informational only: not checked.
  """
  mu: np.ndarray
  sigma: np.ndarray
  convention: str
  extractor: str
  num_samples: int = -1
  quantize: str = ""

  def __post_init__(self):
    self.mu = np.asarray(self.mu, np.float64)
    self.sigma = np.asarray(self.sigma, np.float64)
    d = self.mu.shape[0] if self.mu.ndim == 1 else -1
    if self.mu.ndim != 1 or self.sigma.shape != (d, d):
      raise ValueError(f"statistics need mu [D] and sigma [D, D], got {self.mu.shape} and "
                       f"{self.sigma.shape}")

  @property
  def dim(self) -> int:
    return int(self.mu.shape[0])

  def save(self, path: str | os.PathLike) -> None:
    """Writes `.npz`: `mu`, `sigma` (pytorch-fid layout) + provenance keys (atomically)."""
    weights.save_npz_atomic(path, {
        "mu": self.mu, "sigma": self.sigma,
        "convention": np.array(self.convention), "extractor": np.array(self.extractor),
        "num_samples": np.array(self.num_samples, np.int64),
        "quantize": np.array(self.quantize),
    })

  def check_compatible(self, other: FIDStatistics) -> None:
    """Raises ValueError unless both were made the same way (dim, convention, extractor)."""
    if self.dim != other.dim:
      raise ValueError(f"feature dimensions differ: {self.dim} vs {other.dim}")
    if self.extractor != other.extractor:
      raise ValueError(f"statistics of different feature extractors cannot be compared: "
                       f"{self.extractor!r} vs {other.extractor!r}")
    if self.convention != other.convention:
      raise ValueError(
          f"statistics made under different preprocessing conventions cannot be compared: "
          f"{self.convention!r} vs {other.convention!r} (e.g. ADM's reference batches need "
          "'tf1'; pytorch-fid's statistics 'pytorch_fid')")

  def frechet_distance(self, other: FIDStatistics, **kwargs) -> float:
    """FID to `other`, after `check_compatible`."""
    self.check_compatible(other)
    return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, **kwargs)


# What np.load / NpzFile raise on a truncated, empty or foreign file.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def read_npz(path: str | os.PathLike, what: str, keys: Iterable[str]
             ) -> tuple[list[str], dict[str, np.ndarray]]:
  """(the file's array names, the arrays of `keys` it has), or BadInputError naming the file
  and what is wrong with it (missing, empty, not an .npz, an .npy, truncated). `what` says
  what the file should hold. Only `keys` are read (a reference batch also holds images)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise errors.BadInputError(f"{path} does not exist (expected {what})")
  if os.path.isdir(path):
    raise errors.BadInputError(f"{path} is a directory, expected an .npz file of {what}")
  if os.path.getsize(path) == 0:
    raise errors.BadInputError(f"{path} is empty (0 bytes), expected an .npz file of {what}")
  try:
    loaded = np.load(path, allow_pickle=False)
  except _READ_ERRORS as e:
    raise errors.BadInputError(f"{path} is not a readable .npz file of {what} "
                               f"({type(e).__name__}: {errors.one_line(e)[:200]})") from e
  if isinstance(loaded, np.ndarray):
    raise errors.BadInputError(f"{path} is a single .npy array of shape {loaded.shape}, "
                               f"expected an .npz file of {what}")
  with loaded:
    out = {}
    for key in [k for k in keys if k in loaded.files]:
      try:
        out[key] = loaded[key]
      except _READ_ERRORS as e:  # a truncated member: the directory read, the data not
        raise errors.BadInputError(
            f"{path}: array {key!r} is unreadable (truncated or corrupt file? "
            f"{type(e).__name__}: {errors.one_line(e)[:200]}); expected {what}") from e
    return list(loaded.files), out


def check_statistics(mu: np.ndarray, sigma: np.ndarray, path: str, *, num_samples: int = -1,
                     stored_dtype: Any = np.float64) -> None:
  """Raises BadInputError naming `path` unless (mu [D], sigma [D, D]) can be a feature mean and
  covariance: finite, sigma symmetric and positive semi-definite.

  Tolerance: eigh is backward stable, so the eigenvalues of a PSD matrix come out >= -c D eps
  ||S||_2; the covariance itself, accumulated over N samples, carries rounding of the order N
  eps ||S||_2 (eps of the dtype the file stores). Negative eigenvalues and asymmetries beyond
  max(D, N) eps ||S||_2 cannot come from rounding: the file is not a covariance.
  """
  mu, sigma = np.asarray(mu), np.asarray(sigma)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise errors.BadInputError(f"{path}: statistics need mu [D] and sigma [D, D], got mu "
                               f"{list(mu.shape)} and sigma {list(sigma.shape)}")
  for name, a in (("mu", mu), ("sigma", sigma)):
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
      raise errors.BadInputError(f"{path}: {name} must be numbers, got dtype {a.dtype}")
    bad = int((~np.isfinite(a)).sum())
    if bad:
      raise errors.BadInputError(f"{path}: {name} holds {bad} NaN/Inf values")
  s = sigma.astype(np.float64)
  w = np.linalg.eigvalsh(0.5 * (s + s.T))
  norm = max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
  eps = np.finfo(stored_dtype if np.issubdtype(stored_dtype, np.floating) else np.float64).eps
  tol = max(s.shape[0], num_samples, 1) * eps * norm
  asym = float(np.abs(s - s.T).max(initial=0.0))
  if asym > tol:
    raise errors.BadInputError(f"{path}: sigma is not symmetric (max |sigma - sigma^T| = "
                               f"{asym:.3g} > {tol:.3g}): not a covariance matrix")
  if w[0] < -tol:
    raise errors.BadInputError(
        f"{path}: sigma is not positive semi-definite (smallest eigenvalue {w[0]:.6g} < "
        f"-{tol:.3g}, the rounding bound for D = {s.shape[0]}): not a covariance matrix")


def check_images(images: np.ndarray, path: str, key: str = "arr_0") -> np.ndarray:
  """`images` if they are an ADM-layout batch (uint8 [N, H, W, C], C in 1 or 3, N > 0), else
  BadInputError naming `path` and what is wrong (a single image, NCHW, floats, ...)."""
  shape = list(images.shape)
  where = f"{path}: {key!r}"
  if images.ndim == 3 and shape[-1] in (1, 3):
    raise errors.BadInputError(f"{where} is a single image {shape}; expected a batch "
                               "[N, H, W, C] (add a leading axis)")
  if images.ndim != 4:
    raise errors.BadInputError(f"{where} must be NHWC [N, H, W, C], got shape {shape}")
  if shape[0] == 0:
    raise errors.BadInputError(f"{where} holds no images (shape {shape})")
  if shape[3] not in (1, 3):
    hint = (" (NCHW? transpose to NHWC: x.transpose(0, 2, 3, 1))" if shape[1] in (1, 3)
            else "")
    raise errors.BadInputError(f"{where} must be NHWC [N, H, W, C] with C in (1, 3), got "
                               f"shape {shape}{hint}")
  if images.dtype != np.uint8:
    hint = ""
    if np.issubdtype(images.dtype, np.floating):
      lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
      hint = (f" (floats in [{lo:.3g}, {hi:.3g}]: convert with "
              "np.clip(np.rint(x), 0, 255).astype(np.uint8) for [0, 255], or "
              "np.clip(np.rint((x + 1) * 127.5), 0, 255) for [-1, 1])")
    raise errors.BadInputError(f"{where} must be uint8 in [0, 255] (the ADM layout), got "
                               f"dtype {images.dtype}{hint}")
  return images


def _str_key(f: dict[str, np.ndarray], key: str) -> str | None:
  if key not in f:
    return None
  return str(f[key][()])


def load_statistics(path: str | os.PathLike, *, convention: str | None = None,
                    extractor: str | None = None, spatial: bool = False) -> FIDStatistics:
  """Reads statistics: this package's files, pytorch-fid's `mu`/`sigma` npz, ADM ref batches.

  Args:
    path: an `.npz` with `mu` and `sigma` (or `mu_s`/`sigma_s` with `spatial=True`).
    convention: required for files that record none (the community's); must agree with the
      recorded one otherwise.
    extractor: likewise; community files default to the FID Inception pool3.
    spatial: read ADM's spatial (`mixed_6/conv`, sFID) statistics `mu_s`/`sigma_s`.

  Raises:
    ValueError: missing keys, no convention known, or a stated convention/extractor that
      contradicts the recorded one. A file with only `arr_0` (images, no statistics) must go
      through `statistics_from_npz_images` instead.
  """
  mu_key, sigma_key = ("mu_s", "sigma_s") if spatial else ("mu", "sigma")
  files, f = read_npz(path, f"FID statistics ('{mu_key}' [D], '{sigma_key}' [D, D])",
                      (mu_key, sigma_key, "convention", "extractor", "quantize", "num_samples"))
  if mu_key not in f or sigma_key not in f:
    hint = (" (it holds images 'arr_0': compute statistics with "
            "statistics_from_npz_images)") if "arr_0" in files else ""
    raise errors.BadInputError(f"{path}: no '{mu_key}'/'{sigma_key}' statistics; keys are "
                               f"{sorted(files)}{hint}")
  mu, sigma = f[mu_key], f[sigma_key]
  try:
    rec_conv = _str_key(f, "convention")
    rec_ext = _str_key(f, "extractor")
    quantize = _str_key(f, "quantize") or ""
    n = int(f["num_samples"][()]) if "num_samples" in f else -1
  except (ValueError, TypeError, IndexError) as e:
    raise errors.BadInputError(f"{path}: unreadable provenance keys ({e})") from e
  check_statistics(mu, sigma, os.fspath(path), num_samples=n, stored_dtype=sigma.dtype)
  if spatial and rec_ext is None:
    rec_ext = COMMUNITY_EXTRACTOR.replace("pool3", "mixed_6_conv_spatial")
  for what, stated, recorded in (("convention", convention, rec_conv),
                                 ("extractor", extractor, rec_ext)):
    if stated is not None and recorded is not None and stated != recorded:
      raise ValueError(f"{path}: the file records {what} {recorded!r}, but {stated!r} was "
                       "stated")
  conv = rec_conv or convention
  if conv is None:
    raise ValueError(f"{path} records no preprocessing convention (a pytorch-fid or ADM file?): "
                     "state it, e.g. convention='tf1' for ADM's reference batches or "
                     "'pytorch_fid' for pytorch-fid's statistics")
  ext = rec_ext or extractor or COMMUNITY_EXTRACTOR
  return FIDStatistics(mu, sigma, convention=conv, extractor=ext, num_samples=n,
                       quantize=quantize)


def load_npz_images(path: str | os.PathLike, key: str = "arr_0") -> np.ndarray:
  """The uint8 NHWC image batch of an ADM-layout npz (`arr_0`), e.g. for precision/recall.

  Raises BadInputError naming the file: unreadable, no `key`, or not uint8 [N, H, W, C]."""
  files, f = read_npz(path, f"images ('{key}' uint8 [N, H, W, C])", (key,))
  if key not in f:
    raise errors.BadInputError(f"{path}: no '{key}' image array; keys are {sorted(files)}")
  return check_images(f[key], os.fspath(path), key)


def load_cached_reference(stats_path: str, features_path: str
                          ) -> tuple[FIDStatistics, np.ndarray]:
  """(statistics, features) of a reference cached under `<workdir>/reference/`; a corrupt
  cache raises BadInputError saying which file, and that deleting it is safe."""
  try:
    stats = load_statistics(stats_path)
    try:
      feats = np.load(features_path, allow_pickle=False)
    except _READ_ERRORS as e:
      raise errors.BadInputError(f"{features_path} is unreadable ({type(e).__name__}: "
                                 f"{errors.one_line(e)[:200]})") from e
    if feats.ndim != 2 or feats.shape[1] != stats.dim or not np.isfinite(feats).all():
      raise errors.BadInputError(f"{features_path}: features must be finite [N, {stats.dim}], "
                                 f"got shape {list(feats.shape)}")
  except errors.BadInputError as e:
    raise errors.BadInputError(
        f"corrupt cached reference: {e}. The files under {os.path.dirname(stats_path)} are "
        "a cache of the real data's statistics: deleting them is safe (they are recomputed)"
    ) from e
  return stats, feats


def compute_statistics(extractor: features_lib.FeatureExtractor,
                       images: Any | Iterable[Any], *, batch_size: int = 64,
                       progress: bool | None = None) -> FIDStatistics:
  """Streams images through `extractor` into FIDStatistics (features are never all held).

  Args:
    images: [N, H, W, C] float in [-1, 1] or uint8, or an iterable of such chunks.
  """
  acc = StreamingStatistics(extractor.dim)
  dtypes = set()

  def chunks():
    # Records the input dtypes: uint8 images skip quantisation, which the statistics note.
    if hasattr(images, "shape") and hasattr(images, "dtype"):
      dtypes.add(np.dtype(images.dtype))
      yield from (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size))
    else:
      for chunk in images:
        dtypes.add(np.dtype(chunk.dtype))
        yield chunk

  total = int(images.shape[0]) if hasattr(images, "shape") else None
  for feats, _ in features_lib.iterate_features(extractor, chunks(), batch_size=batch_size,
                                                progress=progress, total=total):
    acc.update(feats)
  if acc.count < 2:
    raise ValueError(f"need at least 2 images for FID statistics, got {acc.count}")
  extractor.warn_if_few(acc.count)
  mu, sigma = acc.finalize()
  quantize = "uint8" if dtypes == {np.dtype(np.uint8)} else extractor.quantize
  return FIDStatistics(mu, sigma, convention=extractor.convention, extractor=extractor.name,
                       num_samples=acc.count, quantize=quantize)


def statistics_from_npz_images(path: str | os.PathLike, extractor: features_lib.FeatureExtractor,
                               *, batch_size: int = 64, progress: bool | None = None,
                               key: str = "arr_0") -> FIDStatistics:
  """Statistics of the uint8 images `arr_0` of an ADM-layout npz (samples or a ref batch)."""
  return compute_statistics(extractor, load_npz_images(path, key), batch_size=batch_size,
                            progress=progress)


# ----------------------------------------------------------------------------------------------
# Command line.


def _make_extractor(args) -> features_lib.FeatureExtractor:
  if args.extractor == "digits":
    return digits_classifier.get_extractor(resolution=args.resolution)
  if not args.weights:
    raise ValueError(f"--weights is required for the Inception extractor (download "
                     f"{weights.FID_WEIGHTS_URL} and convert it)")
  state = weights.load_state_dict(args.weights)
  return inception.make_extractor(inception.from_pytorch_fid_state_dict(state),
                                  convention=args.convention, quantize=args.quantize)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gandance_jax.evaluation.fid",
                                   description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("ref", help="reference statistics of an image npz (arr_0) or 'digits'")
  r.add_argument("images", help="ADM-layout .npz (arr_0 uint8 NHWC), or 'digits'")
  r.add_argument("out")
  r.add_argument("--extractor", choices=("inception", "digits"), default="inception")
  r.add_argument("--weights", default=None, help="FID Inception weights (.npz or .pth)")
  r.add_argument("--convention", choices=features_lib.CONVENTIONS, default="pytorch_fid")
  r.add_argument("--quantize", choices=features_lib.QUANTIZE_MODES, default=None)
  r.add_argument("--resolution", type=int, default=16, help="digits classifier resolution")
  r.add_argument("--batch-size", type=int, default=64)
  f = sub.add_parser("fid", help="FID between two statistics files")
  f.add_argument("a")
  f.add_argument("b")
  f.add_argument("--convention", default=None, help="for files that record none")
  args = parser.parse_args(argv)

  def command() -> None:
    if args.cmd == "ref":
      extractor = _make_extractor(args)
      if args.images == "digits":
        images = load_digits(resolution=args.resolution)[0]
        if extractor.channels == 3:
          images = np.repeat(images, 3, axis=-1)
      else:
        images = load_npz_images(args.images)
      stats = compute_statistics(extractor, images, batch_size=args.batch_size)
      stats.save(args.out)
      print(f"wrote {args.out}: N={stats.num_samples} dim={stats.dim} "
            f"convention={stats.convention} extractor={stats.extractor}")
    else:
      a = load_statistics(args.a, convention=args.convention)
      b = load_statistics(args.b, convention=args.convention)
      print(f"FID: {a.frechet_distance(b):.6f}")
  return features_lib.run_cli(command)


if __name__ == "__main__":
  sys.exit(main())
