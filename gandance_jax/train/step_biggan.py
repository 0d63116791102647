"""BigGAN's training phases + GANdance label reset (ajbrock/BigGAN-PyTorch train_fns.py).

One step of the reference's GAN_training_function, with train.batch_size = the images the
loader yields per iteration (the reference's batch_size * num_D_steps):

  d_main   num_D_steps times, each on its own 1/num_D_steps of the batch:
           fakes = G(z, gy) in train mode (no gradient; G's BN statistics and SN u update),
           D([fakes, reals], [gy, y]) in train mode (one forward, SN u update),
           hinge loss relu(1 - D(real)) + relu(1 + D(fake)), Adam step of D
  g_main   G(z, gy) and D(fakes, gy) in train mode, loss -D(fake) (+ the modified ortho
           regulariser of G, `G_ortho`), Adam step of G
  finish   G EMA of params AND BN statistics / SN vectors (the reference's ema over
           G.state_dict()): decay = 0 (a copy) until `ema_start` steps, else `ema_decay`

Fake labels gy are uniform over the real classes and the G batch has batch_size /
num_D_steps z's, as the reference's y_.sample_() / G_batch_size. Adam is plain (the
reference's betas and adam_eps, no lazy-regularisation scaling, state.make_optimizers).

GANdance (supplementary Alg. 1): each D step and the G step draw one uniform per batch row;
where it is below `label_reset_prob` BOTH the real label and the fake label of that row are
reset to the empty id (one mask per (step, phase), as StyleGAN2's phases share theirs).

Cross-replica BN: the phases are jitted over the global batch sharded on 'data', so BN's
batch moments are global (networks/biggan.py), as BigGAN's sync-BN: 1 and N devices compute
the same step up to the order of float reductions.

Randomness: key(step, purpose, draw) = fold_in(fold_in(fold_in(root, step), purpose), draw),
with the D step index folded into the purpose, as in train/step.py.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gandance_jax.networks import biggan
from gandance_jax.train import augment as augment_lib
from gandance_jax.train import losses
from gandance_jax.train import phases
from gandance_jax.train.hparams import TrainHParams
from gandance_jax.train.state import TrainState

Array = jax.Array
Batch = dict[str, Array]
Metrics = dict[str, Array]
STATS = biggan.STATS


class Purpose(enum.IntEnum):
  """Tags folded into the step key (D step i uses D_STEP + i)."""
  G_STEP = 1
  D_STEP = 16


class Draw(enum.IntEnum):
  Z = 1
  LABEL = 2
  RESET = 3
  AUG_FAKE = 4
  AUG_REAL = 5


def hinge_d_loss(fake_logits: Array, real_logits: Array) -> tuple[Array, Array]:
  """(mean relu(1 - D(real)), mean relu(1 + D(fake))): the reference's loss_hinge_dis."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)), jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: Array) -> Array:
  """-mean D(fake): the reference's loss_hinge_gen."""
  return -jnp.mean(fake_logits)


def _torch_matrix(path: tuple[Any, ...], w: Array) -> Array:
  """A G weight in the reference's `param.view(out, -1)` view (conv [kh, kw, I, O] ->
  [O, I*kh*kw], linear [in, out] -> [out, in])."""
  if w.ndim == 4:
    return w.transpose(3, 2, 0, 1).reshape(w.shape[3], -1)
  return w.T


def _ortho_param(path: tuple[Any, ...], w: Array) -> bool:
  names = [getattr(k, "key", k) for k in path]
  # The reference regularises every parameter with >= 2 axes except the shared embedding.
  return w.ndim >= 2 and "shared" not in names


def ortho_penalty(g_params: Any) -> Array:
  """Half of sum over G's weights W (reference view) of ||(W W^T) * (1 - I)||_F^2.

  Its gradient is 2 ((W W^T) * (1 - I)) W per weight, exactly what the reference's
  utils.ortho adds to the gradient (times the strength)."""
  total = jnp.zeros((), jnp.float32)
  for path, w in jax.tree_util.tree_flatten_with_path(g_params)[0]:
    if not _ortho_param(path, w):
      continue
    m = _torch_matrix(path, w)
    gram = (m @ m.T) * (1.0 - jnp.eye(m.shape[0], dtype=m.dtype))
    total = total + 0.5 * jnp.sum(jnp.square(gram))
  return total


