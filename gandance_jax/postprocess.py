"""Samplers that post-process a trained conditional GAN with its discriminator.

* DRS, discriminator rejection sampling (Azadi et al., ICLR 2019),
* MH-GAN, Metropolis-Hastings independence sampling (Turner et al., ICML 2019),
* collaborative refinement (Liu et al., 2020: gradient steps of D's realness on a
  generator layer's activations, or on the output).

All are built from a `GANFns` bundle and called like the GANdance sampler,

  sampler = postprocess.make_drs_sampler(fns, max_logit)
  x, info = sampler({'g': g_vars, 'd': d_vars}, key, labels)     # labels int [B]

returning B samples, sample b of class labels[b], and an `info` dict of device scalars
with the acceptance rate and the extra cost (generator + discriminator evaluations per
returned sample). Every sampler is one jit-compiled program (rejection and MCMC run as
`lax.while_loop` / `lax.scan` over rounds with per-sample masks), deterministic given key.

Composability. `GANFns.latents` is any (g_vars, key, labels) -> ws function, so GANdance
guidance and truncation compose with every post-processor:

  lat = postprocess.latents_fn(G, mode='training_free', scale=1.3,
                               opposite_labels=np.arange(G.num_classes))
  fns = postprocess.gan_fns(G, D, lat)            # any conditional G / D pair
  x, info = postprocess.make_drs_sampler(fns, max_logit)(variables, key, labels)

Conditional rejection. Slot b only ever receives a proposal of its own class labels[b], and
D is evaluated with that class, so DRS / MH correct p_g(x | c) towards p_data(x | c); the
class frequencies are those of `labels` (draw them from the data's class weights). DRS
keeps one running max logit per class.

Caveat for StyleGAN2's D: its minibatch-stddev layer couples the examples of a batch, so a
sample's logit (and refinement gradient) depends slightly on the rest of the batch; the
2D toy D has no such coupling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax import guidance
from gandance_jax import sampler as sampler_lib

Array = jax.Array
Variables = Mapping[str, Any]       # {'g': generator variables, 'd': discriminator variables}
LatentsFn = Callable[[Any, Array, Array], Array]
Info = dict[str, Array]

OPTIMIZERS = ("sgd", "adam")
MH_INITS = ("real", "proposal")


# ----------------------------------------------------------------------------- model glue


@dataclasses.dataclass(frozen=True)
class GANFns:
  """Pure functions of a trained GAN (the post-processors never see the modules).

  latents:       (g_vars, key, labels int [B]) -> ws [B, num_ws, w_dim]
  synthesis:     (g_vars, ws) -> x [B, ...]
  logits:        (d_vars, x, labels int [B]) -> D's raw logits [B]
  features:      (g_vars, ws, layer int) -> activation of synthesis layer `layer` (optional)
  from_features: (g_vars, activation, ws, layer int) -> x (optional)
  """
  latents: LatentsFn
  synthesis: Callable[[Any, Array], Array]
  logits: Callable[[Any, Array, Array], Array]
  features: Callable[[Any, Array, int], Array] | None = None
  from_features: Callable[[Any, Array, Array, int], Array] | None = None


def latents_fn(G: Any, *, mode: str = "none", scale: float | Sequence[float] = 1.0,
               truncation_psi: float = 1.0, opposite_labels: Sequence[int] | None = None
               ) -> LatentsFn:
  """A traceable (g_vars, key, labels) -> ws [B, num_ws, w_dim] for a StyleGAN2-like G.

  z of sample b is `sampler_lib.sample_z(key, arange(B))[b]` (the GANdance sampler's rule).
  mode 'none': w = mapping(z, c) (truncated if psi != 1); 'training_free': GANdance Alg. 2
  with `opposite_labels` (default: all classes); 'learned': Alg. 3 with G's empty class.
  """
  guidance.check_request(G, mode, scale)
  opposite = None
  if mode == "training_free":
    opposite = np.arange(G.num_classes) if opposite_labels is None else np.asarray(
        opposite_labels)
    guidance.validate_opposite_labels(opposite, G.num_classes, "opposite_labels")
    opposite = jnp.asarray(opposite, jnp.int32)
  scale = np.asarray(scale, np.float32)

  def fn(g_vars: Any, key: Array, labels: Array) -> Array:
    z = sampler_lib.sample_z(key, jnp.arange(labels.shape[0]), G.z_dim)
    return guidance.guided_latents(G, g_vars, z, labels, mode=mode, scale=jnp.asarray(scale),
                                   opposite_labels=opposite, truncation_psi=truncation_psi)

  return fn


def gan_fns(G: Any, D: Any, latents: LatentsFn, noise_mode: str = "const") -> GANFns:
  """`GANFns` of any conditional generator / discriminator pair (networks/base.py).

  Refinement of an intermediate synthesis layer needs a generator that exposes
  `synthesis_features` / `synthesis_from_features` (the 2D toy: every layer is tappable);
  otherwise (StyleGAN2: no entry point at an intermediate block, see docs/mixtures2d.md) it
  is possible on 'ws' and 'output' only.
  """
  taps = hasattr(G, "synthesis_features") and hasattr(G, "synthesis_from_features")
  return GANFns(
      latents=latents,
      synthesis=lambda g, ws: G.apply(g, ws, noise_mode=noise_mode, method=G.synthesis),
      logits=lambda d, x, c: D.apply(d, x, c),
      features=(lambda g, ws, layer: G.apply(g, ws, layer, method=G.synthesis_features))
      if taps else None,
      from_features=(lambda g, h, ws, layer: G.apply(g, h, ws, layer,
                                                     method=G.synthesis_from_features))
      if taps else None)


# ----------------------------------------------------------------------------- calibration


@flax.struct.dataclass
class Calibration:
  """A monotone map of D's raw logits to calibrated logits log(D_cal / (1 - D_cal)).

  kind 'identity': raw logits; 'platt': a * l + b (logistic regression on held-out
  real / fake logits, Platt scaling); 'isotonic': piecewise-linear interpolation of an
  isotonic fit of P(real | l) at knots `xs` (values `ys`), clipped to [eps, 1 - eps].
  """
  kind: str = flax.struct.field(pytree_node=False)
  a: Array
  b: Array
  xs: Array
  ys: Array
  eps: float = flax.struct.field(pytree_node=False, default=1e-6)

  def __call__(self, logits: Array) -> Array:
    if self.kind == "identity":
      return logits
    if self.kind == "platt":
      return self.a * logits + self.b
    p = jnp.clip(jnp.interp(logits, self.xs, self.ys), self.eps, 1.0 - self.eps)
    return jnp.log(p) - jnp.log1p(-p)


def identity_calibration() -> Calibration:
  z = jnp.zeros((1,), jnp.float32)
  return Calibration(kind="identity", a=jnp.float32(1), b=jnp.float32(0), xs=z, ys=z)


def _balanced(real_logits: Any, fake_logits: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(logits [n], labels [n] (1 = real), weights [n]) float64; each set has total weight 1/2."""
  lr_, lf = np.asarray(real_logits, np.float64), np.asarray(fake_logits, np.float64)
  if lr_.ndim != 1 or lf.ndim != 1 or not lr_.size or not lf.size:
    raise ValueError("real_logits and fake_logits must be non-empty 1D arrays")
  x = np.concatenate([lr_, lf])
  y = np.concatenate([np.ones_like(lr_), np.zeros_like(lf)])
  wt = np.concatenate([np.full_like(lr_, 0.5 / lr_.size), np.full_like(lf, 0.5 / lf.size)])
  return x, y, wt


def fit_platt(real_logits: Any, fake_logits: Any, *, iters: int = 50,
              l2: float = 1e-6) -> Calibration:
  """Platt scaling: logistic regression P(real | l) = sigmoid(a l + b) by Newton's method.

  Args:
    real_logits, fake_logits: D's raw logits of HELD-OUT reals [n_r] and fakes [n_f]
      (classes weighted equally, i.e. the balanced real / fake mixture D is trained on:
      each set is reweighted to total weight 1/2).
    iters: Newton iterations (float64 on the host; converges in ~10).
    l2: ridge on (a, b) for separable data.
  """
  x, y, wt = _balanced(real_logits, fake_logits)
  feats = np.stack([x, np.ones_like(x)], axis=1)  # [n, 2]
  theta = np.array([1.0, 0.0])
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(-(feats @ theta)))
    grad = feats.T @ (wt * (p - y)) + l2 * theta
    hess = (feats * (wt * p * (1 - p))[:, None]).T @ feats + l2 * np.eye(2)
    theta = theta - np.linalg.solve(hess, grad)
  z = jnp.zeros((1,), jnp.float32)
  return Calibration(kind="platt", a=jnp.float32(theta[0]), b=jnp.float32(theta[1]),
                     xs=z, ys=z)


