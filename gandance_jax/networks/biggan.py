"""Class-conditional BigGAN in Flax, equivalent to ajbrock/BigGAN-PyTorch (BigGAN.py, layers.py).

Usage::

  G = Generator(num_classes=1000, resolution=128, ch=96, dim_z=120, shared_dim=128, hier=True,
                attention='64')
  g_vars = init_generator(G, key)                       # {'params', 'batch_stats'}
  img = G.apply(g_vars, z, labels)                      # eval mode, [B, H, W, 3] in [-1, 1]
  img, upd = G.apply(g_vars, z, labels, train=True, mutable=['batch_stats'])
  ws  = G.apply(g_vars, z, labels, method=G.mapping)    # [B, num_ws, w_dim]
  img = G.apply(g_vars, ws, method=G.synthesis)
  D = Discriminator(num_classes=1000, resolution=128, ch=96, attention='64')
  logits = D.apply(d_vars, img, labels)                 # [B]

Images are NHWC; labels are int ids in [0, num_classes), plus ``num_classes`` (the GANdance
empty class) when ``empty_class=True``, which widens G's shared embedding and D's projection
embedding by one row each (so the reference's ``n_classes`` counts it).

Variables: ``params`` and ``batch_stats``. ``batch_stats`` holds every non-trainable buffer of
the reference: the batch-norm running statistics ``stored_mean`` / ``stored_var`` and the
spectral-norm vectors ``u<i>`` and logged singular values ``sv<i>`` (the collection
flax.linen.SpectralNorm uses, so one ``mutable=['batch_stats']`` covers both). Module and
variable names are the reference's state-dict keys (``blocks.1.0.bn1.gain.u0``), so the
import below is a layout change only.

Train and eval mode (``train=``), as the reference's ``.train()`` / ``.eval()``:

* Spectral norm runs ``num_itrs`` power-iteration steps from the stored ``u`` on every
  forward and divides the weight by ``sigma = v W^T u^T`` (``u``, ``v`` without gradient,
  ``W`` with). Eval mode never writes ``u`` (so it repeats one step from the stored ``u``);
  train mode writes ``u`` after each step and ``sv`` at the end, when ``batch_stats`` is
  mutable (a train-mode call without ``mutable`` leaves the buffers as they are).
* Batch norm uses the stored statistics in eval mode. In train mode it normalises with the
  batch mean and biased variance and, when ``batch_stats`` is mutable, updates
  ``stored <- 0.9 stored + 0.1 batch`` with the unbiased variance. The batch is the global
  one (BigGAN's cross-replica BN): under ``jax.jit`` with a batch sharded over a mesh XLA's
  reductions already are global, and under ``shard_map`` / ``vmap`` with a bound axis
  ``axis_name`` (default 'data') the moments are ``pmean``-ed over it.

GANdance on BigGAN: the conditional-generator interface
---------------------------------------------------------
BigGAN has no mapping network; the class enters through the shared embedding
``y = shared(c)`` [B, shared_dim], which with ``hier=True`` is concatenated with one chunk of z
per generator block and fed to every conditional BN of that block. z is split into
``num_slots = num_blocks + 1`` chunks of ``z_chunk_size = dim_z // num_slots`` (the reference
drops the ``dim_z % num_slots`` remainder, so ``G.z_dim`` is the effective size): chunk 0 feeds
the first linear layer, chunk i + 1 block i. The paper's ``w`` is taken to be the stack of
these per-slot vectors::

  mapping(z, c) = ws [B, num_ws, w_dim],  num_ws = num_slots,  ws[:, i] = [y, z_i]
  synthesis(ws) = the rest of G (linear(z_0), blocks conditioned on ws[:, 1:], output layer)

Row 0 carries the linear layer's chunk z_0; its y copy is not used by G (BigGAN's first layer
is unconditional), so guidance on row 0 changes nothing, as it should. Without ``hier`` the
whole z feeds the linear layer and every block sees y alone: row 0 is [y, z] and rows 1.. are
[y, 0] (zero padded to w_dim = shared_dim + dim_z). Since z, its chunks and the zero padding are
the same in w_c and w_oppo, ``w_oppo + s (w_c - w_oppo)`` row-wise leaves them unchanged and
acts exactly as Alg. 2 / Alg. 3 on y: the mean of y over the opposite set (the mapping is linear
in the one-hot label, so vmapping it like StyleGAN2's is the mean of the embedding rows) or the
empty class's y. (In floating point the z part of a training-free ``w_oppo`` is a float
mean of identical copies of z, which may differ from z by an ulp or two; with the empty class
it is exact.) A [num_ws] layer-wise scale is per slot; ``ws_resolutions()`` gives
``bottom_width`` for row 0 and each block's output resolution for the others.

Truncation: BigGAN's truncation trick samples z from a normal truncated to [-t, t]. There is
no ``w_avg`` (``w_avg_beta`` is None, so the sampler refuses ``truncation_psi != 1`` with a
message): instead ``mapping`` takes the standard-normal z every sampler draws and, with a
threshold ``truncation = t > 0`` (module field, or the ``truncation=`` keyword), maps it
through ``Phi^-1(Phi(-t) + (1 - 2 Phi(-t)) Phi(z))``, which turns N(0, 1) into exactly that
truncated normal, elementwise. ``truncation = 0`` (default) is no truncation. A sampler
config's truncation threshold therefore goes into the module it drives, e.g.
``sampler.make_sampler(G.clone(truncation=0.5), mode='learned', scale=1.3)``; guidance then
acts on the truncated z's rows exactly as without truncation.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax.networks.base import (NOISE_MODES, ConditionalLabels, check_classes,
                                        flatten_tree, import_state_dict, validate_labels)

Array = jax.Array
STATS = "batch_stats"  # Non-trainable: BN running statistics and spectral-norm u / sv.
INITS = ("ortho", "N02", "glorot", "xavier")
BN_MOMENTUM = 0.1
OUTPUT_BN_EPS = 1e-5  # The reference's output-layer BN ignores BN_eps.

# --------------------------------------------------------------------------------------
# Architecture tables (BigGAN.py G_arch / D_arch): channel multipliers and block
# resolutions per output resolution.

_G_TABLE = {
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1], [8, 16, 32, 64, 128]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2], [8, 16, 32, 64]),
    32: ([4, 4, 4], [4, 4, 4], [8, 16, 32]),
}
# in multipliers (after the image channels), out multipliers, downsample, block resolutions.
_D_TABLE = {
    256: ([1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16], [True] * 6 + [False],
          [128, 64, 32, 16, 8, 4, 4]),
    128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True] * 5 + [False], [64, 32, 16, 8, 4, 4]),
    64: ([1, 2, 4, 8], [1, 2, 4, 8, 16], [True] * 4 + [False], [32, 16, 8, 4, 4]),
    # The reference lists 16 for every block of the 32 table (attention '16' = after each).
    32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False], [16, 16, 16, 16]),
}


def parse_attention(spec: Any, field: str = "attention") -> tuple[int, ...]:
  """'16_32' / 16 / (16, 32) -> (16, 32); '0', '', None, () -> () (no attention)."""
  if spec is None:
    return ()
  if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
    items = [int(spec)]
  elif isinstance(spec, str):
    try:
      items = [int(s) for s in spec.split("_") if s.strip()]
    except ValueError:
      raise ValueError(f"{field} must look like '64' or '32_64' (resolutions joined by '_'), "
                       f"got {spec!r}") from None
  elif isinstance(spec, Sequence):
    items = [int(s) for s in spec]
  else:
    raise ValueError(f"{field} must be a string like '32_64' or a list of ints, got {spec!r}")
  return tuple(sorted(set(r for r in items if r != 0)))


def _check_table(resolution: Any, table: Mapping[int, Any], field: str) -> None:
  if resolution not in table:
    raise ValueError(f"{field} must be one of {sorted(table)} (BigGAN's architecture tables), "
                     f"got {resolution!r}")


def _check_attention(attention: tuple[int, ...], block_resolutions: Sequence[int],
                     field: str, resolution: int) -> None:
  bad = [r for r in attention if r not in block_resolutions]
  if bad:
    raise ValueError(f"{field} resolutions {bad} are not in the resolution-{resolution} table, "
                     f"whose blocks are at {sorted(set(block_resolutions))}")


def _check_positive(obj: Any, fields: Sequence[str]) -> None:
  for f in fields:
    v = getattr(obj, f)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"{f} must be a positive integer, got {v!r}")


def _check_init(init: str, field: str) -> None:
  if init not in INITS:
    raise ValueError(f"{field} must be one of {list(INITS)}, got {init!r}")


# --------------------------------------------------------------------------------------
# Initialisers (the reference's init_weights on the torch-layout weight, then our layout).


def _torch_weight_init(style: str, torch_shape: tuple[int, ...], to_ours: Any):
  """An init fn for a weight whose torch shape is `torch_shape` ([out, in(, kh, kw)] or
  [num, dim] for embeddings); `to_ours` maps a torch-layout array to this project's."""
  def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    del shape
    if style == "ortho":
      rows = torch_shape[0]
      cols = int(np.prod(torch_shape[1:]))
      w = jax.nn.initializers.orthogonal()(key, (rows, cols), dtype).reshape(torch_shape)
    elif style == "N02":
      w = 0.02 * jax.random.normal(key, torch_shape, dtype)
    else:  # glorot / xavier (torch fan_in = size(1) * receptive field, fan_out = size(0) * rf)
      w = jax.nn.initializers.glorot_uniform(in_axis=1, out_axis=0)(key, torch_shape, dtype)
    return to_ours(w)
  return init


