"""SAN: slicing adversarial networks (Takida et al., ICLR 2024), as layers and losses.

A SAN discriminator is a feature map h(x) [B, F] followed by a last linear layer whose
weight is split into a unit *direction* omega (per class for the conditional projection)
and a positive *scale* s:

  D(x, c) = s_c * <omega_c, h(x)>,   ||omega_c|| = 1.

Training (paper Eq. 11; sony/san `SANLinear` / `SANEmbedding`) evaluates the same product
twice with complementary stop-gradients,

  fun = s_c * <sg(omega_c), h(x)>        trains h (and s) with the base GAN loss (hinge),
  dir = sg(s_c) * <omega_c, sg(h(x))>    trains omega with the Wasserstein-type objective,

  L_D = mean relu(1 - fun(x_real)) + mean relu(1 + fun(x_fake))      (base 'hinge')
      + mean dir(x_fake) - mean dir(x_real)                           (direction term)
  L_G = -mean D(G(z, c), c)                                           (base 'hinge')

so the direction is the maximiser of the sliced (1D-projected) Wasserstein-type distance
between the real and fake feature distributions, and h the usual GAN critic along it.
Base 'logistic' swaps the hinge for softplus (L_D = softplus(-fun_r) + softplus(fun_f),
L_G = softplus(-D)). At inference D(x, c) is the plain product (`plain_logits`).

Two ways to get (direction, scale) per example:
* `SANEmbedding`: a table of raw directions [C, F] (normalised at use) and scales [C]
  (sony/san's parameterisation; used by the 2D toy discriminator).
* `raw_heads(raw)`: from any per-example vector, e.g. StyleGAN2's label-mapping output
  ``cmap`` [B, F]: direction = raw / ||raw||, scale = ||raw|| * normaliser. The direction
  loss then reaches the label network only through the tangential part of ``raw`` and the
  base loss only through its norm (the same split `SANEmbedding` makes with two tables).

The loss functions take features and heads, not networks. For StyleGAN2,
`stylegan2_features` reads h(x) and cmap out of the unchanged `stylegan2.Discriminator`
(Flax `capture_intermediates`) and `stylegan2_discriminator_loss` is the drop-in SAN D loss
for the trainer (integration steps: docs/mixtures2d.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
BASE_LOSSES = ("hinge", "logistic")
Head = tuple[Array, Array]  # (unit directions [B, F], scales [B])


def _check_base(base: str) -> None:
  if base not in BASE_LOSSES:
    raise ValueError(f"SAN base loss must be one of {list(BASE_LOSSES)}, got {base!r}")


def normalize(v: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """v / max(||v||, eps) along `axis` (sony/san's `_normalize`)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axis, keepdims=True))
  return v / jnp.maximum(norm, eps)


# ----------------------------------------------------------------------------- logits


def plain_logits(h: Array, direction: Array, scale: Array | float) -> Array:
  """D(x) = scale * <direction, h>: h [B, F], direction [B, F] or [F], scale [B] or [] -> [B]."""
  return jnp.sum(h * direction, axis=-1) * scale


def san_logits(h: Array, direction: Array, scale: Array | float) -> tuple[Array, Array]:
  """SAN training outputs (fun [B], dir [B]) of h [B, F] and a unit direction [B, F] or [F].

  fun = scale * <sg(direction), h>       gradients reach h and scale only;
  dir = sg(scale) * <direction, sg(h)>   gradients reach the direction only.
  Both equal `plain_logits(h, direction, scale)` in value.
  """
  sg = jax.lax.stop_gradient
  fun = jnp.sum(h * sg(direction), axis=-1) * scale
  dir_ = jnp.sum(sg(h) * direction, axis=-1) * sg(scale)
  return fun, dir_


# ----------------------------------------------------------------------------- heads


def raw_heads(raw: Array, normaliser: float = 1.0, eps: float = 1e-12) -> Head:
  """Per-example (unit direction [B, F], scale [B]) from raw vectors [B, F].

  scale = ||raw|| * normaliser; for StyleGAN2's projection use normaliser = 1/sqrt(cmap_dim)
  so that `plain_logits` equals its logit <out(x), cmap(c)> / sqrt(cmap_dim) exactly.
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(raw), axis=-1))
  return raw / jnp.maximum(norm, eps)[..., None], norm * normaliser


def class_heads(direction_table: Array, labels: Array, scale_table: Array | None = None,
                normaliser: float = 1.0) -> Head:
  """Per-example heads from per-class tables.

  Args:
    direction_table: raw directions [C, F] (normalised here).
    labels: int [B].
    scale_table: [C] scales; None takes the row norms of `direction_table` (`raw_heads`).
    normaliser: constant factor on the scale.
  Returns:
    (unit directions [B, F], scales [B]).
  """
  rows = direction_table[labels]
  if scale_table is None:
    return raw_heads(rows, normaliser)
  return normalize(rows), scale_table[labels] * normaliser


class SANEmbedding(nn.Module):
  """Per-class SAN head: params direction [n, F] (unit rows at init) and scale [n].

  __call__(ids int [B]) -> (unit directions [B, F], scales [B]). As sony/san's
  `SANEmbedding`, the initial scale is the norm of a N(0, 1) row and the stored direction
  that row normalised; directions are re-normalised at every use.
  """
  num_embeddings: int
  features: int

  @nn.compact
  def __call__(self, ids: Array) -> Head:
    def init_direction(key, shape, dtype=jnp.float32):
      return normalize(jax.random.normal(key, shape, dtype))

    def init_scale(key, shape, dtype=jnp.float32):
      # The norm of an independent N(0, 1) row: Flax gives each param its own key, and
      # only the distribution of the initial norm matters.
      v = jax.random.normal(key, shape + (self.features,), dtype)
      return jnp.sqrt(jnp.sum(jnp.square(v), axis=-1))

    direction = self.param("direction", init_direction, (self.num_embeddings, self.features))
    scale = self.param("scale", init_scale, (self.num_embeddings,))
    return normalize(direction[ids]), scale[ids]


# ----------------------------------------------------------------------------- losses


def discriminator_loss(fun_real: Array, dir_real: Array, fun_fake: Array, dir_fake: Array,
                       base: str = "hinge") -> tuple[Array, dict[str, Array]]:
  """SAN D loss from the (fun, dir) outputs [B] of reals and fakes.

  Returns:
    (scalar loss = base loss on fun + direction loss on dir, {'loss_fun', 'loss_dir'}).
  """
  _check_base(base)
  if base == "hinge":
    loss_fun = jnp.mean(jax.nn.relu(1.0 - fun_real)) + jnp.mean(jax.nn.relu(1.0 + fun_fake))
  else:
    loss_fun = jnp.mean(jax.nn.softplus(-fun_real)) + jnp.mean(jax.nn.softplus(fun_fake))
  # Wasserstein-type: maximise E_real <omega, h> - E_fake <omega, h> over omega.
  loss_dir = jnp.mean(dir_fake) - jnp.mean(dir_real)
  return loss_fun + loss_dir, {"loss_fun": loss_fun, "loss_dir": loss_dir}


def generator_loss(fake_logits: Array, base: str = "hinge") -> Array:
  """SAN G loss (scalar) on the plain logits [B] of fakes: -D (hinge) or softplus(-D)."""
  _check_base(base)
  if base == "hinge":
    return -jnp.mean(fake_logits)
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss_from_features(h_real: Array, head_real: Head, h_fake: Array,
                                     head_fake: Head, base: str = "hinge",
                                     offset_real: Array | float = 0.0,
                                     offset_fake: Array | float = 0.0
                                     ) -> tuple[Array, dict[str, Any]]:
  """SAN D loss from features and heads, the entry point for any network.

  Args:
    h_real, h_fake: D's penultimate features h(x) [B, F] (with gradient to D's body).
    head_real, head_fake: (unit directions [B, F], scales [B]) of the labels, e.g.
      `class_heads(table, labels)` or `raw_heads(cmap)` (with gradient to the head params).
    base: 'hinge' (SAN paper / StyleSAN-XL) or 'logistic'.
    offset_real, offset_fake: a bias added after the projection (e.g. the bias of an
      unconditional D's last layer); it belongs to the function part only (a constant
      cancels in the direction term).
  Returns:
    (scalar loss, metrics with loss_fun, loss_dir and the plain logits of reals and fakes).
  """
  fun_r, dir_r = san_logits(h_real, *head_real)
  fun_f, dir_f = san_logits(h_fake, *head_fake)
  fun_r, fun_f = fun_r + offset_real, fun_f + offset_fake
  loss, metrics = discriminator_loss(fun_r, dir_r, fun_f, dir_f, base)
  metrics = dict(metrics, real_logits=jax.lax.stop_gradient(fun_r),
                 fake_logits=jax.lax.stop_gradient(fun_f))
  return loss, metrics


def generator_loss_from_features(h_fake: Array, head_fake: Head, base: str = "hinge") -> Array:
  """SAN G loss from D's features of fakes [B, F] and their heads (plain forward)."""
  return generator_loss(plain_logits(h_fake, *head_fake), base)


