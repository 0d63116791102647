"""A small, self-contained, jit-compiled trainer for the conditional 2D mixture toys.

  models = toy_train.train(toy_train.ToyConfig(data="mixture_8gaussians", loss="san",
                                               empty_class=True, label_reset_prob=0.15))
  points = models.G.apply(models.g_vars, ws, method=models.G.synthesis)

One training step (StyleGAN2's order: D then G, both every step, one Adam each):

  labels  <- batch labels, each reset to the empty id with prob. `label_reset_prob`
             (GANdance Alg. 1; the SAME reset labels condition D on reals, D on fakes and G)
  D step  'ns':  softplus(D(G(z), c)) + softplus(-D(x, c))  [+ r1_gamma / 2 * ||dD/dx||^2]
          'san': `san.discriminator_loss` on the (fun, dir) outputs (hinge + direction term)
  G step  'ns':  softplus(-D(G(z), c));  'san': `san.generator_loss` (-D for hinge)
  w_avg   <- lerp(mean_b w_b, w_avg, w_avg_beta)   (truncation centre, as StyleGAN2)

Real points are drawn inside the jitted step from the mixture (same distribution as
`mixtures2d.MixtureSource`, but with jax.random so that a whole chunk of steps is one
`lax.scan` with no host round trip). Everything is a function of `config.seed`: the same
config gives bit-identical parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gandance_jax.data import mixtures2d
from gandance_jax.networks import san as san_lib
from gandance_jax.networks import toy2d
from gandance_jax.train import losses

Array = jax.Array
LOSSES = ("ns", "san")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  """Everything that defines a toy run. `validate()` names the bad field."""
  data: str = "mixture_8gaussians"    # mixtures2d.get_spec name.
  steps: int = 2000                   # Training steps (one D and one G update each).
  batch_size: int = 256
  loss: str = "ns"                    # 'ns' (non-saturating logistic) or 'san'.
  san_base: str = "hinge"             # SAN base loss on the function part: 'hinge'/'logistic'.
  label_reset_prob: float = 0.0       # GANdance label reset p (needs empty_class).
  empty_class: bool = False           # Extra "empty" class id num_classes in G and D.
  lr_g: float = 1e-3
  lr_d: float = 1e-3
  beta1: float = 0.5
  beta2: float = 0.99
  r1_gamma: float = 0.0               # R1 weight on reals (in the networks' O(1) coordinates).
  z_dim: int = 8
  w_dim: int = 32
  mapping_layers: int = 2
  mapping_lr_multiplier: float = 1.0  # StyleGAN2's is 0.01.
  g_hidden: int = 128
  g_layers: int = 3
  d_hidden: int = 128
  d_layers: int = 3
  cmap_dim: int = 32
  w_avg_beta: float = 0.995
  seed: int = 0
  chunk: int = 500                    # Steps per jitted lax.scan call.

  def validate(self) -> "ToyConfig":
    if self.data not in ("mixture_8gaussians", "mixture_25gaussians"):
      raise ValueError(f"data must be 'mixture_8gaussians' or 'mixture_25gaussians', "
                       f"got {self.data!r}")
    if self.loss not in LOSSES:
      raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
    if self.san_base not in san_lib.BASE_LOSSES:
      raise ValueError(f"san_base must be one of {list(san_lib.BASE_LOSSES)}, "
                       f"got {self.san_base!r}")
    losses.check_reset_prob(self.label_reset_prob, self.empty_class)
    for field in ("steps", "batch_size", "z_dim", "w_dim", "mapping_layers", "g_hidden",
                  "g_layers", "d_hidden", "d_layers", "cmap_dim", "chunk"):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{field} must be a positive int, got {v!r}")
    for field in ("lr_g", "lr_d", "mapping_lr_multiplier"):
      if not getattr(self, field) > 0:
        raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
    for field in ("beta1", "beta2", "w_avg_beta"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(f"{field} must be in [0, 1), got {getattr(self, field)}")
    if self.r1_gamma < 0:
      raise ValueError(f"r1_gamma must be >= 0, got {self.r1_gamma}")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
    return self


@dataclasses.dataclass
class ToyModels:
  """A trained toy: modules, variables, the mixture and the loss history."""
  config: ToyConfig
  spec: mixtures2d.MixtureSpec
  G: toy2d.Toy2DGenerator
  D: toy2d.Toy2DDiscriminator
  g_vars: dict[str, Any]
  d_vars: dict[str, Any]
  history: dict[str, np.ndarray]       # per-chunk means: 'step', 'loss_d', 'loss_g'


@flax.struct.dataclass
class _State:
  step: Array
  g_params: Any
  g_buffers: Any
  d_params: Any
  g_opt: Any
  d_opt: Any


def data_scale(spec: mixtures2d.MixtureSpec) -> float:
  """The coordinate scale the networks divide out (largest |centre coordinate|)."""
  return float(np.max(np.abs(spec.centres)))


def build_models(config: ToyConfig, spec: mixtures2d.MixtureSpec
                 ) -> tuple[toy2d.Toy2DGenerator, toy2d.Toy2DDiscriminator]:
  scale = data_scale(spec)
  G = toy2d.Toy2DGenerator(
      z_dim=config.z_dim, w_dim=config.w_dim, num_classes=spec.num_classes,
      empty_class=config.empty_class, mapping_layers=config.mapping_layers,
      mapping_lr_multiplier=config.mapping_lr_multiplier, w_avg_beta=config.w_avg_beta, hidden=config.g_hidden, num_layers=config.g_layers,
      output_scale=scale)
  D = toy2d.Toy2DDiscriminator(
      num_classes=spec.num_classes, empty_class=config.empty_class, hidden=config.d_hidden,
      num_layers=config.d_layers, cmap_dim=config.cmap_dim, input_scale=scale,
      head="san" if config.loss == "san" else "projection")
  return G, D


def _labels_from_uniform(spec: mixtures2d.MixtureSpec, u: Array) -> Array:
  # Inverse-CDF draw of the class: one uniform per label (cheaper to compile than the
  # Gumbel trick of jax.random.categorical, and the step's compile time is mostly RNG).
  cdf = jnp.asarray(np.cumsum(spec.weights)[:-1], jnp.float32)
  return jnp.searchsorted(cdf, u, side="right").astype(jnp.int32)


def _points(spec: mixtures2d.MixtureSpec, labels: Array, noise: Array) -> Array:
  return jnp.asarray(spec.centres, jnp.float32)[labels] + spec.std * noise


def _optimizer(lr: float, config: ToyConfig) -> optax.GradientTransformation:
  return optax.adam(lr, b1=config.beta1, b2=config.beta2, eps=1e-8)


def _d_loss(config: ToyConfig, D: toy2d.Toy2DDiscriminator, d_params: Any, reals: Array,
            fakes: Array, labels: Array) -> tuple[Array, dict[str, Array]]:
  v = {"params": d_params}
  if config.loss == "san":
    fun_r, dir_r = D.apply(v, reals, labels, method=D.san_outputs)
    fun_f, dir_f = D.apply(v, fakes, labels, method=D.san_outputs)
    loss, _ = san_lib.discriminator_loss(fun_r, dir_r, fun_f, dir_f, config.san_base)
    real_logits = fun_r
  else:
    real_logits = D.apply(v, reals, labels)
    fake_logits = D.apply(v, fakes, labels)
    loss = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
  if config.r1_gamma > 0:
    # R1 in the networks' coordinates (points / input_scale), so gamma is scale-free.
    s = D.input_scale
    grads = jax.grad(lambda u: jnp.sum(D.apply(v, u * s, labels)))(reals / s)
    loss = loss + 0.5 * config.r1_gamma * jnp.mean(jnp.sum(jnp.square(grads), axis=1))
  return loss, {"real_logit": jnp.mean(real_logits)}


def _g_loss(config: ToyConfig, fake_logits: Array) -> Array:
  if config.loss == "san":
    return san_lib.generator_loss(fake_logits, config.san_base)
  return jnp.mean(jax.nn.softplus(-fake_logits))


def _train_step(config: ToyConfig, spec: mixtures2d.MixtureSpec, G: toy2d.Toy2DGenerator,
                D: toy2d.Toy2DDiscriminator, g_tx: optax.GradientTransformation,
                d_tx: optax.GradientTransformation, root: Array, state: _State,
                _: Any) -> tuple[_State, dict[str, Array]]:
  key = jax.random.fold_in(root, state.step)
  k_u, k_n = jax.random.split(key)
  b = config.batch_size
  # Two RNG calls per step (compile time on CPU grows with every threefry call):
  # uniforms [label, reset], normals [point noise (2), z for D (z_dim), z for G (z_dim)].
  u = jax.random.uniform(k_u, (2, b))
  normals = jax.random.normal(k_n, (b, 2 + 2 * G.z_dim))
  labels = _labels_from_uniform(spec, u[0])
  reals = _points(spec, labels, normals[:, :2])
  labels = losses.reset_labels(None, labels, config.label_reset_prob, G.empty_label,
                               uniform=u[1])
  g_vars = {"params": state.g_params, "buffers": state.g_buffers}

  # D step against the current G.
  z = normals[:, 2:2 + G.z_dim]
  fakes = jax.lax.stop_gradient(G.apply(g_vars, z, labels))
  (loss_d, _), d_grads = jax.value_and_grad(
      functools.partial(_d_loss, config, D), has_aux=True)(state.d_params, reals, fakes,
                                                            labels)
  d_updates, d_opt = d_tx.update(d_grads, state.d_opt, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  # G step against the updated D.
  z = normals[:, 2 + G.z_dim:]

  def g_loss_fn(g_params):
    v = {"params": g_params, "buffers": state.g_buffers}
    w = G.apply(v, z, labels, broadcast=False, method=G.mapping)
    ws = jnp.broadcast_to(w[:, None, :], (b, G.num_ws, G.w_dim))
    x = G.apply(v, ws, method=G.synthesis)
    return _g_loss(config, D.apply({"params": d_params}, x, labels)), w

  (loss_g, w), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
  g_updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  w_avg = state.g_buffers["mapping_network"]["w_avg"]
  w_mean = jnp.mean(jax.lax.stop_gradient(w), axis=0)
  w_avg = w_mean + (w_avg - w_mean) * G.w_avg_beta
  g_buffers = {"mapping_network": {"w_avg": w_avg}}
  state = _State(step=state.step + 1, g_params=g_params, g_buffers=g_buffers,
                 d_params=d_params, g_opt=g_opt, d_opt=d_opt)
  return state, {"loss_d": loss_d, "loss_g": loss_g}


@functools.partial(jax.jit, static_argnums=(0, 3))
def _run_chunk(static: ToyConfig, state: _State, key: Array, n: int
               ) -> tuple[_State, dict[str, Array]]:
  """n training steps as one lax.scan; `static` is the config with seed / steps zeroed, so
  runs that differ only in those share the compiled program."""
  spec = mixtures2d.get_spec(static.data)
  G, D = build_models(static, spec)
  g_tx, d_tx = _optimizer(static.lr_g, static), _optimizer(static.lr_d, static)
  step_fn = functools.partial(_train_step, static, spec, G, D, g_tx, d_tx, key)
  state, metrics = jax.lax.scan(step_fn, state, None, length=n)
  return state, jax.tree.map(jnp.mean, metrics)


def train(config: ToyConfig, *, verbose: bool = False) -> ToyModels:
  """Trains a conditional toy GAN; deterministic given `config` (see the module docstring)."""
  config.validate()
  spec = mixtures2d.get_spec(config.data)
  G, D = build_models(config, spec)
  root = jax.random.key(config.seed)
  k_g, k_d, k_train = jax.random.split(root, 3)
  g_vars = toy2d.init_generator(G, k_g)
  d_vars = toy2d.init_discriminator(D, k_d)
  g_tx, d_tx = _optimizer(config.lr_g, config), _optimizer(config.lr_d, config)
  state = _State(step=jnp.zeros((), jnp.int32), g_params=g_vars["params"],
                 g_buffers=g_vars["buffers"], d_params=d_vars["params"],
                 g_opt=g_tx.init(g_vars["params"]), d_opt=d_tx.init(d_vars["params"]))
  static = dataclasses.replace(config, steps=1, seed=0)

  history: dict[str, list[float]] = {"step": [], "loss_d": [], "loss_g": []}
  done = 0
  while done < config.steps:
    n = min(config.chunk, config.steps - done)
    state, metrics = _run_chunk(static, state, k_train, n)
    done += n
    history["step"].append(done)
    for k in ("loss_d", "loss_g"):
      history[k].append(float(metrics[k]))
    if verbose:
      print(f"  step {done:6d}  loss_d {history['loss_d'][-1]:.4f}  "
            f"loss_g {history['loss_g'][-1]:.4f}", flush=True)
  g_vars = {"params": state.g_params, "buffers": state.g_buffers}
  d_vars = {"params": state.d_params}
  return ToyModels(config=config, spec=spec, G=G, D=D, g_vars=g_vars, d_vars=d_vars,
                   history={k: np.asarray(v) for k, v in history.items()})


def class_labels(spec: mixtures2d.MixtureSpec, seed: int, n: int) -> np.ndarray:
  """int32 [n] labels drawn from the mixture's class weights (numpy, deterministic)."""
  rng = np.random.default_rng(seed)
  return rng.choice(spec.num_classes, size=n, p=spec.weights).astype(np.int32)


def num_params(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
