"""Class-conditional StyleGAN2 (config F) in Flax, equivalent to NVIDIA's stylegan2-ada-pytorch.

Usage (see DESIGN.md)::

  G = Generator(z_dim=512, w_dim=512, num_classes=1000, empty_class=True, resolution=64)
  g_vars = G.init(key, z, labels, noise_mode='const')      # {'params', 'buffers'}
  ws  = G.apply(g_vars, z, labels, truncation_psi=0.7, method=G.mapping)  # [B, num_ws, w_dim]
  img = G.apply(g_vars, ws, noise_mode='const', method=G.synthesis)     # [B, H, W, C]
  D = Discriminator(num_classes=1000, empty_class=True, resolution=64)
  logits = D.apply(d_vars, img, labels)                                  # [B]

Labels are int32 ids in [0, num_classes); with ``empty_class=True`` the label embedding of G
(and of D's conditioning mapping) has one more row and id ``num_classes`` is the "empty"
condition of the learning-based GANdance. Float label vectors [B, c_dim] are accepted too
(one-hot or mixtures), as NVIDIA's networks take them.

Variables: ``params`` (trainable) and ``buffers`` (non-trainable: the truncation centre
``w_avg``, FIR ``resample_filter`` of every resampling layer, ``noise_const``), laid out with
the same names as NVIDIA's state dict so `generator_from_torch_state_dict` is a renaming plus
NCHW -> NHWC transposes.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax import layers
from gandance_jax.layers import BUFFERS, Conv2dLayer, FullyConnectedLayer
from gandance_jax.networks import san
from gandance_jax.networks.base import (NOISE_MODES, ConditionalLabels, check_classes,
                                        import_state_dict, validate_labels)

Array = jax.Array
Variables = Mapping[str, Any]

G_ARCHITECTURES = ("orig", "skip", "resnet")
D_ARCHITECTURES = ("orig", "skip", "resnet")
D_HEADS = ("projection", "san")


# --------------------------------------------------------------------------------------
# Validation helpers.


def _check_resolution(resolution: int, field: str = "resolution") -> None:
  if not isinstance(resolution, (int, np.integer)) or resolution < 4 or resolution & (
      resolution - 1):
    raise ValueError(f"{field} must be a power of two >= 4, got {resolution!r}")


def _check_bf16_res(n: Any) -> None:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"num_bf16_res must be an integer >= 0, got {n!r}")


def _check_choice(value: Any, allowed: Sequence[Any], field: str) -> None:
  if value not in allowed:
    raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


def _check_network_fields(net: Any, architectures: Sequence[str]) -> None:
  """The field checks G and D share: resolution, architecture, bf16 layers, classes."""
  _check_resolution(net.resolution, "resolution")
  _check_choice(net.architecture, architectures, "architecture")
  _check_bf16_res(net.num_bf16_res)
  check_classes(net.num_classes, net.empty_class)


def labels_to_vectors(labels: Array, c_dim: int, num_classes: int, empty_class: bool) -> Array:
  """int ids [B] -> one-hot [B, c_dim]; float vectors [B, c_dim] pass through (checked)."""
  labels = jnp.asarray(labels) if not isinstance(labels, jax.Array) else labels
  if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
    validate_labels(labels, num_classes, empty_class)
    return jax.nn.one_hot(labels, c_dim, dtype=jnp.float32)
  if labels.ndim == 2 and labels.shape[-1] == c_dim:
    return labels.astype(jnp.float32)
  raise ValueError(
      f"labels must be int ids of shape [B] or float vectors of shape [B, {c_dim}], "
      f"got shape {labels.shape} dtype {labels.dtype}")


# --------------------------------------------------------------------------------------
# Mapping network.


class MappingNetwork(nn.Module):
  """z, c -> w. Parameters: embed, fc0..fc{L-1}; buffer: w_avg (if w_avg_beta is set)."""
  z_dim: int                           # Input latent (Z) dimensionality, 0 = no latent.
  c_dim: int                           # Conditioning label dimensionality, 0 = no label.
  w_dim: int                           # Intermediate latent (W) dimensionality.
  num_ws: int | None                   # Number of ws to broadcast to, None = do not broadcast.
  num_layers: int = 8                  # Number of mapping layers.
  embed_features: int | None = None    # Label embedding dimensionality, None = w_dim.
  layer_features: int | None = None    # Hidden features, None = w_dim.
  activation: str = "lrelu"            # Activation of every mapping layer.
  lr_multiplier: float = 0.01          # Learning-rate multiplier of the mapping layers.
  w_avg_beta: float | None = 0.995     # Decay of the tracked W average, None = no w_avg.

  @nn.compact
  def __call__(self, z: Array | None, c: Array | None, truncation_psi: float | Array = 1.0,
               truncation_cutoff: int | None = None, broadcast: bool = True) -> Array:
    """z [B, z_dim], c [B, c_dim] float -> w [B, num_ws, w_dim] (or [B, w_dim])."""
    embed_features = self.w_dim if self.embed_features is None else self.embed_features
    layer_features = self.w_dim if self.layer_features is None else self.layer_features
    x = None
    if self.z_dim > 0:
      if z is None or z.ndim != 2 or z.shape[-1] != self.z_dim:
        raise ValueError(f"z must have shape [B, {self.z_dim}], got "
                         f"{None if z is None else z.shape}")
      x = layers.normalize_2nd_moment(z.astype(jnp.float32))
    if self.c_dim > 0:
      if c is None or c.ndim != 2 or c.shape[-1] != self.c_dim:
        raise ValueError(f"c must have shape [B, {self.c_dim}], got "
                         f"{None if c is None else c.shape}")
      y = FullyConnectedLayer(embed_features, name="embed")(c.astype(jnp.float32))
      y = layers.normalize_2nd_moment(y)
      x = jnp.concatenate([x, y], axis=1) if x is not None else y
    if x is None:
      raise ValueError("MappingNetwork needs z_dim > 0 or c_dim > 0")
    for idx in range(self.num_layers):
      features = self.w_dim if idx == self.num_layers - 1 else layer_features
      x = FullyConnectedLayer(features, activation=self.activation,
                              lr_multiplier=self.lr_multiplier, name=f"fc{idx}")(x)

    w_avg = None
    if self.w_avg_beta is not None:
      w_avg = self.variable(BUFFERS, "w_avg", lambda: jnp.zeros((self.w_dim,), jnp.float32))
      w_avg = w_avg.value
    if self.num_ws is not None and broadcast:
      x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))

    if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
      if w_avg is None:
        raise ValueError("truncation needs w_avg (w_avg_beta must not be None)")
      if truncation_cutoff is None or self.num_ws is None or not broadcast:
        x = w_avg + truncation_psi * (x - w_avg)
      else:
        head = w_avg + truncation_psi * (x[:, :truncation_cutoff] - w_avg)
        x = jnp.concatenate([head, x[:, truncation_cutoff:]], axis=1)
    return x


# --------------------------------------------------------------------------------------
# Synthesis network.


class SynthesisLayer(nn.Module):
  """Modulated 3x3 convolution + noise + bias + lrelu (optionally 2x upsampling)."""
  out_channels: int                   # Number of output channels.
  w_dim: int                          # Intermediate latent (W) dimensionality.
  resolution: int                     # Resolution of this layer's output.
  kernel_size: int = 3                # Convolution kernel size.
  up: int = 1                         # Upsampling factor.
  use_noise: bool = True              # Enable noise input?
  activation: str = "lrelu"           # Activation function.
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps.
  conv_clamp: float | None = None     # Clamp the output to +-X, None = off.

  @nn.compact
  def __call__(self, x: Array, w: Array, noise_mode: str = "random", gain: float = 1.0,
               fused_modconv: bool | None = False) -> Array:
    """x [B, R/up, R/up, I], w [B, w_dim] -> [B, R, R, out_channels]."""
    in_channels = x.shape[-1]
    if x.shape[1] != self.resolution // self.up:
      raise ValueError(f"expected input resolution {self.resolution // self.up}, got {x.shape}")
    styles = FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)
    f = layers.resample_filter_buffer(self, self.resample_filter)
    k = self.kernel_size
    weight = self.param("weight", layers._normal_init(1.0), (k, k, in_channels,  # pylint: disable=protected-access
                                                             self.out_channels))
    noise = None
    if self.use_noise:
      noise_const = self.variable(
          BUFFERS, "noise_const",
          lambda: jax.random.normal(self.make_rng("params"), (self.resolution, self.resolution)))
      strength = self.param("noise_strength", nn.initializers.zeros, ())
      if noise_mode == "random":
        if not self.has_rng("noise"):
          raise ValueError("noise_mode='random' needs rngs={'noise': key} in apply()")
        noise = jax.random.normal(self.make_rng("noise"),
                                  (x.shape[0], self.resolution, self.resolution, 1)) * strength
      elif noise_mode == "const":
        noise = (noise_const.value * strength)[None, :, :, None]
    x = layers.modulated_conv2d(x, weight, styles, noise=noise, up=self.up, padding=k // 2,
                                resample_filter=f, flip_weight=(self.up == 1),
                                fused_modconv=fused_modconv)
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    act_gain = layers.activation_gain(self.activation) * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return layers.bias_act(x, bias, act=self.activation, gain=act_gain, clamp=clamp)


class ToRGBLayer(nn.Module):
  """Modulated (not demodulated) 1x1 convolution to image channels."""
  out_channels: int                   # Number of image channels.
  w_dim: int                          # Intermediate latent (W) dimensionality.
  kernel_size: int = 1                # Convolution kernel size.
  conv_clamp: float | None = None     # Clamp the output to +-X, None = off.

  @nn.compact
  def __call__(self, x: Array, w: Array, fused_modconv: bool | None = False) -> Array:
    in_channels = x.shape[-1]
    k = self.kernel_size
    styles = FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)
    styles = styles * (1.0 / np.sqrt(in_channels * k * k))
    weight = self.param("weight", layers._normal_init(1.0), (k, k, in_channels,  # pylint: disable=protected-access
                                                             self.out_channels))
    x = layers.modulated_conv2d(x, weight, styles, demodulate=False,
                                fused_modconv=fused_modconv)
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    return layers.bias_act(x, bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the synthesis network (const/conv0, conv1, torgb, skip)."""
  in_channels: int                    # Input channels, 0 = first block (learned constant).
  out_channels: int                   # Output channels.
  w_dim: int                          # Intermediate latent (W) dimensionality.
  resolution: int                     # Resolution of this block.
  img_channels: int                   # Number of output colour channels.
  is_last: bool                       # Is this the last block?
  architecture: str = "skip"          # 'orig', 'skip', 'resnet'.
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps.
  conv_clamp: float | None = None     # Clamp conv outputs to +-X, None = off.
  use_noise: bool = True              # Per-pixel noise inputs?
  dtype: Any = jnp.float32            # Activation dtype of this block (bfloat16: mixed precision).

  @property
  def num_conv(self) -> int:
    return 1 if self.in_channels == 0 else 2

  @property
  def num_torgb(self) -> int:
    return 1 if (self.is_last or self.architecture == "skip") else 0

  @nn.compact
  def __call__(self, x: Array | None, img: Array | None, ws: Array, noise_mode: str = "random",
               fused_modconv: bool | None = None) -> tuple[Array, Array | None]:
    """ws [B, num_conv + num_torgb, w_dim]; x [B, R/2, R/2, in]; img [B, R/2, R/2, C].

    fused_modconv: None = NVIDIA's default: fused unless training (here: noise_mode
    'random', the train step's mode) or computing in reduced precision with batch > 1, and
    then only where it pays off (not on XLA:CPU, see layers.modulated_conv2d).
    """
    if fused_modconv is None and not (noise_mode != "random" and (
        self.dtype == jnp.float32 or ws.shape[0] == 1)):
      fused_modconv = False
    if ws.shape[1] != self.num_conv + self.num_torgb:
      raise ValueError(f"block {self.resolution} expects {self.num_conv + self.num_torgb} ws, "
                       f"got {ws.shape}")
    f = layers.resample_filter_buffer(self, self.resample_filter)
    call_kwargs = dict(noise_mode=noise_mode, fused_modconv=fused_modconv)
    layer_kwargs = dict(w_dim=self.w_dim, resolution=self.resolution,
                        resample_filter=self.resample_filter, conv_clamp=self.conv_clamp,
                        use_noise=self.use_noise)
    w_idx = 0
    if self.in_channels == 0:
      const = self.param("const", layers._normal_init(1.0),  # pylint: disable=protected-access
                         (self.resolution, self.resolution, self.out_channels))
      x = jnp.broadcast_to(const[None].astype(self.dtype), (ws.shape[0],) + const.shape)
      x = SynthesisLayer(self.out_channels, name="conv1", **layer_kwargs)(
          x, ws[:, 0], **call_kwargs)
      w_idx = 1
    else:
      if x is None or x.shape[1:] != (self.resolution // 2, self.resolution // 2,
                                      self.in_channels):
        raise ValueError(f"block {self.resolution} expects x of shape [B, "
                         f"{self.resolution // 2}, {self.resolution // 2}, {self.in_channels}]")
      x = x.astype(self.dtype)
      conv0 = SynthesisLayer(self.out_channels, up=2, name="conv0", **layer_kwargs)
      conv1 = SynthesisLayer(self.out_channels, name="conv1", **layer_kwargs)
      if self.architecture == "resnet":
        y = Conv2dLayer(self.out_channels, kernel_size=1, use_bias=False, up=2,
                        resample_filter=self.resample_filter, name="skip")(x, gain=np.sqrt(0.5))
        x = conv0(x, ws[:, 0], **call_kwargs)
        x = conv1(x, ws[:, 1], gain=np.sqrt(0.5), **call_kwargs)
        x = y + x
      else:
        x = conv0(x, ws[:, 0], **call_kwargs)
        x = conv1(x, ws[:, 1], **call_kwargs)
      w_idx = 2

    if img is not None:
      img = layers.upsample2d(img, f)
    if self.is_last or self.architecture == "skip":
      y = ToRGBLayer(self.img_channels, w_dim=self.w_dim, conv_clamp=self.conv_clamp,
                     name="torgb")(x, ws[:, w_idx], fused_modconv=fused_modconv)
      y = y.astype(jnp.float32)  # The image skip path accumulates in float32.
      img = img + y if img is not None else y
    return x, img


