"""The training state pytree, the models and optimizers built from a config.

`TrainState` holds everything a step reads or writes, so a step is a pure function
state -> state and a checkpoint of the state (plus the data step) resumes bit-for-bit:

  step          int32 []          steps done (= batches consumed); cur_nimg = step * batch
  g_params      G 'params'        trained by G main / G path-length
  g_buffers     G 'buffers'       w_avg (tracked in G's forward passes), FIR filters,
                                  noise_const; shared by G and G EMA, as NVIDIA copies them
  g_ema_params  G 'params'        EMA of g_params (the generator to sample from)
  d_params      D 'params'
  d_buffers     D 'buffers'       FIR filters (constant)
  g_opt_state   optax state of G  one Adam shared by G main and G reg (as NVIDIA's phases)
  d_opt_state   optax state of D  one Adam shared by D main and D R1
  pl_mean       float32 []        running mean of path lengths
  augment_p     float32 []        probability of each augmentation op (ADA adapts it)
  ada_sign_sum  float32 []        sum of E[sign(D(real))] since the last ADA adjustment
  rng           uint32 [2]        root key data; every draw is fold_in(root, step, purpose)

BigGAN (`generator.family = 'biggan'`, train/step_biggan.py) keeps the same fields, so that
checkpoints, the ahead-of-time compiler and the tools handle both families alike:

  g_buffers     {'batch_stats': G's, 'ema_batch_stats': G EMA's}   BN running statistics and
                spectral-norm u / sv (non-trainable; G EMA's are the EMA of G's, as the
                reference's ema over G.state_dict())
  d_buffers     {'batch_stats': D's}                               spectral-norm u / sv
  g/d_opt_state plain Adam (no lazy-regularisation scaling)
  pl_mean, augment_p, ada_sign_sum  unused (StyleGAN2's)
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gandance_jax import checkpoint
from gandance_jax.networks import families
from gandance_jax.networks import stylegan2
from gandance_jax.train import hparams as hparams_lib
from gandance_jax.train.hparams import HParams, TrainHParams

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class TrainState:
  """See the module docstring for the fields and their shapes."""
  step: Array
  g_params: PyTree
  g_buffers: PyTree
  g_ema_params: PyTree
  d_params: PyTree
  d_buffers: PyTree
  g_opt_state: PyTree
  d_opt_state: PyTree
  pl_mean: Array
  augment_p: Array
  ada_sign_sum: Array
  rng: Array

  @property
  def w_avg(self) -> Array:
    """[w_dim] the tracked average of W (the truncation centre)."""
    return self.g_buffers["mapping_network"]["w_avg"]

  @property
  def is_biggan(self) -> bool:
    """BigGAN's layout of the buffers (module docstring)."""
    return isinstance(self.g_buffers, dict) and "ema_batch_stats" in self.g_buffers

  @property
  def g_variables(self) -> dict[str, PyTree]:
    if self.is_biggan:
      return {"params": self.g_params, "batch_stats": self.g_buffers["batch_stats"]}
    return {"params": self.g_params, "buffers": self.g_buffers}

  @property
  def g_ema_variables(self) -> dict[str, PyTree]:
    """The variables to sample with: EMA params and the (tracked) buffers."""
    if self.is_biggan:
      return {"params": self.g_ema_params, "batch_stats": self.g_buffers["ema_batch_stats"]}
    return {"params": self.g_ema_params, "buffers": self.g_buffers}

  @property
  def d_variables(self) -> dict[str, PyTree]:
    if self.is_biggan:
      return {"params": self.d_params, "batch_stats": self.d_buffers["batch_stats"]}
    return {"params": self.d_params, "buffers": self.d_buffers}


def build_models(hp: HParams) -> tuple[Any, Any]:
  """G and D from the generator / discriminator hyper-parameters (keyword arguments and
  `family`, networks/families.py)."""
  return families.make_generator(hp.generator), families.make_discriminator(hp.discriminator)


def mb_ratio(interval: int) -> float:
  """Lazy regularisation every `interval` steps: lr *= I / (I + 1), betas **= I / (I + 1)."""
  return interval / (interval + 1)


def make_optimizer(lr: float, betas: tuple[float, float], eps: float,
                   reg_interval: int) -> optax.GradientTransformation:
  """Adam with NVIDIA's lazy-regularisation scaling of lr and betas.

  torch.optim.Adam and optax.adam agree (eps added to sqrt(v_hat)). As in NVIDIA's loop, the
  scaling depends on the interval only, so it applies even when the regulariser's weight
  is 0 (their G reg phase then runs with no gradient).
  """
  ratio = mb_ratio(reg_interval)
  return optax.adam(lr * ratio, b1=betas[0] ** ratio, b2=betas[1] ** ratio, eps=eps)