def _pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Pool-adjacent-violators: the non-decreasing weighted least-squares fit of y."""
  vals, wts, sizes = [], [], []
  for yi, wi in zip(y, w):
    vals.append(yi), wts.append(wi), sizes.append(1)
    while len(vals) > 1 and vals[-2] > vals[-1]:
      v2, w2, s2 = vals.pop(), wts.pop(), sizes.pop()
      v1, w1, s1 = vals.pop(), wts.pop(), sizes.pop()
      vals.append((v1 * w1 + v2 * w2) / (w1 + w2)), wts.append(w1 + w2), sizes.append(s1 + s2)
  return np.repeat(vals, sizes)


def fit_isotonic(real_logits: Any, fake_logits: Any, *, eps: float = 1e-6) -> Calibration:
  """Isotonic regression of P(real | l) on held-out logits (balanced as in `fit_platt`)."""
  x, y, wt = _balanced(real_logits, fake_logits)
  order = np.argsort(x, kind="stable")
  x, y, wt = x[order], y[order], wt[order]
  # Tied logits get one pooled value (weighted mean) before PAV.
  ux, inv = np.unique(x, return_inverse=True)
  wsum = np.bincount(inv, weights=wt)
  ymean = np.bincount(inv, weights=wt * y) / wsum
  fit = _pav(ymean, wsum)
  return Calibration(kind="isotonic", a=jnp.float32(1), b=jnp.float32(0),
                     xs=jnp.asarray(ux, jnp.float32), ys=jnp.asarray(fit, jnp.float32),
                     eps=eps)


# ----------------------------------------------------------------------------- core maths


def drs_f(logits: Array, max_logit: Array, eps: float = 1e-6) -> Array:
  """DRS's F before the shift: F = d - log(1 - exp(d - eps)), d = logit - max_logit.

  With D = sigmoid(logit) optimal, exp(logit) = p_data / p_g, so exp(d) is the rejection
  sampling acceptance ratio p_data / (M p_g) and F its logit (up to eps). d is clipped at 0
  (a logit above the running max is accepted as if it were the max).
  """
  d = jnp.minimum(logits - max_logit, 0.0)
  return d - jnp.log1p(-jnp.exp(d - eps))


def drs_acceptance(logits: Array, max_logit: Array, gamma: Array | float,
                   eps: float = 1e-6) -> Array:
  """DRS acceptance probability sigmoid(F - gamma) (Azadi et al., Alg. 1)."""
  return jax.nn.sigmoid(drs_f(logits, max_logit, eps) - gamma)


def mh_acceptance(score_current: Array, score_proposal: Array) -> Array:
  """MH-GAN independence-sampler acceptance from calibrated logits s = log(D / (1 - D)).

  alpha = min(1, (1/D(x_k) - 1) / (1/D(x') - 1)) = min(1, exp(s' - s_k)).
  """
  return jnp.exp(jnp.minimum(score_proposal - score_current, 0.0))


# ----------------------------------------------------------------------------- samplers


class PostSampler:
  """``sampler(variables, key, labels) -> (x [B, ...], info)``; one jitted program.

  variables: {'g': generator variables, 'd': discriminator variables}. Array state
  (calibration, running max logits) is passed to the program as arguments, so a sampler
  with new state reuses the compiled program.
  """

  def __init__(self, name: str, fn: Callable[..., tuple[Array, Info]],
               num_classes: int | None = None, **state: Any):
    self.name = name
    self._fn = jax.jit(fn)
    self.num_classes = num_classes
    self.state = state

  def __call__(self, variables: Variables, key: Array, labels: Any) -> tuple[Array, Info]:
    if "g" not in variables or "d" not in variables:
      raise ValueError("variables must be {'g': generator variables, 'd': discriminator "
                       "variables}")
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] == 0 or not jnp.issubdtype(labels.dtype,
                                                                       jnp.integer):
      raise ValueError(f"labels must be a non-empty int vector [B], got {labels.shape} "
                       f"{labels.dtype}")
    if self.num_classes is not None and not isinstance(labels, jax.core.Tracer):
      lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
      if lo < 0 or hi >= self.num_classes:
        raise ValueError(f"labels must be real classes in [0, {self.num_classes}) for "
                         f"{self.name}, got range [{lo}, {hi}]")
    return self._fn(variables, key, labels.astype(jnp.int32), **self.state)


def make_plain_sampler(fns: GANFns) -> PostSampler:
  """x = synthesis(latents(...)): the proposal distribution itself (no D), for comparison."""
  def fn(variables, key, labels):
    ws = fns.latents(variables["g"], key, labels)
    return fns.synthesis(variables["g"], ws), {"evals_per_sample": jnp.float32(1)}
  return PostSampler("plain", fn)


def class_max_logits(logits: Array, labels: Array, num_classes: int) -> Array:
  """[num_classes] max logit per class (-inf for absent classes)."""
  return jax.ops.segment_max(logits, labels, num_segments=num_classes)


def drs_burn_in(fns: GANFns, variables: Variables, key: Array, labels: Any, num_classes: int,
                calibration: Calibration | None = None) -> Array:
  """DRS burn-in: per-class max (calibrated) logit over proposals of `labels` [N].

  Classes absent from `labels` get the overall max. Returns float32 [num_classes].
  """
  labels = jnp.asarray(labels, jnp.int32)
  cal = identity_calibration() if calibration is None else calibration

  @jax.jit
  def run(variables, key, labels, cal):
    x = fns.synthesis(variables["g"], fns.latents(variables["g"], key, labels))
    s = cal(fns.logits(variables["d"], x, labels))
    m = class_max_logits(s, labels, num_classes)
    return jnp.where(jnp.isfinite(m), m, jnp.max(s))

  return run(variables, key, labels, cal)


def match_by_class(accept: Array, empty: Array, labels: Array, num_classes: int
                   ) -> tuple[Array, Array]:
  """Hands accepted candidates of class c to empty slots of class c, both in index order.

  Args:
    accept: bool [B], candidate b (of class labels[b]) was accepted.
    empty: bool [B], slot b still needs a sample.
    labels: int [B] in [0, num_classes).
  Returns:
    (take bool [B]: slot b receives a candidate, src int [B]: which one; valid where take).
    The k-th empty slot of class c (by index) gets the k-th accepted candidate of class c.
  """
  b = labels.shape[0]
  classes = jnp.arange(num_classes)
  key_a = jnp.where(accept, labels, num_classes)   # sentinel num_classes sorts last
  order_a = jnp.argsort(key_a, stable=True)
  sorted_a = key_a[order_a]
  start_a = jnp.searchsorted(sorted_a, classes, side="left")
  count_a = jnp.searchsorted(sorted_a, classes, side="right") - start_a
  key_e = jnp.where(empty, labels, num_classes)
  order_e = jnp.argsort(key_e, stable=True)
  start_e = jnp.searchsorted(key_e[order_e], classes, side="left")
  position_e = jnp.zeros((b,), jnp.int32).at[order_e].set(jnp.arange(b, dtype=jnp.int32))
  rank_e = position_e - start_e[labels]
  take = empty & (rank_e < count_a[labels])
  src = order_a[jnp.clip(start_a[labels] + rank_e, 0, b - 1)]
  return take, src


def make_drs_sampler(fns: GANFns, max_logit: Any, *, percentile: float = 95.0,
                     eps: float = 1e-6, max_rounds: int = 64,
                     calibration: Calibration | None = None) -> PostSampler:
  """Discriminator rejection sampling for B class-labelled slots (Azadi et al. 2019, Alg. 1).

  Every round draws B fresh proposals (proposal b of class labels[b]) and tests each:
    max_logit[c] <- max(max_logit[c], max logit of class c in this round)   (running max)
    F = d - log(1 - exp(d - eps)),  d = logit - max_logit[c]
    gamma = the `percentile`-th percentile of F over this round's B proposals
    accept with probability sigmoid(F - gamma).
  Accepted proposals of class c fill the still-empty slots of class c (`match_by_class`;
  proposals of one class are exchangeable, so which slot gets which does not change the
  distribution, and no accepted sample is wasted on an already filled slot). Rounds repeat
  until every slot is filled or `max_rounds`; still-empty slots take their own last
  proposal (reported as `fallback_fraction`). Labels must be real classes [0, num_classes).

  Args:
    fns: the GAN (its `latents` may be guided / truncated).
    max_logit: [num_classes] burn-in max logits (`drs_burn_in`).
    percentile: gamma's percentile (higher = stricter; 95 in the collaborative-sampling
      code's DRS baseline).
    eps: DRS's epsilon.
    max_rounds: bound on rounds.
    calibration: optional map applied to D's logits first (default: raw logits, as DRS).
  Returns:
    a `PostSampler`; info: acceptance_rate (accepted / all proposals), live_proposals_per
    _sample and evals_per_sample (both = proposals drawn per returned sample = rounds: every
    lane of every round is a candidate), rounds, fallback_fraction, max_logit (the updated
    running max, to carry over to the next call).
  """
  if not 0.0 <= percentile <= 100.0:
    raise ValueError(f"percentile must be in [0, 100], got {percentile}")
  if not isinstance(max_rounds, int) or max_rounds <= 0:
    raise ValueError(f"max_rounds must be a positive int, got {max_rounds!r}")
  max_logit = jnp.asarray(max_logit, jnp.float32)
  if max_logit.ndim != 1:
    raise ValueError(f"max_logit must be [num_classes], got shape {max_logit.shape}")
  num_classes = max_logit.shape[0]

  def fn(variables, key, labels, max_logit, cal):
    g, d = variables["g"], variables["d"]
    b = labels.shape[0]
    expand = lambda m, x: m.reshape((b,) + (1,) * (x.ndim - 1))

    def propose(r):
      k = jax.random.fold_in(key, r)
      x = fns.synthesis(g, fns.latents(g, jax.random.fold_in(k, 0), labels))
      u = jax.random.uniform(jax.random.fold_in(k, 1), (b,))
      return x, cal(fns.logits(d, x, labels)), u

    x_shape = jax.eval_shape(lambda: propose(0)[0])
    zeros_x = jnp.zeros(x_shape.shape, x_shape.dtype)

    def cond(carry):
      r, filled = carry[0], carry[1]
      return (r < max_rounds) & ~jnp.all(filled)

    def body(carry):
      r, filled, out, last, m, n_acc = carry
      x, s, u = propose(r)
      m = jnp.maximum(m, class_max_logits(s, labels, num_classes))
      f = drs_f(s, m[labels], eps)
      gamma = jnp.percentile(f, percentile)
      accept = u < jax.nn.sigmoid(f - gamma)
      take, src = match_by_class(accept, ~filled, labels, num_classes)
      out = jnp.where(expand(take, x), x[src], out)
      last = jnp.where(expand(~filled, x), x, last)
      return r + 1, filled | take, out, last, m, n_acc + jnp.sum(accept)

    init = (jnp.int32(0), jnp.zeros((b,), bool), zeros_x, zeros_x, max_logit, jnp.int32(0))
    r, filled, out, last, m, n_acc = jax.lax.while_loop(cond, body, init)
    out = jnp.where(expand(filled, out), out, last)
    rounds = r.astype(jnp.float32)
    info = {
        "acceptance_rate": n_acc / jnp.maximum(r * b, 1),
        "live_proposals_per_sample": rounds,
        "evals_per_sample": rounds,
        "rounds": r,
        "fallback_fraction": jnp.mean(~filled),
        "max_logit": m,
    }
    return out, info

  cal = identity_calibration() if calibration is None else calibration
  return PostSampler("drs", fn, num_classes=num_classes, max_logit=max_logit, cal=cal)


@flax.struct.dataclass
class RealPool:
  """Real samples grouped by class, to start MH chains from a real point of the slot's class.

  points [N, ...] sorted by label; starts / counts int32 [num_classes].
  """
  points: Array
  starts: Array
  counts: Array

  @classmethod
  def from_arrays(cls, points: Any, labels: Any, num_classes: int) -> "RealPool":
    points, labels = np.asarray(points), np.asarray(labels)
    if points.shape[0] != labels.shape[0]:
      raise ValueError("points and labels must have the same length")
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    if np.any(counts == 0):
      raise ValueError(f"the real pool has no sample of classes "
                       f"{np.flatnonzero(counts == 0).tolist()}")
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return cls(points=jnp.asarray(points[order]), starts=jnp.asarray(starts, jnp.int32),
               counts=jnp.asarray(counts, jnp.int32))

  def draw(self, key: Array, labels: Array) -> Array:
    """One uniformly drawn real point of each label's class: [B, ...]."""
    u = jax.random.uniform(key, labels.shape)
    idx = self.starts[labels] + jnp.minimum(
        jnp.floor(u * self.counts[labels]).astype(jnp.int32), self.counts[labels] - 1)
    return self.points[idx]


def make_mh_sampler(fns: GANFns, calibration: Calibration, *, k: int = 20,
                    init: str = "real", real_pool: RealPool | None = None,
                    max_restarts: int = 3) -> PostSampler:
  """MH-GAN: an independence Metropolis-Hastings chain per output slot (Turner et al. 2019).

  The target is p_data(x | c) and the proposal the generator's p_g(x | c); with a
  calibrated D, the density ratio is D / (1 - D) = exp(s), s the calibrated logit, and a
  move from x_k to the proposal x' is accepted with min(1, exp(s' - s_k)) (`mh_acceptance`).

  init 'real' (the paper's choice, no burn-in): each chain starts at a real point of its
  class (drawn from `real_pool`) and runs k proposals. A chain that never left the real
  point is restarted from a fresh real point (up to `max_restarts` times, as the paper
  restarts such chains); if it still never moved, the slot takes its last proposal
  (`fallback_fraction`), so no real point is ever returned.
  init 'proposal': the chain starts at its first proposal and runs k - 1 more (no real data
  needed; biased towards the generator for small k).

  Returns:
    a `PostSampler`; info: acceptance_rate (accepted moves / proposals of live chains),
    live_proposals_per_sample (MH proposals of chains that were running), evals_per_sample
    (G + D evaluations per returned sample incl. masked lanes), segments,
    fallback_fraction, mean_calibrated_logit of the returned samples.
  """
  if init not in MH_INITS:
    raise ValueError(f"init must be one of {list(MH_INITS)}, got {init!r}")
  if not isinstance(k, int) or k < 1 or (init == "proposal" and k < 2):
    raise ValueError(f"k must be an int >= 1 (>= 2 with init='proposal'), got {k!r}")
  if init == "real" and real_pool is None:
    raise ValueError("init='real' needs real_pool (RealPool.from_arrays(points, labels, C))")
  if not isinstance(max_restarts, int) or max_restarts < 0:
    raise ValueError(f"max_restarts must be a non-negative int, got {max_restarts!r}")

  def fn(variables, key, labels, cal, pool):
    g, d = variables["g"], variables["d"]
    b = labels.shape[0]
    score = lambda x: cal(fns.logits(d, x, labels))

    def proposal(seg, j):
      kk = jax.random.fold_in(jax.random.fold_in(key, seg), j + 1)
      x = fns.synthesis(g, fns.latents(g, jax.random.fold_in(kk, 0), labels))
      return x, score(x), jax.random.uniform(jax.random.fold_in(kk, 1), (b,))

    def expand(mask, x):
      return mask.reshape((b,) + (1,) * (x.ndim - 1))

    def run_segment(seg, state, steps):
      # state: x, s, at_real [B], active [B] (chains that move in this segment), stats.
      def step(carry, j):
        x, s, at_real, last, n_live, n_acc = carry
        xp, sp, u = proposal(seg, j)
        accept = (u < mh_acceptance(s, sp)) & active
        x = jnp.where(expand(accept, xp), xp, x)
        s = jnp.where(accept, sp, s)
        last = jnp.where(expand(active, xp), xp, last)
        return (x, s, at_real & ~accept, last, n_live + jnp.sum(active),
                n_acc + jnp.sum(accept)), None
      active = state[2] if init == "real" else jnp.ones((b,), bool)
      first = 0 if init == "real" else 1
      state, _ = jax.lax.scan(step, state, jnp.arange(first, first + steps))
      return state

    if init == "proposal":
      x0, s0, _ = proposal(0, 0)
      state = (x0, s0, jnp.zeros((b,), bool), x0, jnp.int32(0), jnp.int32(0))
      x, s, _, _, n_live, n_acc = run_segment(0, state, k - 1)
      segments, fallback = jnp.int32(1), jnp.float32(0)
      evals = jnp.float32(k)
    else:
      x_shape = jax.eval_shape(lambda: proposal(0, 0)[0])
      zeros_x = jnp.zeros(x_shape.shape, x_shape.dtype)

      def cond(c):
        seg, (_, _, at_real, _, _, _) = c
        return (seg <= max_restarts) & jnp.any(at_real)

      def body(c):
        seg, (x, s, at_real, last, n_live, n_acc) = c
        # (Re)start the chains still at a real point from a fresh real point of their class.
        xr = pool.draw(jax.random.fold_in(jax.random.fold_in(key, seg), 0), labels)
        x = jnp.where(expand(at_real, xr), xr, x)
        s = jnp.where(at_real, score(x), s)
        return seg + 1, run_segment(seg, (x, s, at_real, last, n_live, n_acc), k)

      state = (zeros_x, jnp.zeros((b,), jnp.float32), jnp.ones((b,), bool), zeros_x,
               jnp.int32(0), jnp.int32(0))
      segments, (x, s, at_real, last, n_live, n_acc) = jax.lax.while_loop(
          cond, body, (jnp.int32(0), state))
      x = jnp.where(expand(at_real, x), last, x)
      s = jnp.where(at_real, score(x), s)
      fallback = jnp.mean(at_real)
      # k proposals (+ 1 D evaluation of the real start) per segment, on every lane.
      evals = segments.astype(jnp.float32) * k
    info = {
        "acceptance_rate": n_acc / jnp.maximum(n_live, 1),
        "live_proposals_per_sample": n_live / b,
        "evals_per_sample": evals,
        "segments": segments,
        "fallback_fraction": fallback,
        "mean_calibrated_logit": jnp.mean(s),
    }
    return x, info

  pool = real_pool if real_pool is not None else RealPool(
      points=jnp.zeros((1, 1)), starts=jnp.zeros((1,), jnp.int32),
      counts=jnp.ones((1,), jnp.int32))
  return PostSampler("mh", fn, cal=calibration, pool=pool)


def make_refine_sampler(fns: GANFns, *, layer: str | int = "output", steps: int = 10,
                        step_size: float = 0.05, optimizer: str = "adam",
                        target_logit: float | None = None, keep_best: bool = True
                        ) -> PostSampler:
  """Collaborative refinement (Liu et al. 2020): gradient ascent of D's logit on a layer.

  The generator proposes; then `steps` updates of the chosen activation v (per sample),
  v <- v + step_size * direction(dD/dv) ('sgd': the gradient; 'adam': Adam's normalised
  step, per element), maximise D's logit of the resulting sample. A sample stops moving
  once its logit reaches `target_logit` (None: never stops; e.g. the mean logit of held-out
  reals = "classified as real"). With `keep_best` the iterate of highest logit along the
  trajectory is returned (the reference code's "optimal search").

  Args:
    layer: 'ws' (the latents), 'output' (the sample itself) or an int, the synthesis layer
      whose activation is refined (needs `fns.features` / `fns.from_features`).
  Returns:
    a `PostSampler`; info: logit_before, logit_after (means), reached_target fraction,
    evals_per_sample (D forward+backward passes through the layer's tail, = steps + 1).
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
  if not isinstance(steps, int) or steps < 0:
    raise ValueError(f"steps must be a non-negative int, got {steps!r}")
  if not step_size > 0:
    raise ValueError(f"step_size must be > 0, got {step_size}")
  if isinstance(layer, str):
    if layer not in ("ws", "output"):
      raise ValueError(f"layer must be 'ws', 'output' or a synthesis layer index, got {layer!r}")
  elif fns.features is None or fns.from_features is None:
    raise ValueError("refinement of an intermediate layer needs GANFns.features and "
                     ".from_features (`gan_fns` of a generator with synthesis_features, "
                     "e.g. the toy)")
  beta1, beta2, adam_eps = 0.9, 0.999, 1e-8

  def fn(variables, key, labels):
    g, d = variables["g"], variables["d"]
    ws = fns.latents(g, key, labels)
    if layer == "ws":
      v0, tail = ws, lambda v: fns.synthesis(g, v)
    elif layer == "output":
      v0, tail = fns.synthesis(g, ws), lambda v: v
    else:
      v0, tail = fns.features(g, ws, layer), lambda v: fns.from_features(g, v, ws, layer)
    b = labels.shape[0]
    expand = lambda m, v: m.reshape((b,) + (1,) * (v.ndim - 1))

    def value_and_grad(v):
      # Samples are independent (no batch coupling in D), so the vjp of ones gives each
      # sample's own gradient.
      s, vjp = jax.vjp(lambda v_: fns.logits(d, tail(v_), labels), v)
      return s, vjp(jnp.ones_like(s))[0]

    def step(carry, t):
      v, m1, m2, best_v, best_s, s0 = carry
      s, grad = value_and_grad(v)
      s0 = jnp.where(t == 0, s, s0)
      better = s > best_s
      best_s = jnp.where(better, s, best_s)
      best_v = jnp.where(expand(better, v), v, best_v)
      active = jnp.ones((b,), bool) if target_logit is None else s < target_logit
      if optimizer == "sgd":
        delta = grad
      else:
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * jnp.square(grad)
        tt = (t + 1).astype(jnp.float32)
        delta = (m1 / (1 - beta1 ** tt)) / (jnp.sqrt(m2 / (1 - beta2 ** tt)) + adam_eps)
      v = jnp.where(expand(active, v), v + step_size * delta, v)
      return (v, m1, m2, best_v, best_s, s0), None

    zeros = jnp.zeros_like(v0)
    init = (v0, zeros, zeros, v0, jnp.full((b,), -jnp.inf), jnp.zeros((b,)))
    (v, _, _, best_v, best_s, s0), _ = jax.lax.scan(step, init, jnp.arange(steps))
    x_last = tail(v)
    s_last = fns.logits(d, x_last, labels)
    if keep_best:
      better = s_last > best_s
      final_v = jnp.where(expand(better, v), v, best_v)
      x = tail(final_v)
      s_final = jnp.maximum(s_last, best_s)
    else:
      x, s_final = x_last, s_last
    if steps == 0:
      s0 = s_last
    info = {
        "logit_before": jnp.mean(s0),
        "logit_after": jnp.mean(s_final),
        "reached_target": (jnp.float32(jnp.nan) if target_logit is None else
                           jnp.mean(s_final >= target_logit)),
        "evals_per_sample": jnp.float32(steps + 1),
    }
    return x, info

  return PostSampler(f"refine_{layer}", fn)
