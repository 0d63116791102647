"""The training phases of StyleGAN2 + GANdance label reset, one jitted function each.

NVIDIA's loop (stylegan2-ada-pytorch `training_loop.py` / `loss.py`) runs per batch

  G main   softplus(-D(G(z, c), c))                               every step
  G reg    path length * pl_weight * pl_interval                  every pl_interval steps
  D main   softplus(D(G(z, c), c)) + softplus(-D(x, c))           every step
  D reg    R1: r1_gamma / 2 * ||dD(x, c)/dx||^2 * r1_interval     every r1_interval steps
  finish   G EMA (beta = 0.5 ** (B / ema_nimg), ramp-up), ADA p, step += 1

Augmentation of every D input (`train.augment`): 'ada' is NVIDIA's AugmentPipe
(augment_pipe.py, preset `ada_pipe`), 'diffaugment' / 'diffaugment_ada' DiffAugment's ops
(augment.py). Adaptive p (NVIDIA's ADA rule, `augment_pipe.adjust_p`) reads the sign of D
on the reals of D main AND of the R1 phase, as NVIDIA's collector of `Loss/signs/real`.

Main and reg phases of a network share one Adam whose lr and betas are scaled by
I / (I + 1) (`state.make_optimizer`). Each phase is a pure function (state, batch) ->
(state, metrics) jitted with the state donated and replicated over the mesh and the batch
sharded over its 'data' axis; GSPMD inserts the gradient all-reduce.

GANdance (supplementary Alg. 1): at each step every label of the batch is replaced by the
empty id with probability `label_reset_prob`; the SAME reset labels condition D on the reals,
D on the fakes and G (the mask comes from one key per step shared by all phases).

Randomness: key(step, purpose) = fold_in(fold_in(root, step), purpose). Every draw is a
global array inside jit (threefry is partitionable), so 1 device, N devices and N processes
see the same numbers.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gandance_jax.networks import san
from gandance_jax.networks import stylegan2
from gandance_jax.train import augment as augment_lib
from gandance_jax.train import augment_pipe
from gandance_jax.train.hparams import TrainHParams
from gandance_jax.train import losses
from gandance_jax.train import phases
from gandance_jax.train import step_biggan
from gandance_jax.train.state import TrainState

Array = jax.Array
Batch = dict[str, Array]
Metrics = dict[str, Array]


class Purpose(enum.IntEnum):
  """Tags folded into the step key so that every random draw has its own stream."""
  LABEL_RESET = 1
  G_MAIN = 2
  G_REG = 3
  D_MAIN = 4
  D_REG = 5


class Draw(enum.IntEnum):
  """Sub-tags inside a phase."""
  Z = 1
  MIX = 2
  NOISE = 3
  AUG_FAKE = 4
  AUG_REAL = 5
  PL_NOISE = 6


def _nan_to_num(tree: Any) -> Any:
  # NVIDIA sanitises gradients before the optimizer step (misc.nan_to_num); the loop still
  # stops on a non-finite loss, this only keeps one bad example from poisoning Adam.
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), tree)


@dataclasses.dataclass(frozen=True)
class PhaseFns:
  """The pure (un-jitted) phase functions of one run, see the module docstring."""
  t: TrainHParams
  G: stylegan2.Generator
  D: stylegan2.Discriminator
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  batch_sharding: NamedSharding | None = None

  # ------------------------------------------------------------------------- helpers

  def _key(self, state: TrainState, purpose: Purpose, draw: int | None = None) -> Array:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    key = jax.random.fold_in(key, int(purpose))
    return key if draw is None else jax.random.fold_in(key, int(draw))

  def _constrain(self, x: Array) -> Array:
    if self.batch_sharding is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.batch_sharding)

  def labels_for_step(self, state: TrainState, labels: Array) -> Array:
    """int32 [B]: the batch labels with GANdance's stochastic reset to the empty id."""
    return losses.reset_labels(self._key(state, Purpose.LABEL_RESET), labels,
                               self.t.label_reset_prob, self.G.empty_label)

  def _augment(self, state: TrainState, images: Array, key: Array) -> Array:
    if self.t.augment == "none":
      return images
    if self.t.augment == "ada":
      return augment_pipe.augment(key, images, state.augment_p,
                                  augment_pipe.AugmentSpec.from_preset(self.t.ada_pipe))
    return augment_lib.augment(images, key, state.augment_p,
                               augment_lib.parse_policy(self.t.augment_policy))

  def run_mapping(self, g_vars: dict[str, Any], z: Array, labels: Array, mix_key: Array
                  ) -> tuple[Array, Array]:
    """(ws [B, num_ws, w_dim] with style mixing, w [B, w_dim] of the first z for w_avg)."""
    G = self.G
    w = G.apply(g_vars, z, labels, broadcast=False, method=G.mapping)
    ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], G.num_ws, G.w_dim))
    prob = float(self.t.style_mixing_prob)
    if prob > 0:
      k_cut, k_prob, k_z = jax.random.split(mix_key, 3)
      cutoff = jax.random.randint(k_cut, (), 1, G.num_ws)
      cutoff = jnp.where(jax.random.uniform(k_prob, ()) < prob, cutoff, G.num_ws)
      z2 = self._constrain(jax.random.normal(k_z, z.shape, z.dtype))
      # NVIDIA's second mapping call skips the w_avg update: only `w` feeds it.
      w2 = G.apply(g_vars, z2, labels, broadcast=False, method=G.mapping)
      ws = jnp.where(jnp.arange(G.num_ws)[None, :, None] >= cutoff, w2[:, None, :], ws)
    return ws, w

  def run_synthesis(self, g_vars: dict[str, Any], ws: Array, noise_key: Array) -> Array:
    G = self.G
    return G.apply(g_vars, ws, noise_mode="random", rngs={"noise": noise_key},
                   method=G.synthesis)

  def updated_w_avg(self, state: TrainState, w: Array, labels: Array) -> Array:
    """NVIDIA's `w_avg.copy_(w.mean(0).lerp(w_avg, w_avg_beta))`, no gradient, with the mean
    taken over the rows whose label is a real class (w [B, w_dim], labels int [B]).

    Rows reset to the empty id are left out so that the truncation centre is the average
    of the real classes whatever GANdance's p (else it drifts toward w(empty) with weight
    p); a batch with no real-class row leaves w_avg unchanged.
    """
    w = jax.lax.stop_gradient(w).astype(jnp.float32)
    if self.G.empty_label is None:
      real = jnp.ones(labels.shape, jnp.float32)
    else:
      real = (labels != self.G.empty_label).astype(jnp.float32)
    count = jnp.sum(real)
    w_mean = jnp.sum(w * real[:, None], axis=0) / jnp.maximum(count, 1.0)
    updated = w_mean + (state.w_avg - w_mean) * self.G.w_avg_beta
    return jnp.where(count > 0, updated, state.w_avg)

  def _with_w_avg(self, state: TrainState, w_avg: Array) -> TrainState:
    buffers = dict(state.g_buffers)
    buffers["mapping_network"] = dict(buffers["mapping_network"], w_avg=w_avg)
    return state.replace(g_buffers=buffers)

  def run_d(self, state: TrainState, d_params: Any, images: Array, labels: Array,
            aug_key: Array) -> Array:
    """D logits [B] of (augmented) images [B, H, W, C]."""
    return self.D.apply({"params": d_params, "buffers": state.d_buffers},
                        self._augment(state, images, aug_key), labels)

  # ------------------------------------------------------------------------- phases

  def g_main(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """G main: non-saturating loss on fakes; tracks w_avg."""
    labels = self.labels_for_step(state, batch["label"])
    key = lambda d: self._key(state, Purpose.G_MAIN, d)
    z = self._constrain(jax.random.normal(key(Draw.Z), (labels.shape[0], self.G.z_dim)))

    def loss_fn(g_params):
      g_vars = {"params": g_params, "buffers": state.g_buffers}
      ws, w = self.run_mapping(g_vars, z, labels, key(Draw.MIX))
      images = self.run_synthesis(g_vars, ws, key(Draw.NOISE))
      logits = self.run_d(state, state.d_params, images, labels, key(Draw.AUG_FAKE))
      if self.t.loss == "san":
        return san.generator_loss(logits, self.t.san_base), (logits, w)
      return jnp.mean(losses.generator_loss(logits)), (logits, w)

    (loss, (logits, w)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    updates, g_opt_state = self.g_tx.update(_nan_to_num(grads), state.g_opt_state,
                                            state.g_params)
    state = state.replace(g_params=optax.apply_updates(state.g_params, updates),
                          g_opt_state=g_opt_state)
    state = self._with_w_avg(state, self.updated_w_avg(state, w, labels))
    return state, {"loss/G": loss, "scores/fake_g": jnp.mean(logits)}

  def g_reg(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """G reg: path-length penalty on B / pl_batch_shrink fakes, weighted by the interval."""
    t = self.t
    labels = self.labels_for_step(state, batch["label"])
    b = max(1, labels.shape[0] // int(t.pl_batch_shrink))
    labels = labels[:b]
    key = lambda d: self._key(state, Purpose.G_REG, d)
    z = jax.random.normal(key(Draw.Z), (b, self.G.z_dim))

    def loss_fn(g_params):
      g_vars = {"params": g_params, "buffers": state.g_buffers}
      ws, w = self.run_mapping(g_vars, z, labels, key(Draw.MIX))
      synthesis = lambda ws_: self.run_synthesis(g_vars, ws_, key(Draw.NOISE))
      penalty, lengths, pl_mean = losses.path_length_penalty(
          synthesis, ws, key(Draw.PL_NOISE), state.pl_mean, float(t.pl_decay))
      loss = jnp.mean(penalty * float(t.pl_weight)) * int(t.pl_interval)
      return loss, (jnp.mean(penalty), jnp.mean(lengths), pl_mean, w)

    (loss, (penalty, lengths, pl_mean, w)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.g_params)
    updates, g_opt_state = self.g_tx.update(_nan_to_num(grads), state.g_opt_state,
                                            state.g_params)
    state = state.replace(g_params=optax.apply_updates(state.g_params, updates),
                          g_opt_state=g_opt_state, pl_mean=pl_mean)
    state = self._with_w_avg(state, self.updated_w_avg(state, w, labels))
    return state, {"loss/G_reg": loss, "pl_penalty": penalty, "pl_length": lengths}

  def d_main(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """D main: logistic loss on fakes (from the current G) and reals; ADA sign statistic."""
    labels = self.labels_for_step(state, batch["label"])
    key = lambda d: self._key(state, Purpose.D_MAIN, d)
    z = self._constrain(jax.random.normal(key(Draw.Z), (labels.shape[0], self.G.z_dim)))
    ws, w = self.run_mapping(state.g_variables, z, labels, key(Draw.MIX))
    fakes = jax.lax.stop_gradient(self.run_synthesis(state.g_variables, ws, key(Draw.NOISE)))
    reals = batch["image"]

    def san_loss_fn(d_params):
      # SAN (seeds/004): hinge/logistic on the function part, Wasserstein-style term on the
      # normalised direction; same augmentation draws as the logistic path.
      d_vars = {"params": d_params, "buffers": state.d_buffers}
      loss, m = san.stylegan2_discriminator_loss(
          self.D, d_vars, self._augment(state, reals, key(Draw.AUG_REAL)), labels,
          self._augment(state, fakes, key(Draw.AUG_FAKE)), labels, base=self.t.san_base)
      return loss, (m["fake_logits"], m["real_logits"])

    def loss_fn(d_params):
      fake_logits = self.run_d(state, d_params, fakes, labels, key(Draw.AUG_FAKE))
      real_logits = self.run_d(state, d_params, reals, labels, key(Draw.AUG_REAL))
      loss_fake = jnp.mean(losses.discriminator_fake_loss(fake_logits))
      loss_real = jnp.mean(losses.discriminator_real_loss(real_logits))
      return loss_fake + loss_real, (fake_logits, real_logits)

    (loss, (fake_logits, real_logits)), grads = jax.value_and_grad(
        san_loss_fn if self.t.loss == "san" else loss_fn,
        has_aux=True)(state.d_params)
    updates, d_opt_state = self.d_tx.update(_nan_to_num(grads), state.d_opt_state,
                                            state.d_params)
    real_sign = jnp.mean(jnp.sign(real_logits))
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                          d_opt_state=d_opt_state,
                          ada_sign_sum=state.ada_sign_sum + real_sign)
    # NVIDIA's D main also runs G's mapping in training mode, which updates w_avg.
    state = self._with_w_avg(state, self.updated_w_avg(state, w, labels))
    return state, {"loss/D": loss, "scores/fake": jnp.mean(fake_logits),
                   "scores/real": jnp.mean(real_logits), "signs/real": real_sign}

  def d_reg(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """D reg: lazy R1 on the (augmented) reals, weighted by r1_gamma / 2 and the interval."""
    t = self.t
    labels = self.labels_for_step(state, batch["label"])
    aug_key = self._key(state, Purpose.D_REG, Draw.AUG_REAL)

    def loss_fn(d_params):
      logits_fn = lambda x: self.run_d(state, d_params, x, labels, aug_key)
      penalty, logits = losses.r1_penalty(logits_fn, batch["image"])
      loss = jnp.mean(penalty * (float(t.r1_gamma) / 2)) * int(t.r1_interval)
      return loss, (jnp.mean(penalty), logits)

    (loss, (penalty, real_logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.d_params)
    updates, d_opt_state = self.d_tx.update(_nan_to_num(grads), state.d_opt_state,
                                            state.d_params)
    # NVIDIA's R1 phase reports Loss/signs/real too: ADA's statistic counts these reals.
    real_sign = jnp.mean(jnp.sign(jax.lax.stop_gradient(real_logits)))
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                          d_opt_state=d_opt_state,
                          ada_sign_sum=state.ada_sign_sum + real_sign)
    return state, {"loss/D_reg": loss, "r1_penalty": penalty, "signs/real_reg": real_sign}

  def ada_sign_phases(self, step: Array) -> Array:
    """int32 []: how many phases added a batch mean to `ada_sign_sum` in the ADA window
    ending with `step` (the ada_interval steps step - I + 1 .. step): D main at every step,
    R1 at the steps divisible by r1_interval (the schedule of `TrainStep.phases_at`).

    Every phase sees the same B reals, so sum / count is the mean over all reported
    signs, NVIDIA's `ada_stats['Loss/signs/real']`.
    """
    t = self.t
    interval = int(t.ada_interval)
    count = jnp.int32(interval)
    if float(t.r1_gamma) > 0:
      r1 = int(t.r1_interval)
      # Multiples of r1 in (step - I, step]; floor division is exact for negatives too.
      count = count + (jnp.floor_divide(step, r1) - jnp.floor_divide(step - interval, r1))
    return count

  def finish(self, state: TrainState) -> tuple[TrainState, Metrics]:
    """G EMA with ramp-up, ADA's p adjustment, step += 1."""
    t = self.t
    batch_size = int(t.batch_size)
    cur_nimg = state.step.astype(jnp.float32) * batch_size
    ema_nimg = jnp.float32(float(t.ema_kimg) * 1000.0)
    if t.ema_rampup_effective is not None:
      ema_nimg = jnp.minimum(ema_nimg, cur_nimg * float(t.ema_rampup_effective))
    beta = 0.5 ** (batch_size / jnp.maximum(ema_nimg, 1e-8))
    g_ema = jax.tree.map(lambda p, e: p + (e - p) * beta, state.g_params, state.g_ema_params)
    step = state.step + 1
    augment_p, ada_sign_sum = state.augment_p, state.ada_sign_sum
    if t.adaptive_augment:
      interval = int(t.ada_interval)
      due = (step % interval) == 0
      sign_mean = ada_sign_sum / self.ada_sign_phases(state.step).astype(jnp.float32)
      adjusted = augment_pipe.adjust_p(augment_p, sign_mean, batch_size, interval,
                                       float(t.ada_kimg), float(t.ada_target))
      augment_p = jnp.where(due, adjusted, augment_p)
      ada_sign_sum = jnp.where(due, 0.0, ada_sign_sum)
    state = state.replace(step=step, g_ema_params=g_ema, augment_p=augment_p,
                          ada_sign_sum=ada_sign_sum)
    return state, {"ema_beta": beta, "augment_p": augment_p}


# ----------------------------------------------------------------------------- jitted step


class TrainStep(phases.PhasedTrainStep):
  """Jits the phases over a mesh and runs the ones due at a step.

    step_fn = TrainStep(hparams.train, G, D, g_tx, d_tx, mesh)
    state, metrics = step_fn(state, batch, step)   # step: the host's copy of state.step

  `batch` = {'image': [B, H, W, C], 'label': int32 [B]} global arrays sharded over 'data'.
  Which lazy phases run is decided on the host from `step` (no lax.cond, no recompiles).
  The returned metrics are device scalars (fetch them lazily to keep dispatch async).
  """

  def __init__(self, t: TrainHParams, G: stylegan2.Generator,
               D: stylegan2.Discriminator, g_tx: optax.GradientTransformation,
               d_tx: optax.GradientTransformation, mesh: Mesh):
    self.t = t
    self.run_g_reg = float(t.pl_weight) > 0
    self.run_d_reg = float(t.r1_gamma) > 0
    fns = PhaseFns(t, G, D, g_tx, d_tx, batch_sharding=NamedSharding(mesh, P("data")))
    super().__init__(fns, mesh, ("g_main", "g_reg", "d_main", "d_reg"))

  def phases_at(self, step: int) -> list[str]:
    """Names of the phases run at `step` (NVIDIA: a phase with interval I runs if step % I == 0)."""
    t = self.t
    names = ["g_main"]
    if self.run_g_reg and step % int(t.pl_interval) == 0:
      names.append("g_reg")
    names.append("d_main")
    if self.run_d_reg and step % int(t.r1_interval) == 0:
      names.append("d_reg")
    return names


def make_train_step(t: TrainHParams, G: Any, D: Any, g_tx: optax.GradientTransformation,
                    d_tx: optax.GradientTransformation, mesh: Mesh
                    ) -> TrainStep | step_biggan.BigGANTrainStep:
  """The jitted step of the run's family (`t.family`): StyleGAN2's phases above, or BigGAN's
  (train/step_biggan.py); both take (state, batch, step)."""
  if t.family == "biggan":
    return step_biggan.BigGANTrainStep(t, G, D, g_tx, d_tx, mesh)
  return TrainStep(t, G, D, g_tx, d_tx, mesh)


__all__ = ["PhaseFns", "TrainStep", "Purpose", "Draw", "make_train_step"]
