"""StyleGAN2 building blocks in JAX/Flax, numerically equivalent to NVIDIA's reference ops.

Everything here is NHWC. Convolution weights are stored as ``[kh, kw, in, out]`` *before*
the equalized-learning-rate gain (the gain is applied at run time, as in NVIDIA's
stylegan2-ada-pytorch), fully-connected weights as ``[in, out]``.

Resampling follows NVIDIA's ``upfirdn2d`` exactly (zero insertion, pad/crop, true
convolution with the FIR filter, decimation), with the filter held as a 2-D array in the
``buffers`` collection, so imported networks whose filters differ from the default
``[1, 3, 3, 1]`` are reproduced too.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
BUFFERS = "buffers"  # Non-trainable variables (filters, constant noise, w_avg).

# --------------------------------------------------------------------------------------
# Elementwise ops.

_ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], float]] = {
    "linear": (lambda x: x, 1.0),
    "relu": (jax.nn.relu, float(np.sqrt(2))),
    "lrelu": (lambda x: jax.nn.leaky_relu(x, 0.2), float(np.sqrt(2))),
}


def activation_gain(act: str) -> float:
  """Default gain of an activation (sqrt(2) for (l)relu), as NVIDIA's ``def_gain``."""
  if act not in _ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
  return _ACTIVATIONS[act][1]