def _torch_bias_init(fan_in: int):
  # torch's default Linear / Conv bias init (init_weights leaves biases alone).
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


# --------------------------------------------------------------------------------------
# Spectral norm and batch norm.


def _bound_axis_size(axis_name: str | None) -> int | None:
  """Size of the named mapped axis if the call runs under it (shard_map / vmap), else None."""
  if axis_name is None:
    return None
  try:
    return int(jax.lax.axis_size(axis_name))
  except NameError:
    return None


def _normalize(x: Array, eps: float) -> Array:
  # torch F.normalize: x / max(||x||_2, eps) along the vector axis.
  return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), eps)


def _proj(x: Array, y: Array) -> Array:
  return (y @ x.T) * y / (y @ y.T)


def _spectral_sigma(mod: nn.Module, w_mat: Array, num_svs: int, num_itrs: int, eps: float,
                    train: bool) -> Array:
  """sigma_0 of w_mat [out, fan_in] by the reference's power iteration; declares and (train
  mode, mutable) updates the `u<i>` [1, out] and `sv<i>` [1] buffers of `mod`."""
  n_out = w_mat.shape[0]
  u_vars = [mod.variable(STATS, f"u{i}", lambda: jax.random.normal(
      mod.make_rng("params"), (1, n_out), jnp.float32)) for i in range(num_svs)]
  sv_vars = [mod.variable(STATS, f"sv{i}", lambda: jnp.ones((1,), jnp.float32))
             for i in range(num_svs)]
  w_fixed = jax.lax.stop_gradient(w_mat)
  us = [jax.lax.stop_gradient(u.value) for u in u_vars]
  svs: list[Array] = []
  # Eval mode repeats the same step from the stored u num_itrs times: one is the same result.
  for _ in range(num_itrs if train else 1):
    vs: list[Array] = []
    new_us: list[Array] = []
    svs = []
    for u in us:
      v = u @ w_fixed
      for other in vs:  # Gram-Schmidt against the previous singular vectors.
        v = v - _proj(v, other)
      v = _normalize(v, eps)
      vs.append(v)
      u = v @ w_fixed.T
      for other in new_us:
        u = u - _proj(u, other)
      u = _normalize(u, eps)
      new_us.append(u)
      # Gradient flows through W here (not through u, v), as in the reference.
      svs.append(jnp.squeeze((v @ w_mat.T) @ u.T))
    us = new_us
  if train and mod.is_mutable_collection(STATS) and not mod.is_initializing():
    for u_var, sv_var, u, sv in zip(u_vars, sv_vars, us, svs):
      u_var.value = u
      sv_var.value = jax.lax.stop_gradient(sv).reshape(1)
  return svs[0]


