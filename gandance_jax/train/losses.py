"""GAN losses and regularisers of StyleGAN2 (NVIDIA's `training/loss.py`, paper Eqs. (3)-(4)).

All functions are pure and jit-friendly. Logits are D's raw outputs [B]; losses are
per-example [B] so the caller reduces them (NVIDIA takes `.mean()` over the batch and
multiplies a lazy regulariser by its interval).

  G main     softplus(-D(G(z, c), c))                   = -log sigmoid(D(fake))
  D main     softplus(D(G(z, c), c)) + softplus(-D(x, c))
  R1         ||dD(x, c)/dx||^2 summed over pixels; the caller weights it by r1_gamma / 2
  path len.  (||J_w^T y|| - pl_mean)^2, see `path_length_penalty`
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def generator_loss(fake_logits: Array) -> Array:
  """Non-saturating generator loss: logits of fakes [B] -> [B] softplus(-logits)."""
  return jax.nn.softplus(-fake_logits)


def discriminator_fake_loss(fake_logits: Array) -> Array:
  """Logistic D loss on fakes: [B] -> [B] softplus(logits) = -log(1 - sigmoid(logits))."""
  return jax.nn.softplus(fake_logits)


def discriminator_real_loss(real_logits: Array) -> Array:
  """Logistic D loss on reals: [B] -> [B] softplus(-logits) = -log sigmoid(logits)."""
  return jax.nn.softplus(-real_logits)


def r1_penalty(logits_fn: Callable[[Array], Array], real_images: Array) -> tuple[Array, Array]:
  """Squared norm of D's gradient at the reals (Mescheder et al. 2018), per example.

  Args:
    logits_fn: images [B, H, W, C] -> logits [B] (D with its params, labels and any
      augmentation closed over; the gradient flows through the augmentation, as NVIDIA's).
    real_images: [B, H, W, C].
  Returns:
    (penalty [B] = sum over H, W, C of (dD/dx)^2, logits [B]).
  """
  # NVIDIA differentiates logits.sum() w.r.t. the whole batch (minibatch-stddev couples the
  # examples a little); a vjp with ones is exactly that.
  logits, vjp = jax.vjp(logits_fn, real_images)
  (grads,) = vjp(jnp.ones_like(logits))
  return jnp.sum(jnp.square(grads), axis=(1, 2, 3)), logits


def path_length_penalty(synthesis_fn: Callable[[Array], Array], ws: Array, pl_noise_key: Array,
                        pl_mean: Array, pl_decay: float) -> tuple[Array, Array, Array]:
  """Path-length regulariser of StyleGAN2 (Karras et al. 2020, Eq. 4).

  Args:
    synthesis_fn: ws [b, num_ws, w_dim] -> images [b, H, W, C].
    ws: [b, num_ws, w_dim].
    pl_noise_key: key of the random image-space direction y.
    pl_mean: [] running mean of the path lengths (the state's `pl_mean`).
    pl_decay: decay of `pl_mean` (NVIDIA: 0.01).
  Returns:
    (penalty [b] = (pl_length - new_pl_mean)^2, pl_lengths [b], new_pl_mean [] without
    gradient: the copy to store in the state).

  As NVIDIA's loss.py, the penalty uses the new mean WITH its gradient (it depends on this
  batch's lengths through `pl_decay * mean(pl_lengths)`); only the stored copy is detached
  (`self.pl_mean.copy_(pl_mean.detach())`).
  """
  images, vjp = jax.vjp(synthesis_fn, ws)
  h, w = images.shape[1], images.shape[2]
  pl_noise = jax.random.normal(pl_noise_key, images.shape, images.dtype) / jnp.sqrt(h * w)
  (pl_grads,) = vjp(pl_noise)
  # [b, num_ws, w_dim]: sum over w_dim, mean over num_ws, sqrt (as NVIDIA).
  pl_lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(pl_grads), axis=2), axis=1))
  new_pl_mean = pl_mean + (jnp.mean(pl_lengths) - pl_mean) * pl_decay
  return (jnp.square(pl_lengths - new_pl_mean), pl_lengths,
          jax.lax.stop_gradient(new_pl_mean))


# ----------------------------------------------------------------------------- label reset


def check_reset_prob(p: float, empty_class: bool, field: str = "label_reset_prob") -> None:
  """Raises ValueError naming `field` unless p in [0, 1] (p = 1 conditions everything on the
  empty class) and, for p > 0, the networks have the empty class to reset to."""
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
    raise ValueError(f"{field} = {p!r} is invalid: must be a number in [0, 1]")
  if p > 0 and not empty_class:
    raise ValueError(f"{field} = {p!r} is invalid: must be 0 unless empty_class is True "
                     "(reset labels go to the empty id)")


def reset_labels(key: Array | None, labels: Array, p: float, empty_label: int | None, *,
                 uniform: Array | None = None) -> Array:
  """GANdance's stochastic label reset (supplementary Alg. 1), used by both trainers.

  Each label of int [B] `labels` becomes `empty_label` with probability `p` (a Python
  float, checked by `check_reset_prob`): where ``u < p`` for u ~ U[0, 1) drawn from `key`,
  or given as `uniform` [B] by a caller that draws its uniforms in one batch. Returns int32
  [B]; the labels unchanged when p = 0 or there is no empty class.
  """
  if p <= 0 or empty_label is None:
    return labels
  u = jax.random.uniform(key, labels.shape) if uniform is None else uniform
  return jnp.where(u < p, jnp.int32(empty_label), labels).astype(jnp.int32)