def compute_dtype(res: int, img_resolution: int, num_bf16_res: int) -> Any:
  """bfloat16 for the `num_bf16_res` highest resolutions (never below 8), else float32.

  NVIDIA's rule for num_fp16_res: `res >= max(2 ** (log2(R) + 1 - n), 8)`. bfloat16 has
  float32's exponent range, so no loss scaling is needed; parameters, styles, demodulation
  coefficients, the image skip path and the D epilogue stay float32.
  """
  if num_bf16_res <= 0:
    return jnp.float32
  first = max(2 ** (int(np.log2(img_resolution)) + 1 - int(num_bf16_res)), 8)
  return jnp.bfloat16 if res >= first else jnp.float32


def _channels(res: int, channel_base: int, channel_max: int) -> int:
  return min(channel_base // res, channel_max)


class SynthesisNetwork(nn.Module):
  """ws [B, num_ws, w_dim] -> images [B, R, R, C]."""
  w_dim: int                          # Intermediate latent (W) dimensionality.
  img_resolution: int                 # Output resolution.
  img_channels: int                   # Number of colour channels.
  channel_base: int = 32768           # Overall multiplier for the number of channels.
  channel_max: int = 512              # Maximum number of channels in any layer.
  architecture: str = "skip"          # 'orig', 'skip', 'resnet'.
  conv_clamp: float | None = None     # Clamp conv outputs to +-X, None = off.
  use_noise: bool = True              # Per-pixel noise inputs?
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps.
  num_bf16_res: int = 0               # Highest resolutions computed in bfloat16 (0 = none).

  @property
  def block_resolutions(self) -> list[int]:
    return [2 ** i for i in range(2, int(np.log2(self.img_resolution)) + 1)]

  def block_channels(self, res: int) -> int:
    return _channels(res, self.channel_base, self.channel_max)

  def _block_specs(self) -> list[dict[str, Any]]:
    specs = []
    for res in self.block_resolutions:
      specs.append(dict(
          in_channels=self.block_channels(res // 2) if res > 4 else 0,
          out_channels=self.block_channels(res), resolution=res,
          is_last=(res == self.img_resolution)))
    return specs

  @property
  def num_ws(self) -> int:
    n = 0
    for s in self._block_specs():
      n += 1 if s["in_channels"] == 0 else 2
      if s["is_last"]:
        n += 1
    return n

  def ws_resolutions(self) -> list[int]:
    """The output resolution each entry of ws drives (conv layers; the last: final torgb).

    A torgb shares its w with the next block's first conv, so that entry is assigned to the
    conv's (higher) resolution; layer-wise guidance schedules index by this list.
    """
    res_of = []
    for s in self._block_specs():
      res_of += [s["resolution"]] * (1 if s["in_channels"] == 0 else 2)
    res_of.append(self.img_resolution)  # the last block's torgb
    return res_of

  @nn.compact
  def __call__(self, ws: Array, noise_mode: str = "random",
               fused_modconv: bool | None = None) -> Array:
    _check_choice(noise_mode, NOISE_MODES, "noise_mode")
    if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
      raise ValueError(f"ws must have shape [B, {self.num_ws}, {self.w_dim}], got {ws.shape}")
    ws = ws.astype(jnp.float32)
    x = img = None
    w_idx = 0
    for spec in self._block_specs():
      block = SynthesisBlock(w_dim=self.w_dim, img_channels=self.img_channels,
                             architecture=self.architecture,
                             resample_filter=self.resample_filter, conv_clamp=self.conv_clamp,
                             use_noise=self.use_noise, name=f"b{spec['resolution']}",
                             dtype=compute_dtype(spec["resolution"], self.img_resolution,
                                                 self.num_bf16_res), **spec)
      n = block.num_conv + block.num_torgb
      x, img = block(x, img, ws[:, w_idx:w_idx + n], noise_mode=noise_mode,
                     fused_modconv=fused_modconv)
      w_idx += block.num_conv
    return img


# --------------------------------------------------------------------------------------
# Generator.


class Generator(ConditionalLabels, nn.Module):
  """Class-conditional StyleGAN2 generator with separate `mapping` and `synthesis` methods
  (implements `networks.base.ConditionalGenerator`)."""
  z_dim: int = 512                    # Input latent (Z) dimensionality.
  w_dim: int = 512                    # Intermediate latent (W) dimensionality.
  num_classes: int = 0                # Number of real classes, 0 = unconditional.
  empty_class: bool = False           # Add the GANdance "empty" label (id num_classes)?
  resolution: int = 64                # Output resolution (power of two).
  img_channels: int = 3               # Number of output colour channels.
  mapping_layers: int = 8             # Number of mapping layers.
  mapping_lr_multiplier: float = 0.01  # Learning-rate multiplier of the mapping layers.
  w_avg_beta: float = 0.995           # Decay of the tracked W average (truncation centre).
  channel_base: int = 32768           # Overall multiplier for the number of channels.
  channel_max: int = 512              # Maximum number of channels in any layer.
  architecture: str = "skip"          # 'orig', 'skip', 'resnet'.
  conv_clamp: float | None = 256      # Clamp conv outputs to +-X, None = off.
  use_noise: bool = True              # Per-pixel noise inputs?
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps.
  num_bf16_res: int = 0               # Highest resolutions computed in bfloat16 (0 = none).

  def __post_init__(self):
    _check_network_fields(self, G_ARCHITECTURES)
    for field in ("z_dim", "w_dim", "mapping_layers", "img_channels"):
      if getattr(self, field) <= 0 and not (field == "z_dim" and self.num_classes > 0):
        raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
    super().__post_init__()

  def _synthesis_module(self, name: str | None = None) -> SynthesisNetwork:
    kwargs = dict(w_dim=self.w_dim, img_resolution=self.resolution,
                  img_channels=self.img_channels, channel_base=self.channel_base,
                  channel_max=self.channel_max, architecture=self.architecture,
                  conv_clamp=self.conv_clamp, use_noise=self.use_noise,
                  resample_filter=self.resample_filter, num_bf16_res=self.num_bf16_res)
    if name is None:
      return SynthesisNetwork(**kwargs, parent=None)
    return SynthesisNetwork(**kwargs)

  @property
  def num_ws(self) -> int:
    return self._synthesis_module(None).num_ws

  def ws_resolutions(self) -> list[int]:
    """[num_ws] output resolution driven by each ws entry (for layer-wise guidance)."""
    return self._synthesis_module(None).ws_resolutions()

  def setup(self):
    self.synthesis_network = self._synthesis_module("synthesis")
    self.mapping_network = MappingNetwork(
        z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, num_ws=self.num_ws,
        num_layers=self.mapping_layers, lr_multiplier=self.mapping_lr_multiplier,
        w_avg_beta=self.w_avg_beta)

  def mapping(self, z: Array, labels: Array | None, truncation_psi: float | Array = 1.0,
              truncation_cutoff: int | None = None, broadcast: bool = True) -> Array:
    """z [B, z_dim], labels int [B] (or float [B, c_dim]) -> ws [B, num_ws, w_dim].

    With ``broadcast=False`` returns the un-broadcast w [B, w_dim] (all ws rows are equal
    before truncation), which lets guidance average over conditions cheaply.
    """
    c = None
    if self.c_dim > 0:
      if labels is None:
        raise ValueError("this generator is conditional: pass labels")
      c = labels_to_vectors(labels, self.c_dim, self.num_classes, self.empty_class)
      if z.shape[0] != c.shape[0]:
        raise ValueError(f"z has batch {z.shape[0]} but labels have batch {c.shape[0]}")
    return self.mapping_network(z, c, truncation_psi=truncation_psi,
                                truncation_cutoff=truncation_cutoff, broadcast=broadcast)

  def synthesis(self, ws: Array, noise_mode: str = "random",
                fused_modconv: bool | None = None) -> Array:
    """ws [B, num_ws, w_dim] -> images [B, R, R, img_channels] (about [-1, 1]).

    fused_modconv: modulated convolutions as per-sample (grouped) convolutions; None = auto,
    NVIDIA's rule (fused for sampling, not for training: see SynthesisBlock).
    """
    return self.synthesis_network(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)

  def __call__(self, z: Array, labels: Array | None, truncation_psi: float | Array = 1.0,
               truncation_cutoff: int | None = None, noise_mode: str = "random",
               fused_modconv: bool | None = None) -> Array:
    ws = self.mapping(z, labels, truncation_psi=truncation_psi,
                      truncation_cutoff=truncation_cutoff)
    return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)


# --------------------------------------------------------------------------------------
# Discriminator.


class DiscriminatorBlock(nn.Module):
  """One resolution of the discriminator (fromrgb, conv0, conv1 with 2x down, skip)."""
  in_channels: int                    # Input channels, 0 = first block.
  tmp_channels: int                   # Intermediate channels.
  out_channels: int                   # Output channels.
  resolution: int                     # Resolution of this block.
  img_channels: int                   # Number of input colour channels.
  architecture: str = "resnet"        # 'orig', 'skip', 'resnet'.
  activation: str = "lrelu"           # Activation function.
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps.
  conv_clamp: float | None = None     # Clamp conv outputs to +-X, None = off.
  dtype: Any = jnp.float32            # Activation dtype of this block (bfloat16: mixed precision).

  @nn.compact
  def __call__(self, x: Array | None, img: Array | None) -> tuple[Array, Array | None]:
    f = layers.resample_filter_buffer(self, self.resample_filter)
    if x is not None:
      x = x.astype(self.dtype)
    if self.in_channels == 0 or self.architecture == "skip":
      # The image itself stays float32 (its downsampled copy feeds lower blocks).
      y = Conv2dLayer(self.tmp_channels, kernel_size=1, activation=self.activation,
                      conv_clamp=self.conv_clamp, resample_filter=self.resample_filter,
                      name="fromrgb")(img.astype(self.dtype))
      x = x + y if x is not None else y
      img = layers.downsample2d(img, f) if self.architecture == "skip" else None
    conv0 = Conv2dLayer(self.tmp_channels, kernel_size=3, activation=self.activation,
                        conv_clamp=self.conv_clamp, resample_filter=self.resample_filter,
                        name="conv0")
    conv1 = Conv2dLayer(self.out_channels, kernel_size=3, activation=self.activation, down=2,
                        conv_clamp=self.conv_clamp, resample_filter=self.resample_filter,
                        name="conv1")
    if self.architecture == "resnet":
      y = Conv2dLayer(self.out_channels, kernel_size=1, use_bias=False, down=2,
                      resample_filter=self.resample_filter, name="skip")(x, gain=np.sqrt(0.5))
      x = conv0(x)
      x = conv1(x, gain=np.sqrt(0.5))
      x = y + x
    else:
      x = conv1(conv0(x))
    return x, img


class DiscriminatorEpilogue(nn.Module):
  """4x4 head: (fromrgb), minibatch-stddev, conv, fc, out, projection onto cmap."""
  in_channels: int                    # Number of input channels.
  cmap_dim: int                       # Dimensionality of the mapped label, 0 = no label.
  resolution: int                     # Resolution of this block (4).
  img_channels: int                   # Number of input colour channels.
  architecture: str = "resnet"        # 'orig', 'skip', 'resnet'.
  mbstd_group_size: int | None = 4    # Group size of minibatch-stddev, None = whole batch.
  mbstd_num_channels: int = 1         # Features of minibatch-stddev, 0 = off.
  mbstd_shards: int = 1               # Contiguous batch blocks grouped separately (see
                                      # layers.minibatch_std; = devices: no cross-device mbstd).
  activation: str = "lrelu"           # Activation function.
  conv_clamp: float | None = None     # Clamp conv outputs to +-X, None = off.

  @nn.compact
  def __call__(self, x: Array, img: Array | None, cmap: Array | None) -> Array:
    x = x.astype(jnp.float32)  # The 4x4 head (mbstd, fc, projection) runs in float32.
    if self.architecture == "skip":
      x = x + Conv2dLayer(self.in_channels, kernel_size=1, activation=self.activation,
                          name="fromrgb")(img)
    if self.mbstd_num_channels > 0:
      x = layers.minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels,
                               self.mbstd_shards)
    x = Conv2dLayer(self.in_channels, kernel_size=3, activation=self.activation,
                    conv_clamp=self.conv_clamp, name="conv")(x)
    # NHWC flatten; the importer permutes NVIDIA's NCHW-flattened fc weight to match.
    x = FullyConnectedLayer(self.in_channels, activation=self.activation,
                            name="fc")(x.reshape(x.shape[0], -1))
    x = FullyConnectedLayer(1 if self.cmap_dim == 0 else self.cmap_dim, name="out")(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / np.sqrt(self.cmap_dim))
    return x


