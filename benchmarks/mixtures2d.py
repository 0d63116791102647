"""GANdance vs. discriminator-based post-processing on the conditional 2D mixtures.

  python benchmarks/mixtures2d.py                      # both mixtures, markdown table
  python benchmarks/mixtures2d.py --steps=1000 --n=10000 --json=/tmp/mix.json

For each mixture (imbalanced 8 Gaussians, 25 Gaussians) it trains three conditional toy
GANs with `gandance_jax.train.toy` (same seed, same number of steps):

  A  'ns'   non-saturating loss, no empty class          (plain / truncation / training-free
                                                           GANdance / DRS / MH / refinement)
  B  'ns'   + empty class, label reset p                  (learned GANdance)
  C  'san'  SAN loss + empty class, label reset p         (SAN plain / + GANdance)

then draws `n` samples per method, labels from the data's class weights (the same labels
and key for every row), and prints one table: the benchmark metrics of
`mixtures2d.evaluate` (fraction of good samples, KL over modes, JS over modes + an off-mode
bin), measured samples/s (second call, after compilation; CPU timings are noisy when the
machine is shared), the acceptance rate, the proposals the algorithm needed per returned
sample (DRS: per slot until accepted; MH: chain proposals incl. restarts) and the G+D
evaluations the fixed-shape jitted program actually computes per returned sample (all B
lanes run every round / segment; refinement: one D forward+backward per step).

The post-processors use model A's final D as is. Their held-out calibration set is 4000
real points and 4000 proposals (labels from the class weights), disjoint from the
evaluation draw; DRS's burn-in is 8 x 1250 proposals (per-class max logit).
Refinement settings (Adam, 20 steps, step 0.002 on activations / ws, 0.02 on points) were
picked on the 8 Gaussians from a small sweep and used unchanged on the 25 Gaussians.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax import postprocess as pp
from gandance_jax.train import toy as toy_train
from gandance_jax.data import mixtures2d
from gandance_jax import sampler as sampler_lib

MIXTURES = ("mixture_8gaussians", "mixture_25gaussians")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  """(result of the 2nd call, its wall time); the 1st call compiles."""
  jax.block_until_ready(fn())
  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t


def _row(name: str, x: Any, seconds: float, spec: mixtures2d.MixtureSpec,
         info: dict[str, Any] | None = None) -> dict[str, Any]:
  r = mixtures2d.evaluate(np.asarray(x), spec)
  info = info or {}
  if "live_proposals_per_sample" in info:
    info["live_proposals_per_sample"] = float(info["live_proposals_per_sample"])
  acc = info.get("acceptance_rate")
  return {
      "method": name,
      "good_fraction": float(r["good_fraction"]),
      "kl": float(r["kl"]),
      "js": float(r["js"]),
      "modes": int(r["num_modes_covered"]),
      "samples_per_s": len(x) / seconds,
      "acceptance": None if acc is None else float(acc),
      "live_proposals_per_sample": info.get("live_proposals_per_sample"),
      "evals_per_sample": float(info.get("evals_per_sample", 1.0)),
      "extra": {k: float(v) for k, v in info.items()
                if k not in ("acceptance_rate", "evals_per_sample", "live_proposals_per_sample")
                and np.size(v) == 1},
  }


def run_mixture(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
  spec = mixtures2d.get_spec(name)
  k = spec.num_classes
  base = toy_train.ToyConfig(data=name, steps=args.steps, seed=args.seed)
  configs = {
      "A": base,
      "B": toy_train.ToyConfig(data=name, steps=args.steps, seed=args.seed, empty_class=True,
                               label_reset_prob=args.reset_p),
      "C": toy_train.ToyConfig(data=name, steps=args.steps, seed=args.seed, loss="san",
                               empty_class=True, label_reset_prob=args.reset_p),
  }
  models = {}
  for tag, cfg in configs.items():
    t = time.perf_counter()
    models[tag] = toy_train.train(cfg)
    print(f"[{name}] trained {tag} ({cfg.loss}, empty={cfg.empty_class}, "
          f"p={cfg.label_reset_prob}) in {time.perf_counter() - t:.1f}s", file=sys.stderr,
          flush=True)

  labels = toy_train.class_labels(spec, args.seed + 123, args.n)
  jlabels = jnp.asarray(labels)
  key = jax.random.key(args.seed + 2024)
  rows = []

  def gandance(tag: str, title: str, **kw) -> None:
    m = models[tag]
    sampler = sampler_lib.make_sampler(m.G, **kw)
    x, sec = _timed(lambda: sampler(m.g_vars, key, labels))
    rows.append(_row(title, x, sec, spec))
    print(f"[{name}] {title}", file=sys.stderr, flush=True)

  def post(title: str, sampler: pp.PostSampler, variables: dict[str, Any]) -> None:
    (x, info), sec = _timed(lambda: sampler(variables, key, jlabels))
    rows.append(_row(title, x, sec, spec, jax.device_get(info)))
    print(f"[{name}] {title}", file=sys.stderr, flush=True)

  lam_lo, lam_hi = args.scales
  gandance("A", "plain sampling", mode="none")
  gandance("A", f"truncation psi={args.psi}", mode="none", truncation_psi=args.psi)
  gandance("A", f"GANdance training-free lambda={lam_lo}", mode="training_free", scale=lam_lo)
  gandance("A", f"GANdance training-free lambda={lam_hi}", mode="training_free", scale=lam_hi)

  # Post-processors on model A.
  A = models["A"]
  va = {"g": A.g_vars, "d": A.d_vars}
  fns = pp.gan_fns(A.G, A.D, pp.latents_fn(A.G))
  cal_labels = toy_train.class_labels(spec, args.seed + 7, 4000)
  cal_reals = spec.sample_class(args.seed + 8, cal_labels)
  cal_fakes = pp.make_plain_sampler(fns)(va, jax.random.key(args.seed + 11),
                                         jnp.asarray(cal_labels))[0]
  real_logits = A.D.apply(A.d_vars, jnp.asarray(cal_reals), jnp.asarray(cal_labels))
  fake_logits = A.D.apply(A.d_vars, cal_fakes, jnp.asarray(cal_labels))
  iso = pp.fit_isotonic(real_logits, fake_logits)
  burn_labels = jnp.asarray(np.tile(np.arange(k), 10000 // k))
  max_logit = pp.drs_burn_in(fns, va, jax.random.key(args.seed + 12), burn_labels, k)
  post(f"DRS (gamma at F's {args.drs_percentile:g}th pct)",
       pp.make_drs_sampler(fns, max_logit, percentile=args.drs_percentile,
                           max_rounds=args.drs_rounds), va)
  pool = pp.RealPool.from_arrays(cal_reals, cal_labels, k)
  post(f"MH-GAN (isotonic, K={args.mh_k}, real init)",
       pp.make_mh_sampler(fns, iso, k=args.mh_k, real_pool=pool), va)
  post("collab. refinement, G layer 1",
       pp.make_refine_sampler(fns, layer=1, steps=20, step_size=0.002), va)
  post("collab. refinement, ws",
       pp.make_refine_sampler(fns, layer="ws", steps=20, step_size=0.002), va)
  post("collab. refinement, output x",
       pp.make_refine_sampler(fns, layer="output", steps=20, step_size=0.02), va)
  guided = pp.gan_fns(A.G, A.D, pp.latents_fn(A.G, mode="training_free", scale=lam_lo))
  max_logit_g = pp.drs_burn_in(guided, va, jax.random.key(args.seed + 12), burn_labels, k)
  post(f"GANdance training-free lambda={lam_lo} + DRS",
       pp.make_drs_sampler(guided, max_logit_g, percentile=args.drs_percentile,
                           max_rounds=args.drs_rounds), va)

  gandance("B", f"label reset p={args.reset_p}: plain", mode="none")
  gandance("B", f"GANdance learned lambda={lam_lo}", mode="learned", scale=lam_lo)
  gandance("B", f"GANdance learned lambda={lam_hi}", mode="learned", scale=lam_hi)
  gandance("C", f"SAN (+ reset p={args.reset_p}): plain", mode="none")
  gandance("C", f"SAN + GANdance learned lambda={lam_lo}", mode="learned", scale=lam_lo)
  gandance("C", f"SAN + GANdance training-free lambda={lam_lo}", mode="training_free",
           scale=lam_lo)
  for r in rows:
    r["mixture"] = name
  return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| mixture | method | good fraction | KL | JS | samples/s | accept | "
           "proposals / sample | G+D evals / sample |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    acc = "" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
    live = r.get("live_proposals_per_sample")
    live = "" if live is None else f"{live:.2f}"
    short = r["mixture"].replace("mixture_", "")
    lines.append(f"| {short} | {r['method']} | {r['good_fraction']:.4f} | {r['kl']:.4f} | "
                 f"{r['js']:.4f} | {r['samples_per_s']:,.0f} | {acc} | {live} | "
                 f"{r['evals_per_sample']:g} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mixtures", default=",".join(MIXTURES))
  parser.add_argument("--steps", type=int, default=1000, help="training steps per model")
  parser.add_argument("--n", type=int, default=10000, help="samples per method")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--reset_p", type=float, default=0.15, help="GANdance label reset p")
  parser.add_argument("--scales", type=float, nargs=2, default=(1.05, 1.2),
                      help="the two guidance scales lambda")
  parser.add_argument("--psi", type=float, default=0.95, help="truncation psi")
  parser.add_argument("--drs_percentile", type=float, default=95.0)
  parser.add_argument("--drs_rounds", type=int, default=128)
  parser.add_argument("--mh_k", type=int, default=20)
  parser.add_argument("--json", default=None, help="also write the rows here")
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  rows = []
  for name in args.mixtures.split(","):
    rows += run_mixture(name, args)
  print(to_markdown(rows))
  print(f"\n{len(rows)} rows, {time.perf_counter() - t0:.0f}s total; jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