def _batch_norm(mod: nn.Module, x: Array, train: bool, eps: float, axis_name: str | None
                ) -> Array:
  """x [B, H, W, C] normalised (no affine) with stored or global batch statistics; declares
  `stored_mean` / `stored_var` [C] on `mod` and updates them in train mode when mutable."""
  c = x.shape[-1]
  mean_var = mod.variable(STATS, "stored_mean", lambda: jnp.zeros((c,), jnp.float32))
  var_var = mod.variable(STATS, "stored_var", lambda: jnp.ones((c,), jnp.float32))
  if not train:
    mean, var = mean_var.value, var_var.value
  else:
    axes = tuple(range(x.ndim - 1))
    count = int(np.prod([x.shape[a] for a in axes]))
    shards = _bound_axis_size(axis_name)
    mean = jnp.mean(x, axis=axes)
    if shards:
      mean = jax.lax.pmean(mean, axis_name)
    # Two passes (mean, then mean squared deviation): no cancellation, as torch's Welford.
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    if shards:
      var = jax.lax.pmean(var, axis_name)
      count *= shards
    if mod.is_mutable_collection(STATS) and not mod.is_initializing():
      unbiased = var * (count / max(count - 1, 1))
      mean_var.value = ((1 - BN_MOMENTUM) * mean_var.value
                        + BN_MOMENTUM * jax.lax.stop_gradient(mean))
      var_var.value = ((1 - BN_MOMENTUM) * var_var.value
                       + BN_MOMENTUM * jax.lax.stop_gradient(unbiased))
  return (x - mean) * jax.lax.rsqrt(var + eps)


# --------------------------------------------------------------------------------------
# Layers. Parameter names follow the reference's state dict: `weight`, `bias`.


class _SpectralNorm(nn.Module, kw_only=True):
  """The spectral-norm settings (keyword-only) and weight of the SN layers below."""
  num_svs: int = 1
  num_itrs: int = 1
  eps: float = 1e-12
  weight_init: str = "ortho"

  def sn_weight(self, torch_shape: tuple[int, ...], shape: tuple[int, ...], to_ours: Any,
                to_matrix: Any, train: bool) -> Array:
    """Declares `weight` (`shape`, this project's layout; initialised as torch's `torch_shape`
    mapped by `to_ours`) and returns it divided by the spectral norm of `to_matrix(weight)`
    (the reference's [out, -1] view)."""
    weight = self.param("weight", _torch_weight_init(self.weight_init, torch_shape, to_ours),
                        shape)
    sigma = _spectral_sigma(self, to_matrix(weight), self.num_svs, self.num_itrs, self.eps,
                            train)
    return weight / sigma

  def add_bias(self, y: Array, fan_in: int) -> Array:
    """y + `bias` [features] (torch's init for `fan_in`) when `use_bias`."""
    if not self.use_bias:
      return y
    return y + self.param("bias", _torch_bias_init(fan_in), (self.features,))


