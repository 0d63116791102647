"""2D Gaussian-mixture toy benchmarks (imbalanced 8 Gaussians, 25 Gaussians) and metrics.

These follow the 2D benchmark used by collaborative sampling (Liu et al., 2019), DRS
(Azadi et al., 2019) and MH-GAN (Turner et al., 2019). The mode index is the class label,
so a class-conditional toy GAN can be trained on them and guided sampling evaluated per mode.

Choices (the released code of these papers differs in places; ours are fixed here):
  * Imbalanced 8 Gaussians: 8 centres on a circle of radius 10/sqrt(2) (the collaborative-
    sampling setting `--scale=10`, points divided by 1.414), centre k at angle k * 45 deg,
    isotropic std 0.02 * 10/sqrt(2) ~= 0.141. Modes 0 and 1 (adjacent, at 0 and 45 deg)
    hold 45 % of the mass each (`--ratio=0.9`), the other six share the remaining 10 %.
    (The collaborative-sampling repository adds noise of std 0.05 *before* its 1/1.414
    rescaling; we use the relative std 0.02 * radius instead, which keeps
    modes well separated: adjacent centres are 5.4 apart, i.e. ~38 std.)
  * 25 Gaussians: the DRS / MH-GAN convention, a 5x5 grid with coordinates in
    {-4, -2, 0, 2, 4}^2, std 0.05, equal weights; label = 5 * ix + iy for x = 2 * ix - 4,
    y = 2 * iy - 4. (The collaborative-sampling repository rescales this grid by
    10 / 2.828; use `grid_25gaussians(spacing=..., std=...)` for other scalings.)

Metrics (`evaluate`), computed on e.g. 10k samples:
  * good_fraction: fraction of samples closer than `num_std` (default 4) std to their
    NEAREST centre ("high-quality samples" in DRS / collaborative sampling).
  * mode_freq: per-mode frequencies among the good samples (uniform when none is good,
    as in the benchmark code, so that KL stays finite; good_fraction then shows it).
  * kl: KL(data || model) = sum_k w_k log(w_k / q_k) in nats, w the true mode weights and
    q = mode_freq smoothed as q <- max(q, eps) / sum(max(q, eps)), eps = 1e-12 by default
    (a dropped mode then costs ~ w_k * 27.6 nats instead of infinity).
  * js: Jensen-Shannon divergence in nats (at most ln 2) between (w_1..w_K, 0) and
    (n_1..n_K, n_bad) / n, i.e. the mode histogram with an extra "bad sample" bin.
  * mode_counts, num_modes_covered (modes with >= 1 good sample), mean_distance (mean
    distance to the nearest centre).

Data layout: a toy example is a 2D point, not an image. The source presents it to the
trainer as {'image': float32 [b, 2], 'label': int32 [b]} (NOT NHWC; `example_shape == (2,)`,
`resolution is None`, `channels == 2`), points in the benchmark's own coordinates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from gandance_jax.data import base

# Purpose tag of the per-step numpy seed sequence (see base.py for the others).
_MIX_TAG = 0x4D495854  # 'MIXT'


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  """An isotropic Gaussian mixture in 2D.

  Attributes:
    name: data.name of the benchmark.
    centres: float64 [K, 2] mode means; mode k has class label k.
    std: per-coordinate standard deviation (same for every mode).
    weights: float64 [K] mixture weights, summing to 1.
  """
  name: str
  centres: np.ndarray
  std: float
  weights: np.ndarray

  def __post_init__(self):
    centres = np.asarray(self.centres, np.float64)
    weights = np.asarray(self.weights, np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2:
      raise ValueError(f"centres must be [K, 2], got shape {centres.shape}")
    if weights.shape != centres.shape[:1]:
      raise ValueError(f"weights must be [{centres.shape[0]}], got {weights.shape}")
    if np.any(weights < 0) or not math.isclose(weights.sum(), 1.0, abs_tol=1e-9):
      raise ValueError(f"weights must be non-negative and sum to 1, got {weights}")
    if not self.std > 0:
      raise ValueError(f"std must be positive, got {self.std}")
    centres.setflags(write=False)
    weights.setflags(write=False)
    object.__setattr__(self, "centres", centres)
    object.__setattr__(self, "weights", weights)
    object.__setattr__(self, "std", float(self.std))

  @property
  def num_classes(self) -> int:
    return int(self.centres.shape[0])

  def sample(self, key_or_seed: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws n points: (points float32 [n, 2], labels int32 [n]).

    key_or_seed: an int seed, a sequence of non-negative ints, a np.random.Generator or a
    jax PRNG key (new-style or raw uint32); the same value always gives the same points.
    """
    return sample_from_rng(self, _as_rng(key_or_seed), n)

  def sample_class(self, key_or_seed: Any, labels: Any) -> np.ndarray:
    """Points float32 [n, 2] from the requested modes: labels int [n] in [0, K)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels must be a 1D integer array, got {labels.dtype} "
                       f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"labels must be in [0, {self.num_classes}), got range "
                       f"[{labels.min()}, {labels.max()}]")
    rng = _as_rng(key_or_seed)
    noise = rng.standard_normal((labels.shape[0], 2))
    return (self.centres[labels] + self.std * noise).astype(np.float32)


def _as_rng(key_or_seed: Any) -> np.random.Generator:
  if isinstance(key_or_seed, np.random.Generator):
    return key_or_seed
  if isinstance(key_or_seed, (int, np.integer, list, tuple)):
    return np.random.default_rng(key_or_seed)
  # A jax key: seed numpy with its raw bits (no jax import unless a key is passed).
  import jax  # pylint: disable=g-import-not-at-top
  if jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
    key_or_seed = jax.random.key_data(key_or_seed)
  return np.random.default_rng(np.asarray(key_or_seed, np.uint32).ravel())


def sample_from_rng(spec: MixtureSpec, rng: np.random.Generator,
                    n: int) -> tuple[np.ndarray, np.ndarray]:
  """(points float32 [n, 2], labels int32 [n]) drawn with `rng`."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n must be a non-negative int, got {n!r}")
  labels = rng.choice(spec.num_classes, size=int(n), p=spec.weights).astype(np.int32)
  noise = rng.standard_normal((int(n), 2))
  points = (spec.centres[labels] + spec.std * noise).astype(np.float32)
  return points, labels