def make_optimizers(t: TrainHParams
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """(G optimizer, D optimizer) of the training hyper-parameters (BigGAN: plain Adam, as
  the reference's torch.optim.Adam with its betas and adam_eps)."""
  betas = tuple(float(b) for b in t.betas)
  if t.family == "biggan":
    return (optax.adam(t.g_lr, b1=betas[0], b2=betas[1], eps=t.eps),
            optax.adam(t.d_lr, b1=betas[0], b2=betas[1], eps=t.eps))
  g_tx = make_optimizer(t.g_lr, betas, t.eps, t.pl_interval)
  d_tx = make_optimizer(t.d_lr, betas, t.eps, t.r1_interval)
  return g_tx, d_tx


def initial_augment_p(t: TrainHParams) -> float:
  """Fixed p for 'diffaugment', 0 at the start of 'ada' (NVIDIA's augment_p), 0 for 'none'."""
  if t.augment == "diffaugment":
    return float(t.augment_p)
  return 0.0


def init_train_state(hp: HParams, G: stylegan2.Generator,
                     D: stylegan2.Discriminator, g_tx: optax.GradientTransformation,
                     d_tx: optax.GradientTransformation) -> TrainState:
  """A fresh state from `hp.seed` (a pure function: wrap it in jit with out_shardings)."""
  root = jax.random.key(hp.seed)
  g_vars = families.init_generator(G, jax.random.fold_in(root, 0))
  d_vars = families.init_discriminator(D, jax.random.fold_in(root, 1))
  g_params, d_params = g_vars["params"], d_vars["params"]
  if families.is_biggan(G):
    g_buffers = {"batch_stats": g_vars["batch_stats"],
                 "ema_batch_stats": jax.tree.map(jnp.copy, g_vars["batch_stats"])}
    d_buffers = {"batch_stats": d_vars["batch_stats"]}
  else:
    g_buffers, d_buffers = g_vars["buffers"], d_vars["buffers"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params,
      g_buffers=g_buffers,
      g_ema_params=jax.tree.map(jnp.copy, g_params),
      d_params=d_params,
      d_buffers=d_buffers,
      g_opt_state=g_tx.init(g_params),
      d_opt_state=d_tx.init(d_params),
      pl_mean=jnp.zeros((), jnp.float32),
      augment_p=jnp.asarray(initial_augment_p(hp.train), jnp.float32),
      ada_sign_sum=jnp.zeros((), jnp.float32),
      # Raw key data (not a typed key) so that Orbax stores it as a plain uint32 array.
      rng=jax.random.key_data(jax.random.fold_in(root, 2)),
  )


def sampling_variables(hp: HParams, G: Any, state: TrainState) -> dict[str, PyTree]:
  """G EMA's variables for sampling: `state.g_ema_variables`, with BigGAN's standing
  statistics re-estimated when `train.standing_stats` > 0 (checkpoint.standing_stats: a key
  of the seed, so the same statistics for the same state, in the loop and in the CLIs)."""
  if not families.is_biggan(G):
    return state.g_ema_variables
  t = hp.train
  return checkpoint.standing_stats(G, state.g_ema_variables, hp.seed, t.standing_stats,
                                   t.batch_size, t.num_D_steps)


def params_are_finite(state: TrainState) -> Array:
  """bool []: every parameter and optimizer moment of G, G EMA and D is finite."""
  leaves = jax.tree.leaves((state.g_params, state.g_ema_params, state.d_params,
                            state.g_opt_state, state.d_opt_state, state.g_buffers))
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves
                            if jnp.issubdtype(x.dtype, jnp.floating)]))


def load_train_state(workdir: str, step: int | None = None) -> tuple[TrainState, int]:
  """The whole TrainState (numpy leaves) of another run, read-only, built from that run's
  saved config (see `checkpoint.load_state`; for warm starts and tests).

  Raises:
    FileNotFoundError if `workdir` has no readable checkpoint (or none at `step`).
  """
  hp = hparams_lib.from_config(checkpoint.load_config(workdir))
  G, D = build_models(hp)
  g_tx, d_tx = make_optimizers(hp.train)
  abstract = jax.eval_shape(lambda: init_train_state(hp, G, D, g_tx, d_tx))
  return checkpoint.load_state(workdir, abstract, step)
