"""Class-conditional MLP generator and discriminator for the 2D mixture toys.

The generator mirrors StyleGAN2's split so that everything written against
`stylegan2.Generator` (GANdance guidance, truncation, `sampler.make_sampler`) applies
unchanged:

  G.apply(v, z, labels, truncation_psi=1.0, broadcast=False, method=G.mapping)  # [B, w_dim]
  G.apply(v, z, labels, method=G.mapping)                           # [B, num_ws, w_dim]
  G.apply(v, ws, method=G.synthesis)                                # [B, 2]

Variables are {'params', 'buffers'} with the truncation centre at
``buffers/mapping_network/w_avg`` (the mapping *is* `stylegan2.MappingNetwork`), and label
id ``num_classes`` is the GANdance empty class when ``empty_class=True``.

Synthesis is an MLP with one ws row per layer ("style injection by concatenation"):

  h_0 = lrelu(fc_0(w_0))
  h_i = lrelu(fc_i([h_{i-1}, w_i]))          i = 1 .. num_layers - 1
  x   = output_scale * out([h_{L-1}, w_L])   linear, 2D

so ``num_ws = num_layers + 1`` and a [num_ws] guidance scale is layer-wise, exactly as for
StyleGAN2. Hidden activations h_l can be read (`synthesis_features`) and fed back
(`synthesis_from_features`), which is what collaborative refinement needs.

The discriminator is an MLP feature extractor h(x) [B, cmap_dim] followed by a projection
head, either the plain one (``head='projection'``: logit = <h, embed[c]> / sqrt(cmap_dim),
StyleGAN2's conditional projection with a table instead of a label MLP) or the SAN one
(``head='san'``: per-class normalised directions and scales, see `gandance_jax.san`).
Points are divided by ``input_scale`` on entry so that the networks see O(1) coordinates
while callers work in the benchmark's own coordinates.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax.layers import FullyConnectedLayer
from gandance_jax.networks import base
from gandance_jax.networks import san as san_lib
from gandance_jax.networks import stylegan2

Array = jax.Array
D_HEADS = ("projection", "san")


class Toy2DSynthesis(nn.Module):
  """ws [B, num_layers + 1, w_dim] -> points [B, 2] (see the module docstring)."""
  hidden: int = 128
  num_layers: int = 3
  output_scale: float = 1.0

  def setup(self):
    # setup-assigned lists are named fcs_0, fcs_1, ... by Flax.
    self.fcs = [FullyConnectedLayer(self.hidden, activation="lrelu")
                for _ in range(self.num_layers)]
    self.out = FullyConnectedLayer(2)

  def _check_layer(self, layer: int) -> None:
    if not 0 <= layer < self.num_layers:
      raise ValueError(f"layer must be in [0, {self.num_layers}) (a hidden synthesis layer), "
                       f"got {layer}")

  def features(self, ws: Array, layer: int) -> Array:
    """Activation of hidden layer `layer` (after its lrelu): [B, hidden]."""
    self._check_layer(layer)
    h = self.fcs[0](ws[:, 0])
    for i in range(1, layer + 1):
      h = self.fcs[i](jnp.concatenate([h, ws[:, i]], axis=1))
    return h

  def from_features(self, h: Array, ws: Array, layer: int) -> Array:
    """Continues from the activation of hidden layer `layer` [B, hidden] to points [B, 2]."""
    self._check_layer(layer)
    for i in range(layer + 1, self.num_layers):
      h = self.fcs[i](jnp.concatenate([h, ws[:, i]], axis=1))
    x = self.out(jnp.concatenate([h, ws[:, self.num_layers]], axis=1))
    return x * self.output_scale

  def __call__(self, ws: Array) -> Array:
    if ws.ndim != 3 or ws.shape[1] != self.num_layers + 1:
      raise ValueError(f"ws must be [B, {self.num_layers + 1}, w_dim], got {ws.shape}")
    return self.from_features(self.features(ws, 0), ws, 0)


class Toy2DGenerator(base.ConditionalLabels, nn.Module):
  """Class-conditional 2D generator with StyleGAN2's `mapping` / `synthesis` methods
  (implements `networks.base.ConditionalGenerator`)."""
  z_dim: int = 8                      # Input latent (Z) dimensionality.
  w_dim: int = 32                     # Intermediate latent (W) dimensionality.
  num_classes: int = 0                # Number of real classes, 0 = unconditional.
  empty_class: bool = False           # Add the GANdance "empty" label (id num_classes)?
  mapping_layers: int = 2             # Layers of the mapping MLP.
  mapping_lr_multiplier: float = 1.0  # StyleGAN2 uses 0.01; toys train for ~1e3 steps only.
  w_avg_beta: float = 0.995           # Decay of the tracked W average (truncation centre).
  hidden: int = 128                   # Width of the synthesis MLP.
  num_layers: int = 3                 # Hidden synthesis layers (num_ws = num_layers + 1).
  output_scale: float = 1.0           # Points = output_scale * network output.

  def __post_init__(self):
    base.check_classes(self.num_classes, self.empty_class)
    for field in ("z_dim", "w_dim", "mapping_layers", "hidden", "num_layers"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
    super().__post_init__()

  @property
  def num_ws(self) -> int:
    return self.num_layers + 1

  def ws_resolutions(self) -> list[int]:
    """What each ws row drives, for layer-wise scales: a point generator has no image
    resolutions, so row i is labelled by its layer number i + 1 (1 .. num_ws)."""
    return list(range(1, self.num_ws + 1))

  def setup(self):
    self.mapping_network = stylegan2.MappingNetwork(
        z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, num_ws=self.num_ws,
        num_layers=self.mapping_layers, lr_multiplier=self.mapping_lr_multiplier,
        w_avg_beta=self.w_avg_beta)
    self.synthesis_network = Toy2DSynthesis(hidden=self.hidden, num_layers=self.num_layers,
                                            output_scale=self.output_scale)

  def mapping(self, z: Array, labels: Array | None, truncation_psi: float | Array = 1.0,
              truncation_cutoff: int | None = None, broadcast: bool = True) -> Array:
    """z [B, z_dim], labels int [B] -> ws [B, num_ws, w_dim] (w [B, w_dim] if not broadcast)."""
    c = None
    if self.c_dim > 0:
      if labels is None:
        raise ValueError("this generator is conditional: pass labels")
      c = stylegan2.labels_to_vectors(labels, self.c_dim, self.num_classes, self.empty_class)
      if z.shape[0] != c.shape[0]:
        raise ValueError(f"z has batch {z.shape[0]} but labels have batch {c.shape[0]}")
    return self.mapping_network(z, c, truncation_psi=truncation_psi,
                                truncation_cutoff=truncation_cutoff, broadcast=broadcast)

  def synthesis(self, ws: Array, noise_mode: str = "const") -> Array:
    """ws [B, num_ws, w_dim] -> points [B, 2]. `noise_mode` is accepted and ignored (no noise
    inputs), so StyleGAN2 samplers can call this unchanged."""
    del noise_mode
    return self.synthesis_network(ws)

  def synthesis_features(self, ws: Array, layer: int) -> Array:
    """ws [B, num_ws, w_dim] -> activation of hidden synthesis layer `layer`, [B, hidden]."""
    return self.synthesis_network.features(ws, layer)

  def synthesis_from_features(self, h: Array, ws: Array, layer: int) -> Array:
    """(activation [B, hidden] of layer `layer`, ws) -> points [B, 2]."""
    return self.synthesis_network.from_features(h, ws, layer)

  def __call__(self, z: Array, labels: Array | None, truncation_psi: float | Array = 1.0,
               truncation_cutoff: int | None = None, noise_mode: str = "const") -> Array:
    ws = self.mapping(z, labels, truncation_psi=truncation_psi,
                      truncation_cutoff=truncation_cutoff)
    return self.synthesis(ws, noise_mode=noise_mode)


class Toy2DDiscriminator(base.ConditionalLabels, nn.Module):
  """Conditional MLP discriminator: points [B, 2], labels int [B] -> logits [B].

  Parameters: fcs_0..fcs_{L-1} (lrelu), out (linear, -> cmap_dim features h(x)), then the head:
  'projection': embed [c_dim, cmap_dim] (or out_uncond [cmap_dim, 1] without classes);
  'san': san_head/{direction [c_dim or 1, cmap_dim], scale [c_dim or 1]}.
  """
  num_classes: int = 0                # Number of real classes, 0 = unconditional.
  empty_class: bool = False           # Add the GANdance "empty" label (id num_classes)?
  hidden: int = 128                   # Width of the MLP.
  num_layers: int = 3                 # Hidden layers.
  cmap_dim: int = 32                  # Feature / projection dimensionality F.
  input_scale: float = 1.0            # Points are divided by this on entry.
  head: str = "projection"            # 'projection' or 'san'.

  def __post_init__(self):
    base.check_classes(self.num_classes, self.empty_class)
    if self.head not in D_HEADS:
      raise ValueError(f"head must be one of {list(D_HEADS)}, got {self.head!r}")
    for field in ("hidden", "num_layers", "cmap_dim"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
    super().__post_init__()

  def setup(self):
    self.fcs = [FullyConnectedLayer(self.hidden, activation="lrelu")
                for _ in range(self.num_layers)]
    self.out = FullyConnectedLayer(self.cmap_dim)
    if self.head == "san":
      self.san_head = san_lib.SANEmbedding(max(self.c_dim, 1), self.cmap_dim)
    elif self.c_dim > 0:
      self.embed = self.param("embed", nn.initializers.normal(1.0), (self.c_dim, self.cmap_dim))
    else:
      self.out_uncond = FullyConnectedLayer(1)

  def features(self, x: Array) -> Array:
    """Points [B, 2] -> h(x) [B, cmap_dim], the input of the last (projection) layer."""
    if x.ndim != 2 or x.shape[1] != 2:
      raise ValueError(f"points must be [B, 2], got {x.shape}")
    h = x.astype(jnp.float32) * (1.0 / self.input_scale)
    for fc in self.fcs:
      h = fc(h)
    return self.out(h)

  def _label_ids(self, labels: Array | None, batch: int) -> Array:
    if self.c_dim == 0:
      return jnp.zeros((batch,), jnp.int32)
    if labels is None:
      raise ValueError("this discriminator is conditional: pass labels")
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be int ids [B], got {labels.shape} {labels.dtype}")
    base.validate_labels(labels, self.num_classes, self.empty_class)
    if labels.shape[0] != batch:
      raise ValueError(f"points have batch {batch} but labels have batch {labels.shape[0]}")
    return labels.astype(jnp.int32)

  def head_direction(self, labels: Array | None, batch: int) -> tuple[Array, Array]:
    """SAN head only: (unit directions [B, cmap_dim], scales [B]) of the labels."""
    if self.head != "san":
      raise ValueError("head_direction needs head='san'")
    direction, scale = self.san_head(self._label_ids(labels, batch))
    return direction, scale / np.sqrt(self.cmap_dim)

  def __call__(self, x: Array, labels: Array | None = None) -> Array:
    """Points [B, 2], labels int [B] -> logits [B] (the plain forward pass, also for SAN)."""
    h = self.features(x)
    if self.head == "san":
      direction, scale = self.head_direction(labels, h.shape[0])
      return san_lib.plain_logits(h, direction, scale)
    if self.c_dim == 0:
      return self.out_uncond(h)[:, 0]
    e = self.embed[self._label_ids(labels, h.shape[0])]
    return jnp.sum(h * e, axis=1) * (1.0 / np.sqrt(self.cmap_dim))

  def san_outputs(self, x: Array, labels: Array | None = None) -> tuple[Array, Array]:
    """SAN training outputs (fun [B], dir [B]), see `san.san_logits`."""
    h = self.features(x)
    direction, scale = self.head_direction(labels, h.shape[0])
    return san_lib.san_logits(h, direction, scale)


def _init_key(key: Array) -> Array:
  # As stylegan2._init_key: init draws one normal per weight, and XLA:CPU compiles the
  # counter-based 'rbg' generator faster than threefry; derived deterministically from key.
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_generator(G: Toy2DGenerator, key: Array, batch_size: int) -> dict[str, Any]:
  z = jnp.zeros((batch_size, G.z_dim), jnp.float32)
  labels = jnp.zeros((batch_size,), jnp.int32) if G.c_dim else None
  return dict(G.init({"params": _init_key(key)}, z, labels))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_discriminator(D: Toy2DDiscriminator, key: Array, batch_size: int) -> dict[str, Any]:
  x = jnp.zeros((batch_size, 2), jnp.float32)
  labels = jnp.zeros((batch_size,), jnp.int32) if D.c_dim else None
  return dict(D.init({"params": _init_key(key)}, x, labels))


def init_generator(G: Toy2DGenerator, key: Array, batch_size: int = 2) -> dict[str, Any]:
  """G's variables {'params', 'buffers'} from dummy inputs (one compile per module config)."""
  return _init_generator(G, key, batch_size)


def init_discriminator(D: Toy2DDiscriminator, key: Array, batch_size: int = 2
                       ) -> dict[str, Any]:
  """D's variables {'params'} from dummy inputs (one compile per module config)."""
  return _init_discriminator(D, key, batch_size)