@dataclasses.dataclass(frozen=True)
class BigGANPhaseFns:
  """The pure (un-jitted) phase functions of one BigGAN run, see the module docstring."""
  t: TrainHParams
  G: biggan.Generator
  D: biggan.Discriminator
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  batch_sharding: NamedSharding | None = None

  def _key(self, state: TrainState, purpose: int | Array, draw: int) -> Array:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    return jax.random.fold_in(jax.random.fold_in(key, purpose), int(draw))

  def _constrain(self, x: Array) -> Array:
    if self.batch_sharding is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.batch_sharding)

  def _augment(self, state: TrainState, images: Array, key: Array) -> Array:
    if self.t.augment == "none":
      return images
    return augment_lib.augment(images, key, state.augment_p,
                               augment_lib.parse_policy(self.t.augment_policy))

  def chunk(self, batch: Batch, i: int | Array) -> tuple[Array, Array]:
    """(images, labels) of D step i: rows i, i + n, i + 2n, ... of the batch (strided, so
    that each device keeps its own rows of every chunk)."""
    n = int(self.t.num_D_steps)

    def take(x):
      x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
      return self._constrain(jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False))
    return take(batch["image"]), take(batch["label"])

  def fake_inputs(self, state: TrainState, purpose: int | Array, b: int
                  ) -> tuple[Array, Array, Array]:
    """(z [b, z_dim], uniform fake labels gy [b], reset uniforms [b]) of one phase."""
    key = lambda d: self._key(state, purpose, d)
    z = self._constrain(jax.random.normal(key(Draw.Z), (b, self.G.z_dim)))
    gy = self._constrain(jax.random.randint(key(Draw.LABEL), (b,), 0, self.G.num_classes))
    u = self._constrain(jax.random.uniform(key(Draw.RESET), (b,)))
    return z, gy, u

  def reset(self, labels: Array, u: Array) -> Array:
    return losses.reset_labels(None, labels, float(self.t.label_reset_prob), self.G.empty_label,
                               uniform=u)

  def run_g(self, g_params: Any, g_stats: Any, z: Array, labels: Array) -> tuple[Array, Any]:
    """G in train mode: (images, G's updated batch_stats)."""
    images, upd = self.G.apply({"params": g_params, STATS: g_stats}, z, labels, train=True,
                               mutable=[STATS])
    return images, upd[STATS]

  def run_d(self, d_params: Any, d_stats: Any, images: Array, labels: Array
            ) -> tuple[Array, Any]:
    """D in train mode: (logits [B], D's updated batch_stats)."""
    logits, upd = self.D.apply({"params": d_params, STATS: d_stats}, images, labels, train=True,
                               mutable=[STATS])
    return logits, upd[STATS]

  # ------------------------------------------------------------------------- phases

  def d_main(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """num_D_steps hinge-loss D steps, each on its own chunk of the batch (a fori_loop,
    unrolled: XLA:CPU ran the rolled loop's body 36x slower, 12.5 s vs 347 ms for the
    biggan_digits phase, `python benchmarks/train_step.py --configs=biggan_digits`)."""
    n = int(self.t.num_D_steps)

    def d_step(i, carry):
      g_stats, d_params, d_stats, d_opt, sums = carry
      reals, labels = self.chunk(batch, i)
      purpose = int(Purpose.D_STEP) + i
      z, gy, u = self.fake_inputs(state, purpose, labels.shape[0])
      labels, gy = self.reset(labels, u), self.reset(gy, u)
      fakes, g_stats = self.run_g(state.g_params, g_stats, z, gy)
      fakes = self._augment(state, jax.lax.stop_gradient(fakes),
                            self._key(state, purpose, Draw.AUG_FAKE))
      reals = self._augment(state, reals, self._key(state, purpose, Draw.AUG_REAL))
      images = jnp.concatenate([fakes, reals], axis=0)
      both = jnp.concatenate([gy, labels], axis=0)
      b = fakes.shape[0]

      def loss_fn(params):
        logits, new_stats = self.run_d(params, d_stats, images, both)
        fake_logits, real_logits = logits[:b], logits[b:]
        loss_real, loss_fake = hinge_d_loss(fake_logits, real_logits)
        return loss_real + loss_fake, (loss_real, loss_fake, fake_logits, real_logits,
                                       new_stats)

      (_, (loss_real, loss_fake, fake_logits, real_logits, d_stats)), grads = (
          jax.value_and_grad(loss_fn, has_aux=True)(d_params))
      updates, d_opt = self.d_tx.update(grads, d_opt, d_params)
      d_params = optax.apply_updates(d_params, updates)
      step_metrics = jnp.stack([loss_real, loss_fake, jnp.mean(real_logits),
                                jnp.mean(fake_logits)])
      return g_stats, d_params, d_stats, d_opt, sums + step_metrics / n

    carry = (state.g_buffers["batch_stats"], state.d_params, state.d_buffers["batch_stats"],
             state.d_opt_state, jnp.zeros((4,), jnp.float32))
    g_stats, d_params, d_stats, d_opt, sums = jax.lax.fori_loop(0, n, d_step, carry,
                                                                unroll=True)
    state = state.replace(
        d_params=d_params, d_opt_state=d_opt, d_buffers={"batch_stats": d_stats},
        g_buffers=dict(state.g_buffers, batch_stats=g_stats))
    names = ("loss/D_real", "loss/D_fake", "scores/real", "scores/fake")
    metrics = {name: sums[k] for k, name in enumerate(names)}
    return state, {"loss/D": sums[0] + sums[1], **metrics}

  def g_main(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """Hinge G step on batch_size / num_D_steps fakes (+ G_ortho)."""
    b = batch["label"].shape[0] // int(self.t.num_D_steps)
    purpose = int(Purpose.G_STEP)
    z, gy, u = self.fake_inputs(state, purpose, b)
    gy = self.reset(gy, u)
    aug_key = self._key(state, purpose, Draw.AUG_FAKE)
    strength = float(self.t.G_ortho)

    def loss_fn(g_params):
      fakes, g_stats = self.run_g(g_params, state.g_buffers["batch_stats"], z, gy)
      logits, d_stats = self.run_d(state.d_params, state.d_buffers["batch_stats"],
                                   self._augment(state, fakes, aug_key), gy)
      loss = hinge_g_loss(logits)
      ortho = ortho_penalty(g_params) if strength > 0 else jnp.zeros(())
      return loss + strength * ortho, (loss, ortho, logits, g_stats, d_stats)

    (_, (loss, ortho, logits, g_stats, d_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.g_params)
    updates, g_opt = self.g_tx.update(grads, state.g_opt_state, state.g_params)
    state = state.replace(g_params=optax.apply_updates(state.g_params, updates),
                          g_opt_state=g_opt, d_buffers={"batch_stats": d_stats},
                          g_buffers=dict(state.g_buffers, batch_stats=g_stats))
    metrics = {"loss/G": loss, "scores/fake_g": jnp.mean(logits)}
    if strength > 0:
      metrics["ortho"] = ortho
    return state, metrics

  def finish(self, state: TrainState) -> tuple[TrainState, Metrics]:
    """G EMA of params and buffers (the reference's ema.update(itr), itr = step + 1)."""
    itr = state.step + 1
    decay = jnp.where(itr < int(self.t.ema_start), 0.0, float(self.t.ema_decay))
    ema = lambda e, p: e * decay + p * (1 - decay)
    g_ema = jax.tree.map(ema, state.g_ema_params, state.g_params)
    ema_stats = jax.tree.map(ema, state.g_buffers["ema_batch_stats"],
                             state.g_buffers["batch_stats"])
    state = state.replace(step=itr, g_ema_params=g_ema,
                          g_buffers=dict(state.g_buffers, ema_batch_stats=ema_stats))
    return state, {"ema_beta": decay}


class BigGANTrainStep(phases.PhasedTrainStep):
  """Jits BigGAN's phases over a mesh; the same interface as step.TrainStep.

    step_fn = BigGANTrainStep(hparams.train, G, D, g_tx, d_tx, mesh)
    state, metrics = step_fn(state, batch, step)
  """

  def __init__(self, t: TrainHParams, G: biggan.Generator, D: biggan.Discriminator,
               g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
               mesh: Mesh):
    self.t = t
    fns = BigGANPhaseFns(t, G, D, g_tx, d_tx, batch_sharding=NamedSharding(mesh, P("data")))
    super().__init__(fns, mesh, ("d_main", "g_main"))

  def phases_at(self, step: int) -> list[str]:
    """D steps, then the G step (every step: BigGAN has no lazy phases)."""
    del step
    return ["d_main", "g_main"]


__all__ = ["BigGANPhaseFns", "BigGANTrainStep", "hinge_d_loss", "hinge_g_loss",
           "ortho_penalty"]