class Discriminator(ConditionalLabels, nn.Module):
  """Conditional StyleGAN2 discriminator with the projection head.

  head 'projection' (NVIDIA's): cmap = label MLP (`mapping`), D = <out(x), cmap> / sqrt(F).
  head 'san' (StyleSAN-XL's `SANEmbedding`, for train.loss='san'): a per-class table
  `san_head` of unit directions and scales, cmap = scale_c * direction_c, so the directions
  are parameters of their own that only SAN's Wasserstein term trains (through a shared
  label MLP the hinge term would move them too). Same logits formula.
  """
  num_classes: int = 0                # Number of real classes, 0 = unconditional.
  empty_class: bool = False           # Add the GANdance "empty" label (id num_classes)?
  resolution: int = 64                # Input resolution (power of two).
  img_channels: int = 3               # Number of input colour channels.
  architecture: str = "resnet"        # 'orig', 'skip', 'resnet'.
  channel_base: int = 32768           # Overall multiplier for the number of channels.
  channel_max: int = 512              # Maximum number of channels in any layer.
  conv_clamp: float | None = 256      # Clamp conv outputs to +-X, None = off.
  cmap_dim: int | None = None         # Mapped-label dimensionality, None = channels at 4x4.
  mapping_layers: int = 8             # Layers of the label mapping network.
  mbstd_group_size: int | None = 4    # Group size of minibatch-stddev, None = whole batch.
  mbstd_num_channels: int = 1         # Features of minibatch-stddev, 0 = off.
  mbstd_shards: int = 1               # Contiguous batch blocks grouped separately (see
                                      # layers.minibatch_std; = devices: no cross-device mbstd).
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps.
  num_bf16_res: int = 0               # Highest resolutions computed in bfloat16 (0 = none).
  head: str = "projection"            # Label head: 'projection' (label MLP) or 'san' (table).

  def __post_init__(self):
    _check_network_fields(self, D_ARCHITECTURES)
    _check_choice(self.head, D_HEADS, "head")
    super().__post_init__()

  @nn.compact
  def __call__(self, img: Array, labels: Array | None = None) -> Array:
    """img [B, R, R, C] in [-1, 1], labels int [B] (or float [B, c_dim]) -> logits [B]."""
    if img.ndim != 4 or img.shape[1:] != (self.resolution, self.resolution, self.img_channels):
      raise ValueError(f"img must have shape [B, {self.resolution}, {self.resolution}, "
                       f"{self.img_channels}], got {img.shape}")
    log2 = int(np.log2(self.resolution))
    block_resolutions = [2 ** i for i in range(log2, 2, -1)]
    ch = lambda r: _channels(r, self.channel_base, self.channel_max)
    cmap_dim = ch(4) if self.cmap_dim is None else self.cmap_dim
    if self.c_dim == 0:
      cmap_dim = 0
    x = None
    batch_size = img.shape[0]
    img = img.astype(jnp.float32)
    for res in block_resolutions:
      x, img = DiscriminatorBlock(
          in_channels=ch(res) if res < self.resolution else 0, tmp_channels=ch(res),
          out_channels=ch(res // 2), resolution=res, img_channels=self.img_channels,
          architecture=self.architecture, resample_filter=self.resample_filter,
          conv_clamp=self.conv_clamp, name=f"b{res}",
          dtype=compute_dtype(res, self.resolution, self.num_bf16_res))(x, img)
    cmap = None
    if self.c_dim > 0:
      if labels is None:
        raise ValueError("this discriminator is conditional: pass labels")
      c = labels_to_vectors(labels, self.c_dim, self.num_classes, self.empty_class)
      if c.shape[0] != batch_size:
        raise ValueError(f"img has batch {batch_size} but labels have batch {c.shape[0]}")
      if self.head == "san":
        # One-hot rows (or ids) pick a table row, as StyleSAN-XL's embed(c.argmax(1)).
        direction, scale = san.SANEmbedding(self.c_dim, cmap_dim, name="san_head")(
            jnp.argmax(c, axis=1))
        cmap = direction * scale[:, None]
      else:
        cmap = MappingNetwork(z_dim=0, c_dim=self.c_dim, w_dim=cmap_dim, num_ws=None,
                              w_avg_beta=None, num_layers=self.mapping_layers,
                              name="mapping")(None, c)
    if x is None:  # resolution 4: no blocks, the epilogue sees the image through fromrgb
      raise ValueError("Discriminator resolution must be >= 8")
    x = DiscriminatorEpilogue(ch(4), cmap_dim=cmap_dim, resolution=4,
                              img_channels=self.img_channels, architecture=self.architecture,
                              mbstd_group_size=self.mbstd_group_size,
                              mbstd_num_channels=self.mbstd_num_channels,
                              mbstd_shards=self.mbstd_shards,
                              conv_clamp=self.conv_clamp, name="b4")(x, img, cmap)
    return x[:, 0]


# --------------------------------------------------------------------------------------
# Initialisation helpers.


def _init_key(key: Array) -> Array:
  # Parameter init draws ~100 independent normals; with the default threefry PRNG XLA:CPU
  # spends seconds compiling them. The counter-based 'rbg' generator compiles ~3x faster and
  # init only needs good random numbers, not threefry's cross-backend reproducibility
  # (the values that matter are in checkpoints). Derived deterministically from `key`.
  if isinstance(key, int):
    key = jax.random.key(key)
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_generator(G: Generator, key: Array, batch_size: int) -> dict[str, Any]:
  z = jnp.zeros((batch_size, G.z_dim), jnp.float32)
  labels = jnp.zeros((batch_size,), jnp.int32) if G.c_dim else None
  return dict(G.init({"params": _init_key(key)}, z, labels, noise_mode="const"))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_discriminator(D: Discriminator, key: Array, batch_size: int) -> dict[str, Any]:
  img = jnp.zeros((batch_size, D.resolution, D.resolution, D.img_channels), jnp.float32)
  labels = jnp.zeros((batch_size,), jnp.int32) if D.c_dim else None
  return dict(D.init({"params": _init_key(key)}, img, labels))


def init_generator(G: Generator, key: Array | int, batch_size: int = 1) -> dict[str, Any]:
  """Returns G's variables {'params', 'buffers'} (jit-compiled init from dummy inputs)."""
  return jax.tree_util.tree_map(lambda x: x, _init_generator(G, _as_key(key), batch_size))


def init_discriminator(D: Discriminator, key: Array | int, batch_size: int | None = None
                       ) -> dict[str, Any]:
  """Returns D's variables {'params', 'buffers'} (jit-compiled init from dummy inputs).

  The dummy batch defaults to one minibatch-stddev group per shard (at least 4 images); the
  variables do not depend on its size.
  """
  if batch_size is None:
    batch_size = max(4, D.mbstd_shards * (D.mbstd_group_size or 1))
  return jax.tree_util.tree_map(lambda x: x, _init_discriminator(D, _as_key(key), batch_size))


def _as_key(key: Array | int) -> Array:
  return jax.random.key(key) if isinstance(key, int) else key


# --------------------------------------------------------------------------------------
# Import of NVIDIA stylegan2-ada-pytorch state dicts.

_G_SETTINGS = {
    "z_dim": "z_dim", "w_dim": "w_dim", "img_resolution": "resolution",
    "img_channels": "img_channels", "mapping_layers": "mapping_layers",
    "channel_base": "channel_base", "channel_max": "channel_max", "conv_clamp": "conv_clamp",
    "g_architecture": "architecture", "w_avg_beta": "w_avg_beta",
}
_D_SETTINGS = {
    "img_resolution": "resolution", "img_channels": "img_channels",
    "d_architecture": "architecture", "channel_base": "channel_base",
    "channel_max": "channel_max", "conv_clamp": "conv_clamp",
    "d_mapping_layers": "mapping_layers", "mbstd_group_size": "mbstd_group_size",
    "mbstd_num_channels": "mbstd_num_channels", "cmap_dim": "cmap_dim",
}


def _classes_from_settings(settings: Mapping[str, Any]) -> tuple[int, bool]:
  empty = bool(settings.get("empty_class", False))
  if "num_classes" in settings:
    return int(settings["num_classes"]), empty
  c_dim = int(settings.get("c_dim", 0))
  return c_dim - (1 if empty else 0), empty


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  """Accepts a bare state dict, or one whose keys carry `prefix` (other prefixes ignored)."""
  keys = list(state.keys())
  if any(k.startswith(prefix) for k in keys):
    return {k[len(prefix):]: np.asarray(v) for k, v in state.items() if k.startswith(prefix)}
  return {k: np.asarray(v) for k, v in state.items()}


def _to_jax_layout(torch_key: str, value: np.ndarray) -> np.ndarray:
  """Converts one NVIDIA tensor (NCHW conventions) to this project's layout."""
  name = torch_key.rsplit(".", 1)[-1]
  v = np.asarray(value, dtype=np.float32)
  if name == "weight" and v.ndim == 4:            # [O, I, kh, kw] -> [kh, kw, I, O]
    v = v.transpose(2, 3, 1, 0)
  elif name == "weight" and v.ndim == 2:          # [out, in] -> [in, out]
    v = v.T
  elif name == "const" and v.ndim == 3:           # [C, H, W] -> [H, W, C]
    v = v.transpose(1, 2, 0)
  return v


def _import(module_name: str, state: Mapping[str, np.ndarray], template: Mapping[str, Any],
            rename: Mapping[str, str]) -> dict[str, Any]:
  """Fills `template` ({'params', 'buffers'} of abstract arrays) from a torch-keyed state."""

  def torch_key(path: tuple[str, ...]) -> str:
    return ".".join((rename.get(path[0], path[0]),) + path[1:])

  def convert(key: str, path: tuple[str, ...], leaf: Any, value: np.ndarray) -> np.ndarray:
    if key.endswith("b4.fc.weight") and value.ndim == 2:
      # NVIDIA flattens NCHW (c, h, w); we flatten NHWC (h, w, c).
      out_f, in_f = value.shape
      c = in_f // 16
      if c * 16 != in_f:
        raise ValueError(f"{module_name} key {key!r}: expected in_features = C*4*4, "
                         f"got shape {value.shape}")
      value = value.reshape(out_f, c, 4, 4).transpose(2, 3, 1, 0).reshape(in_f, out_f)
      v = value.astype(np.float32)
    else:
      v = _to_jax_layout(key, value)
    if tuple(v.shape) != tuple(leaf.shape):
      raise ValueError(f"{module_name} key {key!r} has shape {tuple(value.shape)}, which does "
                       f"not fit the expected {tuple(leaf.shape)} (this project's layout) for "
                       f"these settings")
    return v

  return import_state_dict(state, template, torch_key, convert,
                           f"{module_name} state dict does not match the settings")


_TORCH_RENAMES = {"mapping_network": "mapping", "synthesis_network": "synthesis"}


def variables_from_torch_state_dict(module: "Generator | Discriminator",
                                    state: Mapping[str, Any]) -> dict[str, Any]:
  """{'params', 'buffers'} of `module` (built with this project's settings) filled from an
  NVIDIA state dict with bare keys; every key and shape is checked (errors name them)."""
  if isinstance(module, Generator):
    template = jax.eval_shape(lambda: init_generator(module, jax.random.key(0)))
    return _import("Generator", state, template, _TORCH_RENAMES)
  template = jax.eval_shape(lambda: init_discriminator(module, jax.random.key(0)))
  return _import("Discriminator", state, template, {})


def generator_from_torch_state_dict(state: Mapping[str, Any], **settings: Any
                                    ) -> tuple[Generator, dict[str, Any]]:
  """Builds a Generator and its variables from an NVIDIA stylegan2-ada-pytorch state dict.

  Args:
    state: numpy arrays keyed as in ``G.state_dict()`` (``mapping.fc0.weight``,
      ``synthesis.b4.const``, ...); keys may carry a ``G.`` prefix (other prefixes are
      ignored, so a merged G/D dict works).
    **settings: the network settings, named as NVIDIA's ``training_options`` / the golden
      JSON files: z_dim, w_dim, c_dim (or num_classes), empty_class, img_resolution,
      img_channels, mapping_layers, channel_base, channel_max, conv_clamp, g_architecture,
      w_avg_beta. Unknown names are ignored.
  Returns:
    (module, {'params', 'buffers'}).
  """
  num_classes, empty = _classes_from_settings(settings)
  kwargs = {ours: settings[theirs] for theirs, ours in _G_SETTINGS.items() if theirs in settings}
  G = Generator(num_classes=num_classes, empty_class=empty, **kwargs)
  return G, variables_from_torch_state_dict(G, _strip_prefix(state, "G."))


def discriminator_from_torch_state_dict(state: Mapping[str, Any], **settings: Any
                                        ) -> tuple[Discriminator, dict[str, Any]]:
  """Builds a Discriminator and its variables from an NVIDIA state dict (see the G version).

  Settings used: c_dim (or num_classes), empty_class, img_resolution, img_channels,
  d_architecture, channel_base, channel_max, conv_clamp, d_mapping_layers, mbstd_group_size,
  mbstd_num_channels, cmap_dim.
  """
  num_classes, empty = _classes_from_settings(settings)
  kwargs = {ours: settings[theirs] for theirs, ours in _D_SETTINGS.items() if theirs in settings}
  D = Discriminator(num_classes=num_classes, empty_class=empty, **kwargs)
  return D, variables_from_torch_state_dict(D, _strip_prefix(state, "D."))


__all__ = [
    "Generator", "Discriminator", "MappingNetwork", "SynthesisNetwork",
    "generator_from_torch_state_dict", "discriminator_from_torch_state_dict",
    "variables_from_torch_state_dict",
    "init_generator", "init_discriminator", "validate_labels",
]