def bias_act(x: Array, b: Array | None = None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> Array:
  """Adds a bias over the last (channel) axis, applies ``act``, scales by ``gain``, clamps.

  Same order of operations as NVIDIA's ``bias_act``; ``gain=None`` means the activation's
  default gain.
  """
  fn, def_gain = _ACTIVATIONS[act] if act in _ACTIVATIONS else (None, None)
  if fn is None:
    raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
  if b is not None:
    x = x + b.astype(x.dtype)
  x = fn(x)
  gain = def_gain if gain is None else gain
  if gain != 1:
    x = x * gain
  if clamp is not None and clamp >= 0:
    x = jnp.clip(x, -clamp, clamp)
  return x


def normalize_2nd_moment(x: Array, axis: int = -1, eps: float = 1e-8) -> Array:
  """x / sqrt(mean(x^2) + eps) along ``axis``."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


# --------------------------------------------------------------------------------------
# FIR resampling (upfirdn2d).


def setup_filter(f: Sequence[float] | np.ndarray = (1, 3, 3, 1), normalize: bool = True
                 ) -> np.ndarray:
  """Returns the 2-D FIR filter ``[fh, fw]`` NVIDIA builds from a 1-D tap list (outer product)."""
  f = np.asarray(f, dtype=np.float32)
  if f.ndim == 0:
    f = f[None]
  if f.ndim == 1:
    f = np.outer(f, f)
  if f.ndim != 2:
    raise ValueError(f"filter must be 1-D or 2-D, got shape {f.shape}")
  if normalize:
    f = f / f.sum()
  return f.astype(np.float32)


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
  if isinstance(padding, int):
    return padding, padding, padding, padding
  if len(padding) == 2:
    px, py = padding
    return px, px, py, py
  px0, px1, py0, py1 = padding
  return px0, px1, py0, py1


def upfirdn2d(x: Array, f: Array | None, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, flip_filter: bool = False,
              gain: float = 1.0) -> Array:
  """Upsample (zero insertion), pad/crop, FIR-filter and downsample a batch of images.

  Args:
    x: [N, H, W, C].
    f: [fh, fw] filter (None = identity).
    up, down: integer factors.
    padding: (x0, x1, y0, y1) w.r.t. the upsampled image; negative values crop.
    flip_filter: False = convolution (NVIDIA's default), True = correlation.
    gain: overall signal gain.
  Returns:
    [N, H', W', C].
  """
  px0, px1, py0, py1 = _parse_padding(padding)
  c = x.shape[-1]
  # Zero insertion puts up-1 zeros *after* every pixel, then pads/crops: lax.pad does both.
  zero = jnp.zeros((), x.dtype)
  x = jax.lax.pad(x, zero, [(0, 0, 0), (py0, py1 + up - 1, up - 1),
                            (px0, px1 + up - 1, up - 1), (0, 0, 0)])
  if f is None:
    f = jnp.ones((1, 1), jnp.float32)
  f = jnp.asarray(f, jnp.float32) * gain
  if not flip_filter:  # A true convolution is a correlation with the flipped filter.
    f = f[::-1, ::-1]
  # The FIR filter as a sum of fh*fw shifted, strided slices rather than a depthwise
  # (feature_group_count=C) convolution: XLA:CPU runs depthwise convolutions and their
  # gradients through a slow generic path (100-1000x slower here), while slices, multiplies
  # and adds fuse into elementwise loops. Same arithmetic, same result.
  fh, fw = f.shape
  n, h, w, _ = x.shape
  oh, ow = (h - fh) // down + 1, (w - fw) // down + 1
  out = None
  for i in range(fh):
    for j in range(fw):
      tap = jax.lax.slice(x, (0, i, j, 0),
                          (n, i + (oh - 1) * down + 1, j + (ow - 1) * down + 1, c),
                          (1, down, down, 1)) * f[i, j].astype(x.dtype)
      out = tap if out is None else out + tap
  return out


def upsample2d(x: Array, f: Array, up: int = 2) -> Array:
  """2x FIR upsampling that keeps the image aligned: [N, H, W, C] -> [N, 2H, 2W, C]."""
  fh, fw = f.shape
  p = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
  return upfirdn2d(x, f, up=up, padding=p, gain=up * up)


def downsample2d(x: Array, f: Array, down: int = 2) -> Array:
  """2x FIR downsampling: [N, H, W, C] -> [N, H/2, W/2, C]."""
  fh, fw = f.shape
  p = ((fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2)
  return upfirdn2d(x, f, down=down, padding=p)


def _tap_slices(in_len: int, out_len: int, tap: int, pad_lo: int, stride: int,
                dilation: int) -> tuple[int, int, int, int, int] | None:
  """The (output start, output step, input start, input step, count) that one kernel tap
  connects in one spatial dimension of a convolution, or None when it only sees padding.

  Output position y reads the zero-dilated, padded input at ``stride * y + tap``, which is
  input pixel ``(stride * y + tap - pad_lo) / dilation`` when that is an integer in range.
  """
  ys = [y for y in range(out_len) if (stride * y + tap - pad_lo) % dilation == 0
        and 0 <= (stride * y + tap - pad_lo) // dilation < in_len]
  if not ys:
    return None
  y_step = ys[1] - ys[0] if len(ys) > 1 else 1
  i0 = (stride * ys[0] + tap - pad_lo) // dilation
  i_step = stride * y_step // dilation
  if (ys != list(range(ys[0], ys[0] + y_step * len(ys), y_step))
      or stride * y_step % dilation):  # Only stride 1 or dilation 1 is used here.
    raise ValueError(f"stride {stride} with input dilation {dilation} is not supported")
  return ys[0], y_step, i0, i_step, len(ys)


def _strided(x: Array, spec: Sequence[tuple[int, int, int]]) -> Array:
  # spec: (start, step, count) for the two spatial axes of an NHWC array.
  (sh, dh, ch), (sw, dw, cw) = spec
  n, _, _, c = x.shape
  return jax.lax.slice(x, (0, sh, sw, 0), (n, sh + (ch - 1) * dh + 1, sw + (cw - 1) * dw + 1, c),
                       (1, dh, dw, 1))


def _taps(x_shape: Sequence[int], y_shape: Sequence[int], kh: int, kw: int, stride: int,
          padding: Sequence[tuple[int, int]], lhs_dilation: int) -> list[tuple[int, int, Any, Any]]:
  """(a, b, input spec, output spec) of every kernel tap that reads real input pixels; a spec
  is ((start, step, count) along H, (start, step, count) along W) for `_strided`."""
  taps = []
  for a in range(kh):
    sa = _tap_slices(x_shape[1], y_shape[1], a, padding[0][0], stride, lhs_dilation)
    for b in range(kw):
      sb = _tap_slices(x_shape[2], y_shape[2], b, padding[1][0], stride, lhs_dilation)
      if sa is not None and sb is not None:
        taps.append((a, b, ((sa[2], sa[3], sa[4]), (sb[2], sb[3], sb[4])),
                     ((sa[0], sa[1], sa[4]), (sb[0], sb[1], sb[4]))))
  return taps


def _unstrided(y: Array, spec: Sequence[tuple[int, int, int]], shape: Sequence[int]) -> Array:
  # Places y at the positions `_strided(., spec)` reads from an array of `shape`, zeros elsewhere.
  (sh, dh, ch), (sw, dw, cw) = spec
  zero = jnp.zeros((), y.dtype)
  return jax.lax.pad(y, zero, [(0, 0, 0), (sh, shape[1] - sh - (ch - 1) * dh - 1, dh - 1),
                               (sw, shape[2] - sw - (cw - 1) * dw - 1, dw - 1), (0, 0, 0)])


def _conv_out_shape(x_shape, w_shape, stride, padding, lhs_dilation) -> tuple[int, ...]:
  n, h, w, _ = x_shape
  def size(l, k, p):
    return ((l - 1) * lhs_dilation + 1 + p[0] + p[1] - k) // stride + 1
  return (n, size(h, w_shape[0], padding[0]), size(w, w_shape[1], padding[1]), w_shape[3])


# The convolution as one matrix product per kernel tap, over the pixels that tap connects
# (the zeros of an input dilation and the skipped pixels of a stride are never multiplied):
# the forward pass, the input gradient and the weight gradient. Each costs the convolution's
# FLOPs at GEMM speed. Used on XLA:CPU only, where XLA's own kernels run the backward pass of
# these convolutions far slower at 512 channels (forward + backward, batch 16: up-sampling
# conv 30x, plain 3x3 3.3x, down-sampling 1.5x; benchmarks/RESULTS.md, issue 18); GPUs and
# TPUs keep XLA's own kernels (cuDNN / TPU convolutions).


def _accumulate_taps(src, out_shape, w, taps, equation: str, forward: bool):
  """sum over kernel taps of one GEMM each: the forward convolution (src = x, out = y) or its
  input gradient (src = dy, out = dx, the same taps read the other way)."""
  out = jnp.zeros(out_shape, src.dtype)
  for a, b, xs, ys in taps:
    src_slice, out_slice = (xs, ys) if forward else (ys, xs)
    t = jnp.einsum(equation, _strided(src, src_slice), w[a, b],
                   preferred_element_type=jnp.float32).astype(src.dtype)
    out = out + _unstrided(t, out_slice, out_shape)
  return out


def _conv_taps_fwd(x, w, stride, padding, lhs_dilation):
  y_shape = _conv_out_shape(x.shape, w.shape, stride, padding, lhs_dilation)
  taps = _taps(x.shape, y_shape, w.shape[0], w.shape[1], stride, padding, lhs_dilation)
  return _accumulate_taps(x, y_shape, w, taps, "nhwi,io->nhwo", forward=True)


def _conv_taps_dx(x_shape, w, g, stride, padding, lhs_dilation):
  taps = _taps(x_shape, g.shape, w.shape[0], w.shape[1], stride, padding, lhs_dilation)
  return _accumulate_taps(g, x_shape, w, taps, "nhwo,io->nhwi", forward=False)


def _conv_taps_dw(x, g, w_shape, stride, padding, lhs_dilation):
  dw = jnp.zeros(tuple(w_shape), jnp.float32)
  for a, b, xs, ys in _taps(x.shape, g.shape, w_shape[0], w_shape[1], stride, padding,
                            lhs_dilation):
    t = jnp.einsum("nhwi,nhwo->io", _strided(x, xs), _strided(g, ys),
                   preferred_element_type=jnp.float32)
    dw = dw.at[a, b].set(t)
  return dw


def _conv_native(x: Array, w: Array, stride: int, padding: tuple[tuple[int, int], ...],
                 lhs_dilation: int) -> Array:
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(stride, stride), padding=padding,
      lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_hwio(x: Array, w: Array, stride: int, padding: tuple[tuple[int, int], ...],
               lhs_dilation: int) -> Array:
  """conv_general_dilated (NHWC, HWIO) whose CPU lowering uses per-tap GEMMs where faster."""
  if stride == 1:  # XLA:CPU's forward kernel is fine here; only its gradients are not.
    return _conv_native(x, w, stride, padding, lhs_dilation)
  return jax.lax.platform_dependent(
      x, w, cpu=lambda x, w: _conv_taps_fwd(x, w, stride, padding, lhs_dilation),
      default=lambda x, w: _conv_native(x, w, stride, padding, lhs_dilation))


def _conv_hwio_fwd(x, w, stride, padding, lhs_dilation):
  return _conv_hwio(x, w, stride, padding, lhs_dilation), (x, w)


def _conv_hwio_bwd(stride, padding, lhs_dilation, res, g):
  x, w = res

  def native(x, w, g):
    _, vjp = jax.vjp(lambda x_, w_: _conv_native(x_, w_, stride, padding, lhs_dilation), x, w)
    return vjp(g)

  def cpu(x, w, g):
    if stride > 1 or lhs_dilation > 1:
      dx = _conv_taps_dx(x.shape, w, g, stride, padding, lhs_dilation)
    else:
      _, vjp = jax.vjp(lambda x_: _conv_native(x_, w, stride, padding, lhs_dilation), x)
      (dx,) = vjp(g)
    dw = _conv_taps_dw(x, g, w.shape, stride, padding, lhs_dilation).astype(w.dtype)
    return dx, dw

  return jax.lax.platform_dependent(x, w, g, cpu=cpu, default=native)


_conv_hwio.defvjp(_conv_hwio_fwd, _conv_hwio_bwd)


# The per-tap form pays off from these channel counts (min of in and out); below them XLA's
# own kernels are as fast or faster and compile sooner (benchmarks/train_widths.py --layers=16
# --channels=16,32,64,128, RESULTS.md): the input-dilated up-sampling convolution gains from
# 64 channels (1024 -> 388 ms), the plain and strided ones only from 128 (1471 -> 684 ms).
# Decided from static shapes at trace time; the same on every platform, so a program's
# structure does not depend on where it was traced.
_TAPS_MIN_CHANNELS = 128
_TAPS_MIN_CHANNELS_DILATED = 64


def _taps_pay_off(w_shape: Sequence[int], lhs_dilation: int) -> bool:
  channels = min(int(w_shape[2]), int(w_shape[3]))
  if lhs_dilation > 1:
    return channels >= _TAPS_MIN_CHANNELS_DILATED
  return channels >= _TAPS_MIN_CHANNELS


def _conv(x: Array, w: Array, stride: int = 1, padding: Sequence[tuple[int, int]] = ((0, 0),) * 2,
          lhs_dilation: int = 1, flip_weight: bool = True) -> Array:
  # flip_weight=True is a correlation (torch's conv2d); False a true convolution.
  if not flip_weight:
    w = w[::-1, ::-1]
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  conv = _conv_hwio if _taps_pay_off(w.shape, int(lhs_dilation)) else _conv_native
  return conv(x, w.astype(x.dtype), int(stride), padding, int(lhs_dilation))


def conv2d_resample(x: Array, w: Array, f: Array | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, flip_weight: bool = True) -> Array:
  """Convolution with optional FIR up/downsampling, the same arithmetic as NVIDIA's.

  Args:
    x: [N, H, W, I].
    w: [kh, kw, I, O].
    f: [fh, fw] FIR filter for the resampling.
    up, down: factors (only one of them > 1).
    padding: padding w.r.t. the upsampled image.
    flip_weight: True = correlation, False = convolution (NVIDIA uses False when up > 1).
  Returns:
    [N, H * up / down, W * up / down, O].
  """
  kh, kw = w.shape[0], w.shape[1]
  fh, fw = (1, 1) if f is None else f.shape
  px0, px1, py0, py1 = _parse_padding(padding)
  if up > 1:
    px0 += (fw + up - 1) // 2
    px1 += (fw - up) // 2
    py0 += (fh + up - 1) // 2
    py1 += (fh - up) // 2
  if down > 1:
    px0 += (fw - down + 1) // 2
    px1 += (fw - down) // 2
    py0 += (fh - down + 1) // 2
    py1 += (fh - down) // 2

  if kw == 1 and kh == 1 and down > 1 and up == 1:
    x = upfirdn2d(x, f, down=down, padding=(px0, px1, py0, py1))
    return _conv(x, w, flip_weight=flip_weight)
  if kw == 1 and kh == 1 and up > 1 and down == 1:
    x = _conv(x, w, flip_weight=flip_weight)
    return upfirdn2d(x, f, up=up, padding=(px0, px1, py0, py1), gain=up * up)
  if down > 1 and up == 1:
    x = upfirdn2d(x, f, padding=(px0, px1, py0, py1))
    return _conv(x, w, stride=down, flip_weight=flip_weight)
  if up > 1:
    # NVIDIA runs a strided transposed convolution here (with the weight flipped when
    # flip_weight=True); its JAX equivalent is a convolution of the zero-interleaved input
    # (lhs_dilation) padded by k-1-p, with the same correlation/convolution semantics.
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = _conv(x, w, padding=((kh - 1 - pyt, kh - 1 - pyt), (kw - 1 - pxt, kw - 1 - pxt)),
              lhs_dilation=up, flip_weight=flip_weight)
    x = upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)
    if down > 1:
      x = upfirdn2d(x, f, down=down)
    return x
  if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
    return _conv(x, w, padding=((py0, py0), (px0, px0)), flip_weight=flip_weight)
  x = upfirdn2d(x, None, padding=(px0, px1, py0, py1))
  return _conv(x, w, flip_weight=flip_weight)


def modulated_conv2d(x: Array, weight: Array, styles: Array, noise: Array | None = None,
                     up: int = 1, padding: int = 0, resample_filter: Array | None = None,
                     demodulate: bool = True, flip_weight: bool = True,
                     fused_modconv: bool | None = False, down: int = 1) -> Array:
  """StyleGAN2 modulated (and demodulated) convolution, in either of NVIDIA's two forms.

  Non-fused (``fused_modconv=False``, NVIDIA's training path): scale the input channels by
  the styles, convolve with the shared weight, scale the output channels by the
  demodulation coefficients. Fused (NVIDIA's inference path): one weight per sample,
  ``weight * styles * dcoefs``, and a per-sample (grouped) convolution. The same function;
  the results differ only by float rounding (the products are associated differently).

  Args:
    x: [N, H, W, I].
    weight: [kh, kw, I, O] (gain already applied by the caller where needed).
    styles: [N, I].
    noise: broadcastable to [N, H', W', O] or None.
    fused_modconv: True = per-sample weights and a grouped convolution; None = fused unless
      the default backend is the CPU, where XLA's grouped convolution runs 5-8x slower than
      the non-fused form (benchmarks/RESULTS.md), False = non-fused.
  Returns:
    [N, H * up / down, W * up / down, O].
  """
  n, _, _, in_ch = x.shape
  if styles.shape != (n, in_ch):
    raise ValueError(f"styles must have shape {(n, in_ch)}, got {styles.shape}")
  if weight.shape[2] != in_ch:
    raise ValueError(f"weight expects {weight.shape[2]} input channels, x has {in_ch}")
  dcoefs = None
  if demodulate:
    # sum_{k,i} (w[k,i,o] s[n,i])^2 = sum_i s[n,i]^2 * sum_k w[k,i,o]^2.
    wsq = jnp.sum(jnp.square(weight), axis=(0, 1))  # [I, O]
    dcoefs = jax.lax.rsqrt(jnp.square(styles) @ wsq + 1e-8)  # [N, O]

  def fused(x, weight, styles, dcoefs):
    w = weight[None] * styles[:, None, None, :, None]  # [N, kh, kw, I, O]
    if dcoefs is not None:
      w = w * dcoefs[:, None, None, None, :]
    # vmap of a convolution over (input, weight) is XLA's grouped convolution (groups = N).
    return jax.vmap(lambda xi, wi: conv2d_resample(
        xi[None], wi, f=resample_filter, up=up, down=down, padding=padding,
        flip_weight=flip_weight)[0])(x, w)

  def non_fused(x, weight, styles, dcoefs):
    x = x * styles[:, None, None, :].astype(x.dtype)
    x = conv2d_resample(x, weight, f=resample_filter, up=up, down=down, padding=padding,
                        flip_weight=flip_weight)
    if dcoefs is not None:
      x = x * dcoefs[:, None, None, :].astype(x.dtype)
    return x

  if fused_modconv is None:
    # Decided at trace time (not with lax.platform_dependent) so that a program holds one
    # form; a program lowered for another platform than the default one may pick the slower.
    fused_modconv = jax.default_backend() != "cpu"
  x = (fused if fused_modconv else non_fused)(x, weight, styles, dcoefs)
  if noise is not None:
    x = x + noise.astype(x.dtype)
  return x


def minibatch_std(x: Array, group_size: int | None, num_channels: int = 1,
                  num_shards: int = 1) -> Array:
  """Appends the minibatch standard deviation as extra channels: [N,H,W,C] -> [N,H,W,C+F].

  Groups are formed inside each of `num_shards` contiguous blocks of the batch. With one
  block this is NVIDIA's grouping of the whole batch; with one block per device of a
  batch-sharded mesh it is NVIDIA's multi-GPU behaviour (each GPU groups its own samples) and
  the statistic needs no cross-device communication, whereas groups of the global batch
  span devices (sample j's group is j, j + N/G, ...) and cost all-reduces in every D pass.
  """
  n, h, w, c = x.shape
  s = int(num_shards)
  if s < 1 or n % s:
    raise ValueError(f"minibatch-stddev shards {s} must be >= 1 and divide the batch size {n}")
  m = n // s
  g = min(group_size, m) if group_size is not None else m
  if m % g:
    raise ValueError(f"minibatch-stddev group size {g} must divide the samples per shard {m}")
  f = num_channels
  # Within a block, sample index = group_member * (M / G) + group, as NVIDIA's
  # reshape(G, -1, ...).
  y = x.reshape(s, g, m // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=1, keepdims=True)
  y = jnp.mean(jnp.square(y), axis=1)
  y = jnp.sqrt(y + 1e-8)
  y = jnp.mean(y, axis=(2, 3, 5))  # [s, M / G, F]
  y = jnp.broadcast_to(y[:, None], (s, g, m // g, f)).reshape(n, 1, 1, f)
  y = jnp.broadcast_to(y, (n, h, w, f)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)


# --------------------------------------------------------------------------------------
# Equalized-learning-rate layers.


def _normal_init(scale: float) -> Callable[[Array, Sequence[int], Any], Array]:
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * scale
  return init


class FullyConnectedLayer(nn.Module):
  """Dense layer with equalized learning rate. Params: weight [in, out], bias [out]."""
  features: int                  # Number of output features.
  activation: str = "linear"     # 'linear', 'relu', 'lrelu'.
  lr_multiplier: float = 1.0     # Learning-rate multiplier (mapping network: 0.01).
  bias_init: float = 0.0         # Initial bias value (affine layers: 1).
  use_bias: bool = True          # Add a bias before the activation?

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    weight = self.param("weight", _normal_init(1.0 / self.lr_multiplier),
                        (in_features, self.features))
    w = weight * (self.lr_multiplier / np.sqrt(in_features))
    x = x @ w.astype(x.dtype)
    b = None
    if self.use_bias:
      bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
      b = bias * self.lr_multiplier if self.lr_multiplier != 1 else bias
    return bias_act(x, b, act=self.activation)


def resample_filter_buffer(module: nn.Module, taps: Sequence[float]) -> Array:
  """Declares the FIR filter of `module` in the buffers collection (NVIDIA: a buffer too)."""
  return module.variable(BUFFERS, "resample_filter",
                         lambda: jnp.asarray(setup_filter(taps))).value


class Conv2dLayer(nn.Module):
  """Convolution with equalized learning rate, optional FIR up/downsampling and clamping."""
  out_channels: int                          # Number of output channels.
  kernel_size: int                           # Width and height of the kernel.
  use_bias: bool = True                      # Add a bias before the activation?
  activation: str = "linear"                 # 'linear', 'relu', 'lrelu'.
  up: int = 1                                # Upsampling factor.
  down: int = 1                              # Downsampling factor.
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps.
  conv_clamp: float | None = None            # Clamp the output to +-X, None = off.

  @nn.compact
  def __call__(self, x: Array, gain: float = 1.0) -> Array:
    in_channels = x.shape[-1]
    k = self.kernel_size
    f = resample_filter_buffer(self, self.resample_filter)
    weight = self.param("weight", _normal_init(1.0), (k, k, in_channels, self.out_channels))
    w = weight * (1.0 / np.sqrt(in_channels * k * k))
    x = conv2d_resample(x, w, f=f, up=self.up, down=self.down, padding=k // 2,
                        flip_weight=(self.up == 1))
    b = None
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    act_gain = activation_gain(self.activation) * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)