def imbalanced_8gaussians(radius: float = 10.0 / math.sqrt(2.0), std: float | None = None,
                          major_fraction: float = 0.9) -> MixtureSpec:
  """8 modes on a circle; modes 0 and 1 share `major_fraction`, the rest share the rest.

  std defaults to 0.02 * radius.
  """
  if std is None:
    std = 0.02 * radius  # 0.02 * 10 / sqrt(2) for the default radius
  if not 0.0 < major_fraction < 1.0:
    raise ValueError(f"major_fraction must be in (0, 1), got {major_fraction}")
  angles = np.arange(8) * (2.0 * np.pi / 8.0)
  centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  weights = np.full(8, (1.0 - major_fraction) / 6.0)
  weights[:2] = major_fraction / 2.0
  return MixtureSpec("mixture_8gaussians", centres, std, weights)


def grid_25gaussians(spacing: float = 2.0, std: float = 0.05) -> MixtureSpec:
  """5x5 grid, coordinates spacing * {-2, ..., 2}; label = 5 * ix + iy; equal weights."""
  ticks = spacing * (np.arange(5) - 2.0)
  gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
  centres = np.stack([gx.ravel(), gy.ravel()], axis=1)
  return MixtureSpec("mixture_25gaussians", centres, std, np.full(25, 1.0 / 25.0))


def get_spec(name: str) -> MixtureSpec:
  """The benchmark spec for data.name 'mixture_8gaussians' or 'mixture_25gaussians'."""
  if name == "mixture_8gaussians":
    return imbalanced_8gaussians()
  if name == "mixture_25gaussians":
    return grid_25gaussians()
  raise ValueError(f"data.name must be one of {list(base.MIXTURE_NAMES)}, got {name!r}")


# ----------------------------------------------------------------------------- metrics


def _kl(p: np.ndarray, q: np.ndarray) -> float:
  """sum_k p_k log(p_k / q_k) with 0 log 0 = 0; q must be > 0 where p > 0."""
  mask = p > 0
  return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def evaluate(points: Any, spec: MixtureSpec, *, num_std: float = 4.0,
             eps: float = 1e-12) -> dict[str, Any]:
  """Benchmark metrics of model samples (see the module docstring for definitions).

  Args:
    points: float [n, 2] samples (e.g. n = 10_000).
    spec: the target mixture.
    num_std: a sample is good if its distance to the nearest centre is < num_std * std.
    eps: smoothing floor for the model mode frequencies in the KL.
  Returns:
    dict with floats good_fraction, kl, js, mean_distance, int num_modes_covered, and
    arrays mode_freq float64 [K], mode_counts int64 [K].
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
    raise ValueError(f"points must be [n, 2] with n > 0, got shape {points.shape}")
  n, k = points.shape[0], spec.num_classes
  dist = np.linalg.norm(points[:, None, :] - spec.centres[None, :, :], axis=-1)  # [n, K]
  nearest = np.argmin(dist, axis=1)
  min_dist = dist[np.arange(n), nearest]
  good = min_dist < num_std * spec.std
  counts = np.bincount(nearest[good], minlength=k).astype(np.int64)
  num_good = int(counts.sum())
  if num_good > 0:
    mode_freq = counts / num_good
  else:
    mode_freq = np.full(k, 1.0 / k)
  q = np.maximum(mode_freq, eps)
  q = q / q.sum()
  kl = _kl(spec.weights, q)
  p_all = np.append(spec.weights, 0.0)
  q_all = np.append(counts, n - num_good) / n
  m = 0.5 * (p_all + q_all)
  js = 0.5 * _kl(p_all, m) + 0.5 * _kl(q_all, m)
  return {
      "good_fraction": num_good / n,
      "kl": kl,
      "js": js,
      "mean_distance": float(min_dist.mean()),
      "num_modes_covered": int(np.count_nonzero(counts)),
      "mode_freq": mode_freq,
      "mode_counts": counts,
  }


# ----------------------------------------------------------------------------- source


class MixtureSource(base.StepSource):
  """Infinite stream of mixture samples; batch `step` is a pure function of (seed, step).

  The whole global batch is drawn from `default_rng([seed, MIX, step])` and process p takes
  rows [p * b, (p + 1) * b), so the stream does not depend on the process count.
  'image' is float32 [b, 2] (points, not NHWC), 'label' int32 [b] the mode index.
  """

  def __init__(self, spec: MixtureSpec, seed: int = 0):
    self.spec = spec
    self.name = spec.name
    self.num_classes = spec.num_classes
    self.resolution = None
    self.channels = 2
    self.num_examples = None
    self.seed = base.check_seed(seed)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return (2,)

  def process_batch_at(self, step: int, global_batch_size: int, process_index: int,
                       process_count: int) -> base.Batch:
    b = global_batch_size // process_count
    rng = np.random.default_rng([self.seed, _MIX_TAG, step])
    points, labels = sample_from_rng(self.spec, rng, global_batch_size)
    sl = slice(process_index * b, (process_index + 1) * b)
    return {"image": points[sl], "label": labels[sl]}