class SNConv2d(_SpectralNorm):
  """Spectrally normalised conv, NHWC, 'same' padding. weight [kh, kw, in, out]."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    k, cin = self.kernel_size, x.shape[-1]
    # The reference's W.view(out, -1): [out, in * kh * kw] in torch's order.
    weight = self.sn_weight((self.features, cin, k, k), (k, k, cin, self.features),
                            lambda w: w.transpose(2, 3, 1, 0),
                            lambda w: w.transpose(3, 2, 0, 1).reshape(self.features, -1), train)
    pad = (k - 1) // 2
    y = jax.lax.conv_general_dilated(x, weight, (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return self.add_bias(y, cin * k * k)


class SNLinear(_SpectralNorm):
  """Spectrally normalised linear layer. weight [in, out]."""
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    cin = x.shape[-1]
    transpose = lambda w: w.T
    weight = self.sn_weight((self.features, cin), (cin, self.features), transpose, transpose,
                            train)
    return self.add_bias(x @ weight, cin)


class SNEmbedding(_SpectralNorm):
  """Spectrally normalised embedding (SN over the [num, dim] table as is)."""
  num_embeddings: int
  features: int

  @nn.compact
  def __call__(self, labels: Array, train: bool = False) -> Array:
    shape = (self.num_embeddings, self.features)
    same = lambda w: w
    return jnp.take(self.sn_weight(shape, shape, same, same, train), labels, axis=0)


class CCBN(nn.Module):
  """Class-conditional BN: BN(x) * (1 + gain(y)) + bias(y); gain, bias SNLinear no bias."""
  sn: Mapping[str, Any]
  eps: float = 1e-5
  axis_name: str | None = "data"

  @nn.compact
  def __call__(self, x: Array, y: Array, train: bool = False) -> Array:
    c = x.shape[-1]
    gain = 1 + SNLinear(c, use_bias=False, **self.sn, name="gain")(y, train)
    bias = SNLinear(c, use_bias=False, **self.sn, name="bias")(y, train)
    out = _batch_norm(self, x, train, self.eps, self.axis_name)
    return out * gain[:, None, None, :] + bias[:, None, None, :]


class BN(nn.Module):
  """Plain BN with learned `gain` / `bias` (the generator's output layer)."""
  eps: float = OUTPUT_BN_EPS
  axis_name: str | None = "data"

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c = x.shape[-1]
    gain = self.param("gain", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return _batch_norm(self, x, train, self.eps, self.axis_name) * gain + bias


def _upsample2(x: Array) -> Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest, as F.interpolate


def _avgpool2(x: Array) -> Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _maxpool2(x: Array) -> Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Attention(nn.Module):
  """SA-GAN non-local block as the reference implements it: theta, phi (ch // 8), g (ch // 2),
  o (ch), 1x1 SN convs without bias; phi and g 2x2 max-pooled; gamma * o + x."""
  sn: Mapping[str, Any]

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    b, h, w, ch = x.shape
    conv = functools.partial(SNConv2d, kernel_size=1, use_bias=False, **self.sn)
    theta = conv(ch // 8, name="theta")(x, train).reshape(b, h * w, ch // 8)
    phi = _maxpool2(conv(ch // 8, name="phi")(x, train)).reshape(b, h * w // 4, ch // 8)
    g = _maxpool2(conv(ch // 2, name="g")(x, train)).reshape(b, h * w // 4, ch // 2)
    beta = jax.nn.softmax(jnp.einsum("bpc,bqc->bpq", theta, phi), axis=-1)
    attended = jnp.einsum("bpq,bqc->bpc", beta, g).reshape(b, h, w, ch // 2)
    o = conv(ch, name="o")(attended, train)
    gamma = self.param("gamma", nn.initializers.zeros, ())
    return gamma * o + x


class GBlock(nn.Module):
  """relu(bn1) -> up -> conv1 -> relu(bn2) -> conv2, plus (up, 1x1 conv_sc) shortcut."""
  out_channels: int
  sn: Mapping[str, Any]
  bn_eps: float
  axis_name: str | None
  img_channels: int = 3

  @nn.compact
  def __call__(self, x: Array, y: Array, train: bool = False) -> Array:
    bn = functools.partial(CCBN, sn=self.sn, eps=self.bn_eps, axis_name=self.axis_name)
    h = jax.nn.relu(bn(name="bn1")(x, y, train))
    h, x = _upsample2(h), _upsample2(x)  # Every table block upsamples.
    h = SNConv2d(self.out_channels, **self.sn, name="conv1")(h, train)
    h = jax.nn.relu(bn(name="bn2")(h, y, train))
    h = SNConv2d(self.out_channels, **self.sn, name="conv2")(h, train)
    # learnable_sc is always true with upsampling.
    x = SNConv2d(self.out_channels, kernel_size=1, **self.sn, name="conv_sc")(x, train)
    return h + x


class DBlock(nn.Module):
  """(relu) -> conv1 -> relu -> conv2 -> (avgpool), plus the shortcut of the reference's
  order: preactivation blocks conv_sc then pool, the first block pool then conv_sc."""
  out_channels: int
  sn: Mapping[str, Any]
  wide: bool
  preactivation: bool
  downsample: bool

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    hidden = self.out_channels if self.wide else x.shape[-1]
    h = jax.nn.relu(x) if self.preactivation else x
    h = SNConv2d(hidden, **self.sn, name="conv1")(h, train)
    h = SNConv2d(self.out_channels, **self.sn, name="conv2")(jax.nn.relu(h), train)
    if self.downsample:
      h = _avgpool2(h)
    if x.shape[-1] != self.out_channels or self.downsample:
      conv_sc = SNConv2d(self.out_channels, kernel_size=1, **self.sn, name="conv_sc")
      if self.preactivation:
        x = conv_sc(x, train)
        x = _avgpool2(x) if self.downsample else x
      else:
        x = _avgpool2(x) if self.downsample else x
        x = conv_sc(x, train)
    return h + x


# --------------------------------------------------------------------------------------
# Generator.


class Generator(ConditionalLabels, nn.Module):
  """BigGAN generator with the project's `mapping` / `synthesis` split (module docstring)."""
  num_classes: int = 1000             # Number of real classes.
  empty_class: bool = False           # Add the GANdance "empty" label (id num_classes)?
  resolution: int = 128               # Output resolution: 32, 64, 128 or 256 (G_arch).
  ch: int = 64                        # Channel multiplier (G_ch).
  dim_z: int = 128                    # Requested latent size (hier: rounded down, see z_dim).
  shared_dim: int = 0                 # Shared class-embedding size, 0 = dim_z.
  hier: bool = False                  # Hierarchical z (one chunk per block)?
  bottom_width: int = 4               # Spatial size after the first linear layer.
  attention: str | tuple[int, ...] = "64"  # Attention after blocks at these resolutions.
  num_svs: int = 1                    # Singular vectors tracked per SN layer (num_G_SVs).
  num_sv_itrs: int = 1                # Power-iteration steps per forward (num_G_SV_itrs).
  bn_eps: float = 1e-5                # Conditional-BN epsilon (BN_eps).
  sn_eps: float = 1e-12               # Spectral-norm epsilon (SN_eps; launch scripts 1e-6).
  weight_init: str = "ortho"          # ortho, N02, glorot / xavier (G_init).
  truncation: float = 0.0             # z truncation threshold t, 0 = off (see docstring).
  axis_name: str | None = "data"      # Mesh axis of cross-replica BN (when bound).
  img_channels: int = 3               # Output colour channels (the reference: always 3).

  def __post_init__(self):
    check_classes(self.num_classes, self.empty_class)
    if self.num_classes == 0:
      raise ValueError("num_classes must be > 0 (BigGAN is class-conditional), got 0")
    _check_table(self.resolution, _G_TABLE, "resolution")
    _check_positive(self, ("ch", "dim_z", "bottom_width", "num_svs", "num_sv_itrs",
                           "img_channels"))
    _check_attention(parse_attention(self.attention, "attention"), _G_TABLE[self.resolution][2],
                     "attention", self.resolution)
    _check_init(self.weight_init, "weight_init")
    if self.shared_dim < 0:
      raise ValueError(f"shared_dim must be >= 0 (0 = dim_z), got {self.shared_dim}")
    if self.hier and self.dim_z < self.num_slots:
      raise ValueError(f"dim_z must be >= the number of z slots ({self.num_slots}) with hier, "
                       f"got {self.dim_z}")
    if not (np.isfinite(self.truncation) and self.truncation >= 0):
      raise ValueError(f"truncation must be a finite threshold >= 0 (0 = off), "
                       f"got {self.truncation!r}")
    super().__post_init__()

  # --- derived sizes ---------------------------------------------------------------
  @property
  def block_resolutions(self) -> list[int]:
    return list(_G_TABLE[self.resolution][2])

  @property
  def num_blocks(self) -> int:
    return len(self.block_resolutions)

  @property
  def num_slots(self) -> int:
    """Places z is split into (the reference's num_slots; 1 without hier)."""
    return self.num_blocks + 1 if self.hier else 1

  @property
  def z_chunk_size(self) -> int:
    return self.dim_z // self.num_slots if self.hier else 0

  @property
  def z_dim(self) -> int:
    """The latent size G takes (the reference's recomputed dim_z)."""
    return self.z_chunk_size * self.num_slots if self.hier else self.dim_z

  @property
  def shared_width(self) -> int:
    return self.shared_dim if self.shared_dim > 0 else self.dim_z

  @property
  def w_dim(self) -> int:
    """Width of a ws row: [y, z chunk] (hier) or [y, z] (row 0) / [y, 0] (rows 1..)."""
    return self.shared_width + (self.z_chunk_size if self.hier else self.dim_z)

  @property
  def num_ws(self) -> int:
    """One row for the linear layer's z plus one per conditioned block."""
    return self.num_blocks + 1

  def ws_resolutions(self) -> list[int]:
    """[num_ws]: bottom_width for row 0 (linear layer), each block's output resolution."""
    return [self.bottom_width] + self.block_resolutions

  @property
  def w_avg_beta(self) -> None:
    """BigGAN keeps no w_avg: its truncation is on z (the `truncation` threshold)."""
    return None

  def _channels(self) -> tuple[list[int], list[int]]:
    ins, outs, _ = _G_TABLE[self.resolution]
    return [self.ch * m for m in ins], [self.ch * m for m in outs]

  def _sn(self) -> dict[str, Any]:
    return dict(num_svs=self.num_svs, num_itrs=self.num_sv_itrs, eps=self.sn_eps,
                weight_init=self.weight_init)

  # --- interface ---------------------------------------------------------------------
  def mapping(self, z: Array, labels: Array, truncation_psi: float | Array = 1.0,
              truncation: float | None = None, broadcast: bool = True) -> Array:
    """z [B, z_dim], labels int [B] -> ws [B, num_ws, w_dim] (rows [y, z_i], see docstring).

    `truncation` overrides the module's threshold. `broadcast` is accepted for the
    interface's sake: BigGAN's rows differ (one z chunk each), so ws is always 3-D.
    `truncation_psi` must be 1: BigGAN has no w_avg.
    """
    del broadcast
    if isinstance(truncation_psi, jax.core.Tracer) or np.any(np.asarray(truncation_psi) != 1):
      raise ValueError(f"truncation_psi must be 1 for BigGAN (no w_avg; its truncation is on "
                       f"z, the `truncation` threshold), got {truncation_psi!r}")
    if z.ndim != 2 or z.shape[1] != self.z_dim:
      raise ValueError(f"z must have shape [B, {self.z_dim}] (z_dim: dim_z={self.dim_z} "
                       f"split into {self.num_slots} slots), got {tuple(z.shape)}")
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be int ids of shape [B], got shape {labels.shape} "
                       f"dtype {labels.dtype}")
    if labels.shape[0] != z.shape[0]:
      raise ValueError(f"z has batch {z.shape[0]} but labels have batch {labels.shape[0]}")
    validate_labels(labels, self.num_classes, self.empty_class)
    t = self.truncation if truncation is None else truncation
    if not isinstance(t, jax.core.Tracer) and not (np.isfinite(t) and t >= 0):
      raise ValueError(f"truncation must be a finite threshold >= 0, got {t!r}")
    if isinstance(t, jax.core.Tracer) or t > 0:
      z = truncate_normal(z, t)
    y = self.shared(labels)
    b = z.shape[0]
    if self.hier:
      chunks = z.reshape(b, self.num_slots, self.z_chunk_size)
    else:  # Row 0 carries z, the block rows zeros.
      chunks = jnp.zeros((b, self.num_ws, self.dim_z), z.dtype).at[:, 0].set(z)
    y_rows = jnp.broadcast_to(y[:, None, :], (b, self.num_ws, y.shape[-1]))
    return jnp.concatenate([y_rows, chunks.astype(y.dtype)], axis=-1)

  def setup(self):
    self.shared = nn.Embed(self.c_dim, self.shared_width, embedding_init=_torch_weight_init(
        self.weight_init, (self.c_dim, self.shared_width), lambda w: w))
    ins, outs = self._channels()
    self.synthesis_network = Synthesis(
        in_channels=tuple(ins), out_channels=tuple(outs),
        block_resolutions=tuple(self.block_resolutions), attention=parse_attention(self.attention),
        hier=self.hier, shared_width=self.shared_width,
        z0_width=self.z_chunk_size if self.hier else self.dim_z,
        bottom_width=self.bottom_width, sn=self._sn(), bn_eps=self.bn_eps,
        axis_name=self.axis_name, img_channels=self.img_channels)

  def synthesis(self, ws: Array, train: bool = False, noise_mode: str = "const") -> Array:
    """ws [B, num_ws, w_dim] -> images [B, R, R, 3] in [-1, 1]. `noise_mode` is accepted
    for the interface (BigGAN has no noise inputs)."""
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {list(NOISE_MODES)}, got {noise_mode!r}")
    if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
      raise ValueError(f"ws must have shape [B, {self.num_ws}, {self.w_dim}], got {ws.shape}")
    return self.synthesis_network(ws, train)

  def __call__(self, z: Array, labels: Array, train: bool = False,
               truncation: float | None = None) -> Array:
    """z [B, z_dim], labels int [B] -> images [B, R, R, 3] (the reference's G(z, shared(y)))."""
    return self.synthesis(self.mapping(z, labels, truncation=truncation), train=train)


class Synthesis(nn.Module):
  """ws [B, num_ws, w_dim] -> images: linear(z_0), GBlocks (+ attention), BN-ReLU-conv-tanh.
  Built by `Generator` (its variables sit under ``synthesis_network``)."""
  in_channels: tuple[int, ...]
  out_channels: tuple[int, ...]
  block_resolutions: tuple[int, ...]
  attention: tuple[int, ...]
  hier: bool
  shared_width: int
  z0_width: int
  bottom_width: int
  sn: Mapping[str, Any]
  bn_eps: float
  axis_name: str | None
  img_channels: int = 3

  @nn.compact
  def __call__(self, ws: Array, train: bool = False) -> Array:
    s, bw, c0 = self.shared_width, self.bottom_width, self.in_channels[0]
    h = SNLinear(c0 * bw * bw, **self.sn, name="linear")(ws[:, 0, s:s + self.z0_width], train)
    # The reference views the output as NCHW [B, C, bw, bw].
    h = h.reshape(h.shape[0], c0, bw, bw).transpose(0, 2, 3, 1)
    for i, (cout, res) in enumerate(zip(self.out_channels, self.block_resolutions)):
      y = ws[:, i + 1] if self.hier else ws[:, i + 1, :s]
      h = GBlock(cout, sn=self.sn, bn_eps=self.bn_eps, axis_name=self.axis_name,
                 name=f"blocks.{i}.0")(h, y, train)
      if res in self.attention:
        h = Attention(sn=self.sn, name=f"blocks.{i}.1")(h, train)
    h = jax.nn.relu(BN(axis_name=self.axis_name, name="output_layer.0")(h, train))
    h = SNConv2d(self.img_channels, **self.sn, name="output_layer.2")(h, train)
    return jnp.tanh(h)


def truncate_normal(z: Array, threshold: float | Array) -> Array:
  """Maps standard-normal z elementwise onto the normal truncated to [-t, t] (inverse CDF):
  Phi^-1(Phi(-t) + (1 - 2 Phi(-t)) Phi(z)). Exact in distribution; monotone in z."""
  t = jnp.asarray(threshold, jnp.float32)
  lo = jax.scipy.special.ndtr(-t)
  p = lo + (1 - 2 * lo) * jax.scipy.special.ndtr(z.astype(jnp.float32))
  return jnp.clip(jax.scipy.special.ndtri(p), -t, t).astype(z.dtype)


# --------------------------------------------------------------------------------------
# Discriminator.


class Discriminator(ConditionalLabels, nn.Module):
  """BigGAN projection discriminator: DBlocks (+ attention), sum pooling, linear + <embed, h>."""
  num_classes: int = 1000             # Number of real classes.
  empty_class: bool = False           # Add the GANdance "empty" label (id num_classes)?
  resolution: int = 128               # Input resolution: 32, 64, 128 or 256 (D_arch).
  ch: int = 64                        # Channel multiplier (D_ch).
  wide: bool = True                   # Hidden channels = out (BigGAN) or in (SN-GAN) (D_wide).
  attention: str | tuple[int, ...] = "64"  # Attention after blocks at these table resolutions.
  img_channels: int = 3               # Input colour channels.
  num_svs: int = 1                    # num_D_SVs.
  num_sv_itrs: int = 1                # num_D_SV_itrs.
  sn_eps: float = 1e-12               # SN_eps.
  weight_init: str = "ortho"          # ortho, N02, glorot / xavier (D_init).

  def __post_init__(self):
    check_classes(self.num_classes, self.empty_class)
    if self.num_classes == 0:
      raise ValueError("num_classes must be > 0 (BigGAN is class-conditional), got 0")
    _check_table(self.resolution, _D_TABLE, "resolution")
    _check_positive(self, ("ch", "img_channels", "num_svs", "num_sv_itrs"))
    _check_attention(parse_attention(self.attention, "attention"), _D_TABLE[self.resolution][3],
                     "attention", self.resolution)
    _check_init(self.weight_init, "weight_init")
    super().__post_init__()

  @nn.compact
  def __call__(self, img: Array, labels: Array, train: bool = False) -> Array:
    """img [B, R, R, C] NHWC, labels int [B] -> logits [B]."""
    if img.ndim != 4 or img.shape[1:] != (self.resolution, self.resolution, self.img_channels):
      raise ValueError(f"img must have shape [B, {self.resolution}, {self.resolution}, "
                       f"{self.img_channels}] (NHWC), got {tuple(img.shape)}")
    labels = jnp.asarray(labels)
    if labels.shape != (img.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be int ids of shape [{img.shape[0]}], got shape "
                       f"{labels.shape} dtype {labels.dtype}")
    validate_labels(labels, self.num_classes, self.empty_class)
    sn = dict(num_svs=self.num_svs, num_itrs=self.num_sv_itrs, eps=self.sn_eps,
              weight_init=self.weight_init)
    ins, outs, down, resolutions = _D_TABLE[self.resolution]
    outs = [self.ch * m for m in outs]
    attention = parse_attention(self.attention)
    h = img
    for i, (cout, ds, res) in enumerate(zip(outs, down, resolutions)):
      h = DBlock(cout, sn=sn, wide=self.wide, preactivation=i > 0, downsample=ds,
                 name=f"blocks.{i}.0")(h, train)
      if res in attention:
        h = Attention(sn=sn, name=f"blocks.{i}.1")(h, train)
    h = jnp.sum(jax.nn.relu(h), axis=(1, 2))
    out = SNLinear(1, **sn, name="linear")(h, train)[:, 0]
    embed = SNEmbedding(self.c_dim, outs[-1], **sn, name="embed")(labels, train)
    return out + jnp.sum(embed * h, axis=1)


# --------------------------------------------------------------------------------------
# Initialisation.


def _init_key(key: Array | int) -> Array:
  return jax.random.key(key) if isinstance(key, int) else key


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_generator(G: Generator, key: Array, batch_size: int) -> dict[str, Any]:
  z = jnp.zeros((batch_size, G.z_dim), jnp.float32)
  return dict(G.init({"params": key}, z, jnp.zeros((batch_size,), jnp.int32)))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_discriminator(D: Discriminator, key: Array, batch_size: int) -> dict[str, Any]:
  img = jnp.zeros((batch_size, D.resolution, D.resolution, D.img_channels), jnp.float32)
  return dict(D.init({"params": key}, img, jnp.zeros((batch_size,), jnp.int32)))


def init_generator(G: Generator, key: Array | int, batch_size: int = 2) -> dict[str, Any]:
  """G's variables {'params', 'batch_stats'} (the reference's init; eval-mode trace)."""
  return _init_generator(G, _init_key(key), batch_size)


def init_discriminator(D: Discriminator, key: Array | int, batch_size: int = 2
                       ) -> dict[str, Any]:
  """D's variables {'params', 'batch_stats'}."""
  return _init_discriminator(D, _init_key(key), batch_size)


def _is_bn_stat(path: tuple[Any, ...]) -> bool:
  name = getattr(path[-1], "key", path[-1])
  return name in ("stored_mean", "stored_var")


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def accumulate_standing_stats(G: Generator, variables: Mapping[str, Any], key: Array,
                              num_accumulations: int, batch_size: int) -> dict[str, Any]:
  """BigGAN's "standing statistics" (the reference's utils.accumulate_standing_stats, with the
  accumulating BN it is written for): every batch-norm `stored_mean` / `stored_var` of
  `variables` replaced by the average, over `num_accumulations` train-mode forwards of
  `batch_size` z ~ N(0, 1) and uniform real-class labels, of the batch mean and (unbiased)
  variance. Spectral-norm `u` / `sv` and the params are returned unchanged.

  Each forward starts from zero statistics, so its update is `BN_MOMENTUM * batch`; the sum
  over forwards is divided by `num_accumulations * BN_MOMENTUM` (one rounding more than a
  plain average, ~1 ulp).
  """
  stats = variables[STATS]
  zeros = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if _is_bn_stat(p) else x, stats)

  def one(i):
    kz, ky = jax.random.split(jax.random.fold_in(key, i))
    z = jax.random.normal(kz, (batch_size, G.z_dim))
    labels = jax.random.randint(ky, (batch_size,), 0, G.num_classes)
    _, upd = G.apply({"params": variables["params"], STATS: zeros}, z, labels, train=True,
                     mutable=[STATS])
    return upd[STATS]

  total = one(0)
  for i in range(1, num_accumulations):
    total = jax.tree.map(jnp.add, total, one(i))
  scale = 1.0 / (num_accumulations * BN_MOMENTUM)
  new = jax.tree_util.tree_map_with_path(
      lambda p, s, old: s * scale if _is_bn_stat(p) else old, total, stats)
  return {**variables, STATS: new}


# --------------------------------------------------------------------------------------
# Import of BigGAN-PyTorch state dicts.

# Constructor names of the reference (and the golden JSON) -> (G field, D field).
_G_NAMES = {"resolution": "resolution", "G_ch": "ch", "dim_z": "dim_z",
            "shared_dim": "shared_dim", "G_attn": "attention", "hier": "hier",
            "bottom_width": "bottom_width", "num_G_SVs": "num_svs",
            "num_G_SV_itrs": "num_sv_itrs", "BN_eps": "bn_eps", "SN_eps": "sn_eps",
            "G_init": "weight_init"}
_D_NAMES = {"resolution": "resolution", "D_ch": "ch", "D_attn": "attention", "D_wide": "wide",
            "num_D_SVs": "num_svs", "num_D_SV_itrs": "num_sv_itrs", "SN_eps": "sn_eps",
            "D_init": "weight_init"}
_COMMON = {"n_classes", "empty_class", "G_shared"}
_EMBEDDINGS = ("shared", "embed")  # [num, dim] tables stored as torch has them.


def _kwargs(constructor: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
  unknown = sorted(set(constructor) - set(_G_NAMES) - set(_D_NAMES) - _COMMON)
  if unknown:
    raise ValueError(f"unknown BigGAN constructor names {unknown}; known: "
                     f"{sorted(set(_G_NAMES) | set(_D_NAMES) | _COMMON)}")
  if not constructor.get("G_shared", True):
    raise ValueError("G_shared=False is not supported (BigGAN's hierarchical z and the "
                     "GANdance interface need the shared embedding)")
  kwargs = {ours: constructor[theirs] for theirs, ours in names.items() if theirs in constructor}
  empty = bool(constructor.get("empty_class", False))
  if "n_classes" in constructor:
    kwargs["num_classes"] = int(constructor["n_classes"]) - (1 if empty else 0)
  kwargs["empty_class"] = empty
  return kwargs


def _is_linear_weight(path: tuple[str, ...], v: np.ndarray) -> bool:
  return path[-1] == "weight" and v.ndim == 2 and not (len(path) > 1 and path[-2] in _EMBEDDINGS)


def _to_ours(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  v = np.asarray(value, np.float32)
  if path[-1] == "weight" and v.ndim == 4:         # [O, I, kh, kw] -> [kh, kw, I, O]
    return v.transpose(2, 3, 1, 0)
  return v.T if _is_linear_weight(path, v) else v  # Linear [out, in] -> [in, out]


def _to_torch(path: tuple[str, ...], value: Any) -> np.ndarray:
  v = np.asarray(value, np.float32)
  if path[-1] == "weight" and v.ndim == 4:
    return v.transpose(3, 2, 0, 1)
  return v.T if _is_linear_weight(path, v) else v


def _torch_key(path: tuple[str, ...]) -> str:
  # G's synthesis modules sit under 'synthesis_network' (the reference has them at the top);
  # flax.linen.Embed names its table 'embedding' (the reference's is 'weight').
  if path[0] == "synthesis_network":
    path = path[1:]
  return ".".join(path[:-1] + (("weight",) if path[-1] == "embedding" else path[-1:]))


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """A bare state dict, or the `prefix` part of one whose keys carry G./D. prefixes."""
  if any(k.startswith(prefix) for k in state):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  return dict(state)


def variables_from_torch_state_dict(module: Generator | Discriminator,
                                    state: Mapping[str, Any]) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `module` filled from a BigGAN-PyTorch state dict (bare keys,
  numpy arrays); missing, unexpected and mis-shaped keys are named in the error."""
  name = type(module).__name__
  init = init_generator if isinstance(module, Generator) else init_discriminator
  template = jax.eval_shape(lambda: init(module, jax.random.key(0)))

  def convert(key: str, path: tuple[str, ...], leaf: Any, value: np.ndarray) -> np.ndarray:
    expected = _to_torch(path, np.zeros(leaf.shape, np.float32)).shape
    if tuple(value.shape) != tuple(expected):
      raise ValueError(f"BigGAN {name} key {key!r} has shape {tuple(value.shape)}, expected "
                       f"{tuple(expected)} (torch layout) for these settings")
    return _to_ours(path, value)

  return import_state_dict(
      state, template, _torch_key, convert,
      f"BigGAN {name} state dict does not match these settings (resolution="
      f"{module.resolution}, ch={module.ch}, attention={module.attention!r})")


def torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `variables_from_torch_state_dict`: numpy arrays under the reference's
  keys and layout (what its G.pth / D.pth hold)."""
  out = {}
  for col in ("params", STATS):
    for path, value in flatten_tree(variables.get(col, {})).items():
      out[_torch_key(path)] = _to_torch(path, value)
  return out


def generator_from_torch_state_dict(state: Mapping[str, Any], **constructor: Any
                                    ) -> tuple[Generator, dict[str, Any]]:
  """Builds a Generator and its variables from a BigGAN-PyTorch G state dict.

  Args:
    state: numpy arrays keyed as the reference's ``G.state_dict()`` (``shared.weight``,
      ``blocks.0.0.bn1.gain.u0``, ...); keys may carry a ``G.`` prefix (other prefixes are
      then ignored, so a merged G/D dict works).
    **constructor: the reference's constructor names (the golden JSON's ``constructor``):
      resolution, G_ch, dim_z, shared_dim, n_classes (counting the empty class when
      ``empty_class=True``), G_attn, hier, G_shared (must be True), bottom_width, num_G_SVs,
      num_G_SV_itrs, BN_eps, SN_eps, G_init; D-only names are ignored, unknown ones raise.
  Returns:
    (module, {'params', 'batch_stats'}).
  """
  G = Generator(**_kwargs(constructor, _G_NAMES))
  return G, variables_from_torch_state_dict(G, _strip_prefix(state, "G."))


def discriminator_from_torch_state_dict(state: Mapping[str, Any], **constructor: Any
                                        ) -> tuple[Discriminator, dict[str, Any]]:
  """Builds a Discriminator and its variables from a BigGAN-PyTorch D state dict (names as
  for the G version: resolution, D_ch, n_classes, empty_class, D_attn, D_wide, num_D_SVs,
  num_D_SV_itrs, SN_eps, D_init)."""
  D = Discriminator(**_kwargs(constructor, _D_NAMES))
  return D, variables_from_torch_state_dict(D, _strip_prefix(state, "D."))


__all__ = [
    "Generator", "Discriminator", "generator_from_torch_state_dict",
    "discriminator_from_torch_state_dict", "variables_from_torch_state_dict",
    "torch_state_dict", "init_generator", "init_discriminator", "truncate_normal",
    "parse_attention", "STATS", "accumulate_standing_stats",
]