# ----------------------------------------------------------------------------- StyleGAN2


def _is_san_tap(module: nn.Module, method_name: str) -> bool:
  del method_name
  return module.name in ("out", "fc", "mapping", "san_head")


def stylegan2_features(D: Any, d_vars: Any, img: Array, labels: Array | None = None
                       ) -> tuple[Array, Array, Head, Array]:
  """SAN view of a `stylegan2.Discriminator`, without changing the network.

  Runs D once with Flax's `capture_intermediates` and reads the last layer's input:
  conditional D with head='san' (what train.loss='san' builds): h = output of ``b4/out``
  [B, cmap_dim] and the (unit direction, scale) of the `san_head` table, the split of
  StyleSAN-XL (directions trained by the Wasserstein term only);
  conditional D with the projection head: the raw per-example direction = the label
  mapping's ``cmap`` [B, cmap_dim], so D = <h, cmap> / sqrt(cmap_dim) =
  `plain_logits(h, *raw_heads(cmap, 1/sqrt(cmap_dim)))` (the hinge term then reaches the
  directions through the shared MLP weights);
  unconditional D: h = output of ``b4/fc`` [B, C] and the direction = ``b4/out``'s weight
  (times its equalized-lr gain 1/sqrt(C)), whose bias is returned as the offset.
  Gradients flow through h and the head as through the plain forward pass.

  Returns:
    (logits [B] (the plain forward), h [B, F], head (unit [B, F], scale [B]), offset).
  """
  logits, state = D.apply(d_vars, img, labels, capture_intermediates=_is_san_tap,
                          mutable=["intermediates"])
  inter = state["intermediates"]
  b4 = inter["b4"]
  if "san_head" in inter:  # conditional, SAN table
    h = b4["out"]["__call__"][0]
    direction, scale = inter["san_head"]["__call__"][0]
    return logits, h, (direction, scale / float(h.shape[-1]) ** 0.5), jnp.float32(0.0)
  if "mapping" in inter:  # conditional: projection onto cmap
    h = b4["out"]["__call__"][0]
    cmap = inter["mapping"]["__call__"][0]
    return logits, h, raw_heads(cmap, 1.0 / float(cmap.shape[-1]) ** 0.5), jnp.float32(0.0)
  h = b4["fc"]["__call__"][0]
  out = d_vars["params"]["b4"]["out"]
  raw = out["weight"][:, 0] * (1.0 / float(h.shape[-1]) ** 0.5)
  head = raw_heads(jnp.broadcast_to(raw, h.shape))
  return logits, h, head, out["bias"][0]


def stylegan2_discriminator_loss(D: Any, d_vars: Any, reals: Array, real_labels: Array | None,
                                 fakes: Array, fake_labels: Array | None,
                                 base: str = "hinge") -> tuple[Array, dict[str, Any]]:
  """SAN D loss of a `stylegan2.Discriminator` on (augmented) reals and fakes.

  The drop-in replacement of the logistic D main loss in the StyleGAN2 trainer; see
  `stylegan2_features`. Metrics hold the plain real / fake logits (for ADA's sign
  statistic and logging).
  """
  _, h_r, head_r, off_r = stylegan2_features(D, d_vars, reals, real_labels)
  _, h_f, head_f, off_f = stylegan2_features(D, d_vars, fakes, fake_labels)
  return discriminator_loss_from_features(h_r, head_r, h_f, head_f, base, off_r, off_f)
