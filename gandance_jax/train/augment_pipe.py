"""NVIDIA's ADA augmentation pipeline (Karras et al., "Training Generative Adversarial
Networks with Limited Data", NeurIPS 2020), per sample, differentiable, in JAX.

The maths is that of stylegan2-ada-pytorch `training/augment.py` (`AugmentPipe.forward`):

  geometry  xflip, rotate90, integer translation, isotropic scale, pre-rotation, anisotropic
            scale, post-rotation, fractional translation, composed right to left into one
            inverse 3x3 matrix G_inv (output pixel -> input pixel, centred coordinates), then
            executed once: reflect padding of the margin G_inv needs, 2x up-sampling with the
            sym6 wavelet low-pass, bilinear `grid_sample` with zero padding, 2x down-sampling
            with the same filter and a crop back to H x W;
  colour    brightness, contrast, luma flip, hue rotation, saturation, composed into one 4x4
            matrix C (homogeneous RGB) applied per pixel (grey images use the row mean of C);
  filter    random per-band gains of a 4-band sym2 filter bank (the 1/f power normalised);
  noise     additive N(0, sigma^2) with sigma = |N(0, noise_std^2)|;
  cutout    a rectangle of `cutout_size` x the image size set to zero.

Each op fires per image with probability `p * multiplier` (rotations: pre OR post with that
probability), with the reference's parameter distributions and presets ('bgc' etc., from
`train.py`'s `augpipe_specs`). The random stream is not the reference's: every image draws
from its own key (`draw_params`), so results do not depend on the batch size or the sharding.

Two deliberate differences, both invisible in distribution:
  * The reference pads the whole batch by the largest margin any image needs. Here each
    image is padded by its own margin (the result the reference gives for a batch of one),
    so an image never depends on its neighbours; shapes stay static by reflect-padding a
    (3H - 2) x (3W - 2) canvas and zeroing what lies outside the image's own margin.
    (Cost: each image up-samples that whole canvas, ~36 H W C floats; the reference's batch
    margin is as large whenever one image of the batch zooms out or rotates far.)
  * An image none of whose geometric (colour, filter) gates fired skips that block and comes
    back bit for bit; the reference sends the whole batch through the up/down-sampling,
    which is the identity only up to float rounding (sym6 is orthogonal). So p = 0 is the
    identity exactly.

Images are NHWC; C = 3 (RGB) or 1 (grey: hue and saturation are skipped, as the reference).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Low-pass decomposition filters of the Daubechies symlets (PyWavelets' 'sym6', 'sym2').
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
        -0.048311742585633, 0.4910559419267466, 0.787641141030194, 0.3379294217276218,
        -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
        0.0017677118642428036, -0.007800708325034148)
SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)

# Geometry: the up/down-sampling filter normalised to unit DC gain (upfirdn2d.setup_filter);
# HZ_PAD original pixels of extra border are resampled on each side before the final crop.
GEOM_FILTER = np.asarray(SYM6) / np.sum(SYM6)
HZ_PAD = len(SYM6) // 4

# Image-space filter: expected power of the 4 bands (a 1/f spectrum).
EXPECTED_BAND_POWER = np.array([10.0, 1.0, 1.0, 1.0]) / 13.0


def filter_bank() -> np.ndarray:
  """[4, 43] float64 filter taps of the 4 frequency bands (lowest first) built from sym2.

  Band 0 is the low-pass H(z)H(1/z)/2 iterated three times; band i adds the high-pass
  H(-z)H(-1/z)/2 at scale i (the bands sum to a unit impulse: perfect reconstruction).
  """
  lo = np.asarray(SYM2)
  hi = lo * (-1.0) ** np.arange(lo.size)
  lo2 = np.convolve(lo, lo[::-1]) / 2
  hi2 = np.convolve(hi, hi[::-1]) / 2
  bank = np.eye(4, 1)
  for band in range(1, 4):
    # Dilate every band by 2 (zeros between taps), then smooth with the low-pass.
    dilated = np.zeros((4, 2 * bank.shape[1] - 1))
    dilated[:, ::2] = bank
    bank = np.stack([np.convolve(row, lo2) for row in dilated])
    start = (bank.shape[1] - hi2.size) // 2
    bank[band, start:start + hi2.size] += hi2
  return bank


_FILTER_BANK = filter_bank()

# ---------------------------------------------------------------------------------------
# The spec: probability multipliers and parameter ranges, as AugmentPipe's arguments.

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
OTHER_OPS = ("imgfilter", "noise", "cutout")
OPS = GEOMETRIC_OPS + COLOR_OPS + OTHER_OPS

_BLIT = ("xflip", "rotate90", "xint")
_GEOM = ("scale", "rotate", "aniso", "xfrac")
_COLOR = COLOR_OPS
# stylegan2-ada-pytorch train.py `augpipe_specs`: the ops each preset switches on (x1).
PRESETS: dict[str, tuple[str, ...]] = {
    "blit": _BLIT,
    "geom": _GEOM,
    "color": _COLOR,
    "filter": ("imgfilter",),
    "noise": ("noise",),
    "cutout": ("cutout",),
    "bg": _BLIT + _GEOM,
    "bgc": _BLIT + _GEOM + _COLOR,
    "bgcf": _BLIT + _GEOM + _COLOR + ("imgfilter",),
    "bgcfn": _BLIT + _GEOM + _COLOR + ("imgfilter", "noise"),
    "bgcfnc": _BLIT + _GEOM + _COLOR + ("imgfilter", "noise", "cutout"),
}


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """AugmentPipe's hyper-parameters (defaults: the reference's; all ops off).

  Hashable, so it can be a static argument of `jax.jit`.
  """
  # Pixel blitting.
  xflip: float = 0.0             # Probability multiplier for x-flip.
  rotate90: float = 0.0          # Probability multiplier for 90 degree rotations.
  xint: float = 0.0              # Probability multiplier for integer translation.
  xint_max: float = 0.125        # Range of integer translation, relative to the image size.
  # General geometric transformations.
  scale: float = 0.0             # Probability multiplier for isotropic scaling.
  rotate: float = 0.0            # Probability multiplier for arbitrary rotation.
  aniso: float = 0.0             # Probability multiplier for anisotropic scaling.
  xfrac: float = 0.0             # Probability multiplier for fractional translation.
  scale_std: float = 0.2         # Log2 standard deviation of isotropic scaling.
  rotate_max: float = 1.0        # Range of arbitrary rotation, 1 = full circle.
  aniso_std: float = 0.2         # Log2 standard deviation of anisotropic scaling.
  xfrac_std: float = 0.125       # Std of fractional translation, relative to the image size.
  # Colour transformations.
  brightness: float = 0.0        # Probability multiplier for brightness.
  contrast: float = 0.0          # Probability multiplier for contrast.
  lumaflip: float = 0.0          # Probability multiplier for luma flip.
  hue: float = 0.0               # Probability multiplier for hue rotation.
  saturation: float = 0.0        # Probability multiplier for saturation.
  brightness_std: float = 0.2    # Standard deviation of brightness.
  contrast_std: float = 0.5      # Log2 standard deviation of contrast.
  hue_max: float = 1.0           # Range of hue rotation, 1 = full circle.
  saturation_std: float = 1.0    # Log2 standard deviation of saturation.
  # Image-space filtering.
  imgfilter: float = 0.0         # Probability multiplier for image-space filtering.
  imgfilter_bands: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # Multipliers per band.
  imgfilter_std: float = 1.0     # Log2 standard deviation of filter amplification.
  # Image-space corruptions.
  noise: float = 0.0             # Probability multiplier for additive RGB noise.
  cutout: float = 0.0            # Probability multiplier for cutout.
  noise_std: float = 0.1         # Standard deviation of additive RGB noise.
  cutout_size: float = 0.5       # Size of the cutout rectangle, relative to the image size.

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      values = value if isinstance(value, tuple) else (value,)
      if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"AugmentSpec.{field.name} = {value!r}; expected finite values >= 0")
    if len(self.imgfilter_bands) != _FILTER_BANK.shape[0]:
      raise ValueError(f"AugmentSpec.imgfilter_bands = {self.imgfilter_bands!r}; expected "
                       f"{_FILTER_BANK.shape[0]} band multipliers")

  @classmethod
  def from_preset(cls, name: str, **overrides: float) -> "AugmentSpec":
    """The spec of a `train.py --augpipe` preset ('bgc', ...), fields overridable."""
    if name not in PRESETS:
      raise ValueError(f"unknown AugmentPipe preset {name!r}; allowed presets are "
                       f"{list(PRESETS)}")
    return cls(**{op: 1.0 for op in PRESETS[name]}, **overrides)

  @property
  def geometric(self) -> bool:
    return any(getattr(self, op) > 0 for op in GEOMETRIC_OPS)

  @property
  def color(self) -> bool:
    return any(getattr(self, op) > 0 for op in COLOR_OPS)

  @property
  def enabled(self) -> bool:
    return any(getattr(self, op) > 0 for op in OPS)


# ---------------------------------------------------------------------------------------
# Random draws of one image.

# Columns of the one uniform and the one normal vector each image draws (one threefry
# expansion each instead of ~40 small ones). The layout does not depend on the spec, so
# switching an op on does not change the draws of the others.
_UNIFORM = ("xflip_gate", "xflip", "rotate90_gate", "rotate90", "xint_gate", "xint_x",
            "xint_y", "scale_gate", "rotate_pre_gate", "rotate_pre", "aniso_gate",
            "rotate_post_gate", "rotate_post", "xfrac_gate", "brightness_gate",
            "contrast_gate", "lumaflip_gate", "lumaflip", "hue_gate", "hue",
            "saturation_gate", "imgfilter_gate0", "imgfilter_gate1", "imgfilter_gate2",
            "imgfilter_gate3", "noise_gate", "cutout_gate", "cutout_x", "cutout_y")
_NORMAL = ("scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast", "saturation",
           "imgfilter0", "imgfilter1", "imgfilter2", "imgfilter3", "noise")
_U = {name: i for i, name in enumerate(_UNIFORM)}
_N = {name: i for i, name in enumerate(_NORMAL)}


class AugmentParams(NamedTuple):
  """The draws of one image after gating: an op whose gate is off holds its identity value.

  Angles in radians, translations in pixels, scales as factors.
  """
  gates: dict[str, Array]   # op -> bool []: 'rotate_pre', 'rotate_post', 'imgfilter0'..3, ...
  xflip: Array              # [] 0 or 1 (1 = mirror x).
  rotate90: Array           # [] 0..3 quarter turns.
  xint: Array               # [2] integer translation (x, y), pixels.
  scale: Array              # [] isotropic scale factor.
  rotate_pre: Array         # [] rotation before the anisotropic scaling.
  aniso: Array              # [] anisotropic scale (x by s, y by 1 / s).
  rotate_post: Array        # [] rotation after it.
  xfrac: Array              # [2] fractional translation (x, y), pixels.
  brightness: Array         # [] added to R, G, B.
  contrast: Array           # [] factor.
  lumaflip: Array           # [] 0 or 1 (1 = Householder reflection of the luma axis).
  hue: Array                # [] rotation about the luma axis.
  saturation: Array         # [] factor of the chroma.
  imgfilter: Array          # [4] gain of each band before the power normalisation.
  noise_sigma: Array        # [] std of the additive noise.
  cutout_size: Array        # [] side of the rectangle relative to the image size (0 = none).
  cutout_center: Array      # [2] centre (x, y) relative to the image size.


def draw_params(key: Array, p: Array | float, spec: AugmentSpec,
                image_shape: tuple[int, int, int]) -> AugmentParams:
  """Draws one image's parameters with the reference's distributions and gates.

  Args:
    key: the image's PRNG key.
    p: [] overall probability multiplier (ADA's p, traced).
    spec: multipliers and ranges.
    image_shape: (H, W, C) of the image (translations are in pixels; C = 1 has no hue or
      saturation).
  """
  height, width, channels = image_shape
  key_u, key_n = jax.random.split(key)
  u = jax.random.uniform(key_u, (len(_UNIFORM),))
  n = jax.random.normal(key_n, (len(_NORMAL),))
  p = jnp.asarray(p, jnp.float32)
  size = jnp.array([width, height], jnp.float32)

  def fires(column: str, probability) -> Array:
    return u[_U[column]] < probability

  gates = {op: fires(f"{op}_gate", getattr(spec, op) * p)
           for op in ("xflip", "rotate90", "xint", "scale", "aniso", "xfrac", "brightness",
                      "contrast", "lumaflip", "noise", "cutout")}
  # Pre- and post-rotation each with p_rot so that P(pre OR post) = rotate * p.
  p_rot = 1 - jnp.sqrt(jnp.clip(1 - spec.rotate * p, 0, 1))
  gates["rotate_pre"] = fires("rotate_pre_gate", p_rot)
  gates["rotate_post"] = fires("rotate_post_gate", p_rot)
  color_3 = channels > 1
  gates["hue"] = fires("hue_gate", spec.hue * p) & color_3
  gates["saturation"] = fires("saturation_gate", spec.saturation * p) & color_3
  for band, strength in enumerate(spec.imgfilter_bands):
    gates[f"imgfilter{band}"] = fires(f"imgfilter_gate{band}", spec.imgfilter * p * strength)

  def pick(gate: str, value: Array, identity: float) -> Array:
    return jnp.where(gates[gate], value, identity)

  def angle(column: str, max_turn: float) -> Array:
    return (u[_U[column]] * 2 - 1) * np.pi * max_turn

  xint = (jnp.stack([u[_U["xint_x"]], u[_U["xint_y"]]]) * 2 - 1) * spec.xint_max
  xfrac = jnp.stack([n[_N["xfrac_x"]], n[_N["xfrac_y"]]]) * spec.xfrac_std
  bands = jnp.stack([pick(f"imgfilter{b}", jnp.exp2(n[_N[f"imgfilter{b}"]] * spec.imgfilter_std),
                          1.0) for b in range(len(spec.imgfilter_bands))])
  return AugmentParams(
      gates=gates,
      xflip=pick("xflip", jnp.floor(u[_U["xflip"]] * 2), 0.0),
      rotate90=pick("rotate90", jnp.floor(u[_U["rotate90"]] * 4), 0.0),
      xint=pick("xint", jnp.round(xint * size), 0.0),
      scale=pick("scale", jnp.exp2(n[_N["scale"]] * spec.scale_std), 1.0),
      rotate_pre=pick("rotate_pre", angle("rotate_pre", spec.rotate_max), 0.0),
      aniso=pick("aniso", jnp.exp2(n[_N["aniso"]] * spec.aniso_std), 1.0),
      rotate_post=pick("rotate_post", angle("rotate_post", spec.rotate_max), 0.0),
      xfrac=pick("xfrac", xfrac * size, 0.0),
      brightness=pick("brightness", n[_N["brightness"]] * spec.brightness_std, 0.0),
      contrast=pick("contrast", jnp.exp2(n[_N["contrast"]] * spec.contrast_std), 1.0),
      lumaflip=pick("lumaflip", jnp.floor(u[_U["lumaflip"]] * 2), 0.0),
      hue=pick("hue", angle("hue", spec.hue_max), 0.0),
      saturation=pick("saturation", jnp.exp2(n[_N["saturation"]] * spec.saturation_std), 1.0),
      imgfilter=bands,
      noise_sigma=pick("noise", jnp.abs(n[_N["noise"]]) * spec.noise_std, 0.0),
      cutout_size=pick("cutout", jnp.float32(spec.cutout_size), 0.0),
      cutout_center=jnp.stack([u[_U["cutout_x"]], u[_U["cutout_y"]]]),
  )


# ---------------------------------------------------------------------------------------
# Homogeneous matrices (the reference's helpers; scalars in, [3, 3] / [4, 4] out).

def _dot(a: Array, b: Array) -> Array:
  """a @ b in float32 (GPUs would otherwise round matmul inputs to TF32)."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _matrix(*rows) -> Array:
  return jnp.stack([jnp.stack([jnp.asarray(x, jnp.float32) for x in row]) for row in rows])


def translate2d(tx, ty) -> Array:
  return _matrix([1, 0, tx], [0, 1, ty], [0, 0, 1])


def scale2d(sx, sy) -> Array:
  return _matrix([sx, 0, 0], [0, sy, 0], [0, 0, 1])


def rotate2d(theta) -> Array:
  c, s = jnp.cos(theta), jnp.sin(theta)
  return _matrix([c, -s, 0], [s, c, 0], [0, 0, 1])


def translate3d(tx, ty, tz) -> Array:
  return _matrix([1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1])


def scale3d(sx, sy, sz) -> Array:
  return _matrix([sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1])


def rotate3d(axis, theta) -> Array:
  """Rotation by theta about the unit vector axis[:3] (Rodrigues), homogeneous [4, 4]."""
  vx, vy, vz = axis[0], axis[1], axis[2]
  s, c = jnp.sin(theta), jnp.cos(theta)
  cc = 1 - c
  return _matrix([vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                 [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                 [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                 [0, 0, 0, 1])


LUMA_AXIS = np.array([1.0, 1.0, 1.0, 0.0]) / np.sqrt(3.0)


def geometric_matrix(params: AugmentParams) -> Array:
  """[3, 3] G_inv: output pixel -> input pixel, coordinates centred on the image.

  Each op contributes the inverse of its forward map, multiplied on the right in the
  reference's order (so the forward maps apply xflip first, fractional translation last).
  """
  g = jnp.eye(3, dtype=jnp.float32)
  g = _dot(g, scale2d(1 / (1 - 2 * params.xflip), 1))
  g = _dot(g, rotate2d(np.pi / 2 * params.rotate90))
  g = _dot(g, translate2d(-params.xint[0], -params.xint[1]))
  g = _dot(g, scale2d(1 / params.scale, 1 / params.scale))
  g = _dot(g, rotate2d(params.rotate_pre))
  g = _dot(g, scale2d(1 / params.aniso, params.aniso))
  g = _dot(g, rotate2d(params.rotate_post))
  g = _dot(g, translate2d(-params.xfrac[0], -params.xfrac[1]))
  return g


def color_matrix(params: AugmentParams) -> Array:
  """[4, 4] C: homogeneous RGB in -> out, the ops multiplied on the left in order."""
  v = jnp.asarray(LUMA_AXIS, jnp.float32)
  vv = jnp.outer(v, v)
  eye = jnp.eye(4, dtype=jnp.float32)
  c = eye
  c = _dot(translate3d(params.brightness, params.brightness, params.brightness), c)
  c = _dot(scale3d(params.contrast, params.contrast, params.contrast), c)
  c = _dot(eye - 2 * vv * params.lumaflip, c)        # Householder reflection of the luma axis.
  c = _dot(rotate3d(v, params.hue), c)
  c = _dot(vv + (eye - vv) * params.saturation, c)
  return c


# ---------------------------------------------------------------------------------------
# Execution on one image [H, W, C].

def geometric_margins(g_inv: Array, height: int, width: int) -> Array:
  """[4] int32 (x0, y0, x1, y1): the reflect padding the reference gives this image alone.

  The bounding box of the output corners mapped by G_inv, plus 2 * HZ_PAD pixels of filter
  support, clipped to [0, size - 1] (reflect padding cannot exceed it).
  """
  cx, cy = (width - 1) / 2, (height - 1) / 2
  corners = jnp.array([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], jnp.float32)
  xy = _dot(g_inv, corners)[:2]                                    # [2, 4]
  margin = jnp.concatenate([jnp.max(-xy, axis=1), jnp.max(xy, axis=1)])
  margin = margin + jnp.array([2 * HZ_PAD - cx, 2 * HZ_PAD - cy] * 2, jnp.float32)
  margin = jnp.clip(margin, 0, jnp.array([width - 1, height - 1] * 2, jnp.float32))
  return jnp.ceil(margin).astype(jnp.int32)


# The FIR filters are applied as banded matrices (one matmul per axis): XLA's CPU depthwise
# convolutions are ~20x slower than these products at the project's sizes (<= 64 px). The
# cost is O(size^3) per image, so very large images would want a convolution instead.

def _along(matrix: Array | np.ndarray, x: Array, axis: int) -> Array:
  """matrix [M, N] applied along axis 0 or 1 of x [H, W, C] (N = x.shape[axis])."""
  matrix = jnp.asarray(matrix, jnp.float32)
  spec = "mh,hwc->mwc" if axis == 0 else "mw,hwc->hmc"
  return jnp.einsum(spec, matrix, x, precision=jax.lax.Precision.HIGHEST)


def _upsample_matrix(n: int) -> np.ndarray:
  """[2N, N] upfirdn2d.upsample2d along one axis: zeros between samples, padding 6 / 5,
  convolution with the sym6 low-pass at gain 2: out[q] = sum_k 2 f[q + 5 - 2k] x[k]."""
  taps = len(GEOM_FILTER)
  q, k = np.arange(2 * n)[:, None], np.arange(n)[None, :]
  j = q + (taps + 1) // 2 - 1 - 2 * k
  return np.where((j >= 0) & (j < taps), 2 * GEOM_FILTER[np.clip(j, 0, taps - 1)], 0.0)


def _downsample_matrix(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in] upfirdn2d.downsample2d(flip_filter=True, padding=-2 * HZ_PAD) along one
  axis (crop 1, correlate with f, keep every 2nd): out[k] = sum_j f[j] x[2k + 1 + j]."""
  taps = len(GEOM_FILTER)
  k, i = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
  j = i - 2 * k - 1
  return np.where((j >= 0) & (j < taps), GEOM_FILTER[np.clip(j, 0, taps - 1)], 0.0)


def warp(image: Array, g_inv: Array) -> Array:
  """Executes G_inv on one image as the reference does for a batch of one.

  Args:
    image: [H, W, C].
    g_inv: [3, 3] from `geometric_matrix`.
  Returns:
    [H, W, C], differentiable in `image`.
  """
  height, width, _ = image.shape
  x0, y0, x1, y1 = geometric_margins(g_inv, height, width)
  # Canvas: the image reflect-padded by the largest margin (size - 1), with everything
  # beyond this image's own margin zeroed, i.e. the reference's padded image placed at
  # offset (size - 1 - margin) in zeros (upfirdn2d and grid_sample pad with zeros).
  canvas = jnp.pad(image, ((height - 1, height - 1), (width - 1, width - 1), (0, 0)),
                   mode="reflect")
  rows = jnp.arange(3 * height - 2) - (height - 1)
  cols = jnp.arange(3 * width - 2) - (width - 1)
  keep = (((rows >= -y0) & (rows < height + y1))[:, None] &
          ((cols >= -x0) & (cols < width + x1))[None, :])
  canvas = jnp.where(keep[..., None], canvas, 0)
  up = _along(_upsample_matrix(canvas.shape[0]), canvas, 0)
  up = _along(_upsample_matrix(canvas.shape[1]), up, 1)            # [6H - 4, 6W - 4, C]
  # The reference's up-sampled image has 2x its padded size; zero the filter tails beyond.
  rows_up = jnp.arange(up.shape[0]) - 2 * (height - 1)
  cols_up = jnp.arange(up.shape[1]) - 2 * (width - 1)
  keep_up = (((rows_up >= -2 * y0) & (rows_up < 2 * (height + y1)))[:, None] &
             ((cols_up >= -2 * x0) & (cols_up < 2 * (width + x1)))[None, :])
  up = jnp.where(keep_up[..., None], up, 0)

  # Sample positions: output pixels of the up-sampled grid with HZ_PAD border, centred,
  # mapped by T(-1/2) S(2) G_inv S(1/2) T(1/2) (the reference's conjugation), then
  # un-centred on the canvas.
  out_h, out_w = 2 * (height + 2 * HZ_PAD), 2 * (width + 2 * HZ_PAD)
  g_up = _dot(_dot(_dot(_dot(translate2d(-0.5, -0.5), scale2d(2, 2)), g_inv),
                    scale2d(0.5, 0.5)), translate2d(0.5, 0.5))
  vy, vx = jnp.meshgrid(jnp.arange(out_h, dtype=jnp.float32) - (out_h - 1) / 2,
                        jnp.arange(out_w, dtype=jnp.float32) - (out_w - 1) / 2,
                        indexing="ij")
  sx = g_up[0, 0] * vx + g_up[0, 1] * vy + g_up[0, 2] + (up.shape[1] - 1) / 2
  sy = g_up[1, 0] * vx + g_up[1, 1] * vy + g_up[1, 2] + (up.shape[0] - 1) / 2
  sampled = _bilinear_zeros(up, sx, sy)                           # [out_h, out_w, C]
  sampled = _along(_downsample_matrix(height, out_h), sampled, 0)
  return _along(_downsample_matrix(width, out_w), sampled, 1)


def _bilinear_zeros(image: Array, sx: Array, sy: Array) -> Array:
  """grid_sample(mode='bilinear', padding_mode='zeros') at pixel coordinates (sx, sy)."""
  h, w, _ = image.shape
  fx, fy = jnp.floor(sx), jnp.floor(sy)
  wx, wy = (sx - fx)[..., None], (sy - fy)[..., None]
  ix, iy = fx.astype(jnp.int32), fy.astype(jnp.int32)

  def tap(dy: int, dx: int) -> Array:
    yy, xx = iy + dy, ix + dx
    inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[..., None]
    value = image[jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)]
    return jnp.where(inside, value, 0)

  return ((1 - wy) * ((1 - wx) * tap(0, 0) + wx * tap(0, 1)) +
          wy * ((1 - wx) * tap(1, 0) + wx * tap(1, 1)))


def apply_color(image: Array, c: Array) -> Array:
  """C on one image [H, W, C] (C = 3: rgb' = C[:3, :3] rgb + C[:3, 3]; C = 1: the mean of
  the three rows, luma' = sum(row[:3]) luma + row[3])."""
  channels = image.shape[-1]
  if channels == 3:
    return _dot(image, c[:3, :3].T) + c[:3, 3]
  if channels == 1:
    row = jnp.mean(c[:3, :], axis=0)
    return image * jnp.sum(row[:3]) + row[3]
  raise ValueError(f"colour augmentation needs C = 3 (RGB) or 1 (L); got images with "
                   f"{channels} channels")


def filter_taps(band_gains: Array) -> Array:
  """[43] separable filter from per-band gains [4], each normalised to keep the expected
  (1/f) power, as the reference accumulates them."""
  power = jnp.asarray(EXPECTED_BAND_POWER, jnp.float32)
  g = jnp.ones_like(band_gains)
  for band in range(band_gains.shape[0]):
    t = jnp.ones_like(band_gains).at[band].set(band_gains[band])
    g = g * (t / jnp.sqrt(jnp.sum(power * t * t)))
  return _dot(g, jnp.asarray(_FILTER_BANK, jnp.float32))


def _reflect_filter_matrix(taps: Array, n: int) -> Array:
  """[N, N]: reflect padding by T // 2 then correlation with taps [T], along one axis."""
  half = taps.shape[0] // 2
  # Static: which input sample each padded position reflects (numpy's 'reflect').
  source = np.pad(np.arange(n), half, mode="reflect")              # [N + 2 half]
  reflect = np.eye(n)[source]                                      # [N + 2 half, N]
  i, j = np.arange(n)[:, None], np.arange(n + 2 * half)[None, :]
  offset = j - i
  valid = (offset >= 0) & (offset < taps.shape[0])
  band = jnp.where(valid, taps[np.clip(offset, 0, taps.shape[0] - 1)], 0)
  return _dot(band, jnp.asarray(reflect, jnp.float32))


def apply_filter(image: Array, taps: Array) -> Array:
  """Separable filtering of one image [H, W, C] by taps [T] with reflect padding T // 2."""
  height, width, _ = image.shape
  x = _along(_reflect_filter_matrix(taps, width), image, 1)
  return _along(_reflect_filter_matrix(taps, height), x, 0)


def apply_cutout(image: Array, size: Array, center: Array) -> Array:
  """Zeroes pixels whose centre lies within size / 2 of `center` along both axes
  (relative units) in one image [H, W, C]."""
  height, width, _ = image.shape
  x = (jnp.arange(width) + 0.5) / width
  y = (jnp.arange(height) + 0.5) / height
  outside = ((jnp.abs(y - center[1]) >= size / 2)[:, None] |
             (jnp.abs(x - center[0]) >= size / 2)[None, :])
  return image * outside[..., None].astype(image.dtype)


def apply_params(image: Array, params: AugmentParams, spec: AugmentSpec,
                 noise: Array | None = None) -> Array:
  """The whole pipeline on one image [H, W, C] for given draws.

  `noise` [H, W, C] standard normals (needed when spec.noise > 0). A block whose gates all
  stayed off returns its input bit for bit.
  """
  gates = params.gates
  x = image
  if spec.geometric:
    fired = jnp.any(jnp.stack([gates[op] for op in ("xflip", "rotate90", "xint", "scale",
                                                      "rotate_pre", "aniso", "rotate_post",
                                                      "xfrac")]))
    x = jnp.where(fired, warp(x, geometric_matrix(params)), x)
  if spec.color:
    fired = jnp.any(jnp.stack([gates[op] for op in COLOR_OPS]))
    x = jnp.where(fired, apply_color(x, color_matrix(params)), x)
  if spec.imgfilter > 0:
    fired = jnp.any(jnp.stack([gates[f"imgfilter{b}"]
                               for b in range(len(spec.imgfilter_bands))]))
    x = jnp.where(fired, apply_filter(x, filter_taps(params.imgfilter)), x)
  if spec.noise > 0:
    if noise is None:
      raise ValueError("apply_params: spec.noise > 0 needs the `noise` field [H, W, C]")
    x = jnp.where(gates["noise"], x + noise * params.noise_sigma, x)
  if spec.cutout > 0:
    x = jnp.where(gates["cutout"], apply_cutout(x, params.cutout_size, params.cutout_center),
                  x)
  return x


def sample_keys(key: Array, batch_size: int) -> Array:
  """[B] per-image keys: `key` itself if it already holds B keys, else fold_in(key, i)."""
  is_typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  single = key.ndim == (0 if is_typed else 1)
  if not single:
    if key.shape[0] != batch_size:
      raise ValueError(f"augment: got {key.shape[0]} keys for a batch of {batch_size}; "
                       f"expected one key or one per image")
    return key
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size))


def augment(key: Array, images: Array, p: Array | float, spec: AugmentSpec) -> Array:
  """AugmentPipe on a batch: each image augmented from its own key.

  Args:
    key: one PRNG key (image i uses fold_in(key, i), i its index in this global batch) or
      [B] keys.
    images: [B, H, W, C] float, C = 3 or 1.
    p: [] ADA's probability multiplier (traced; no gradient).
    spec: the ops (static; `AugmentSpec.from_preset('bgc')`).
  Returns:
    [B, H, W, C] in the input dtype, differentiable in `images`; `images` itself at p = 0.
  """
  batch_size, height, width, channels = images.shape
  if spec.color and channels not in (1, 3):
    raise ValueError(f"augment: colour ops need C = 3 or 1; got images of shape "
                     f"{images.shape}")
  if not spec.enabled:
    return images
  keys = sample_keys(key, batch_size)
  p = jax.lax.stop_gradient(jnp.asarray(p, jnp.float32))

  def one(image_key: Array, image: Array) -> Array:
    key_params, key_noise = jax.random.split(image_key)
    params = draw_params(key_params, p, spec, (height, width, channels))
    noise = None
    if spec.noise > 0:
      noise = jax.random.normal(key_noise, image.shape, jnp.float32)
    return apply_params(image.astype(jnp.float32), params, spec, noise).astype(image.dtype)

  # p = 0 (ADA's start) fires no gate: skip the work for the whole batch.
  return jax.lax.cond(p > 0, lambda: jax.vmap(one)(keys, images), lambda: images)


def adjust_p(p: Array | float, sign_mean: Array | float, batch_size_global: int,
             interval: int, ada_kimg: float, target: float = 0.6) -> Array:
  """ADA's update of p (training_loop.py), made every `interval` steps.

  p += sign(E[sign(D(x_real))] - target) * batch_size_global * interval / (ada_kimg * 1000),
  clamped below at 0 (not above: p * multiplier >= 1 simply always fires).

  Args:
    p: [] current p.
    sign_mean: [] mean of sign(D(real)) over the images of the last `interval` steps.
    batch_size_global: images per step over all devices and processes.
    interval: steps between two adjustments (NVIDIA's ada_interval, 4).
    ada_kimg: thousands of images for p to move by 1 (NVIDIA: 500; 100 when resuming).
    target: the sign target (NVIDIA: 0.6).
  """
  step = jnp.sign(jnp.asarray(sign_mean, jnp.float32) - target)
  adjusted = jnp.asarray(p, jnp.float32) + step * (batch_size_global * interval) / (
      ada_kimg * 1000.0)
  return jnp.maximum(adjusted, 0.0)
