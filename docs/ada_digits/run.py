"""ADA on 300 digits: no augmentation vs DiffAugment vs NVIDIA's AugmentPipe ('bgc').

  python docs/ada_digits/run.py --workroot=/tmp/ada_digits          # train, then report
  python docs/ada_digits/run.py --workroot=/tmp/ada_digits --report_only

Trains 3 seeds x {none, diffaugment, ada} of configs/digits.py (via docs/ada_digits/config.py)
on a fixed class-stratified cut of 300 training images (`data.max_images=300`,
data/base.py stratified_subset: the same images for every run), the same number of steps
each, with an in-loop FID on the digits classifier's features every `--eval_every` steps and
at the end (1000 samples, guidance scale 1 = plain conditional sampling, NVIDIA's metric
protocol: random noise, labels drawn from the data's class frequencies). The FID reference
is all 1797 digits, not the 300 training images: the ADA paper measures limited-data runs
against all available training images, so a G that only reproduces its 300 images is not
rewarded.

Each run is `python -m gandance_jax.main --mode=train` in `<workroot>/runs/<arm>_s<seed>`;
a run with TRAINING_DONE there is skipped and an interrupted one resumes from its checkpoint.
Writes into --outdir (default: this folder): results.csv, results.md, ada_p.png (p and the
sign statistic E[sign(D(real))] against the step, target drawn) and fid_vs_step.png.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # drive and import the checkout this file lives in
  sys.path.insert(0, REPO)

sys.path.insert(0, os.path.join(REPO, "launch"))
import sweep as sweep_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from gandance_jax.train import curves  # pylint: disable=g-import-not-at-top,wrong-import-position

ARMS = ("none", "diffaugment", "ada")
CONFIG = "docs/ada_digits/config.py"  # relative to REPO (the runs' cwd)
BATCH_SIZE = 16           # configs/digits.py
FID_KEY = "fid/fid@1"     # '<eval name>/<metric>@<scale>' of the evaluator below
ACC_KEY = "fid/class_accuracy@1"
ARM_COLORS = {"none": "tab:gray", "diffaugment": "tab:blue", "ada": "tab:red"}


def arm_overrides(arm: str, args: argparse.Namespace) -> dict[str, object]:
  """The config fields of one arm (everything else is shared, see `run_values`)."""
  if arm == "none":
    return {"train.augment": "none"}
  if arm == "diffaugment":
    # configs/digits.py's own augmentation: DiffAugment translation + cutout at p = 1.
    return {"train.augment": "diffaugment"}
  if arm == "ada":
    return {"train.augment": "ada", "train.ada_pipe": "bgc", "train.ada_target": 0.6,
            "train.ada_kimg": args.ada_kimg, "train.ada_interval": 4}
  raise SystemExit(f"--arms: unknown arm {arm!r}; known arms are {list(ARMS)}")


def run_values(arm: str, seed: int, reference: str,
               args: argparse.Namespace) -> dict[str, object]:
  """The `--config.<field>=<value>` overrides of one run of docs/ada_digits/config.py."""
  return {
      "seed": seed, "data.seed": seed, "data.max_images": args.max_images,
      "train.total_kimg": args.steps * BATCH_SIZE / 1000,
      "evals.fid.num_samples": args.num_samples, "evals.fid.every_steps": args.eval_every,
      "evals.fid.reference": reference, "sample_every_steps": args.steps,
      **args.shared, **arm_overrides(arm, args),
  }


def parse_set(text: str) -> dict[str, str]:
  """'a.b=1,c=x' -> {'a.b': '1', 'c': 'x'}: the values go onto the command line as
  `--config.a.b=1`, where the config's field types parse them."""
  out: dict[str, str] = {}
  for item in (i for i in text.split(",") if i):
    field, sep, value = item.partition("=")
    if not sep or not field:
      raise SystemExit(f"--set: expected field=value, got {item!r}")
    out[field] = value
  return out


def run_name(arm: str, seed: int) -> str:
  return f"{arm}_s{seed}"


def full_reference(workroot: str) -> str:
  """Digits-feature statistics of all 1797 digits (computed once, cached in workroot)."""
  from gandance_jax.evaluation.evaluators import common  # pylint: disable=g-import-not-at-top
  path = os.path.join(workroot, "reference_all_digits.npz")
  if not os.path.exists(path):
    data = common.EvalData(os.path.join(workroot, "reference_work"),
                           {"name": "digits", "resolution": 16, "max_images": 0})
    stats, _ = data.reference(common.EvalSpec(name="fid", extractor="digits",
                                              batch_size=250))
    stats.save(path)
  return path


def train_all(args: argparse.Namespace, runs: list[tuple[str, int]]) -> None:
  """Trains the runs with launch/sweep.py's runner: `python -m gandance_jax.main
  --mode=train` in <workroot>/runs/<arm>_s<seed>, skipped once it has written TRAINING_DONE
  (the seconds it took), resumed from its checkpoint if interrupted."""
  reference = full_reference(args.workroot)
  plan = types.SimpleNamespace(base_config=CONFIG, overrides={}, runs={
      run_name(arm, seed): run_values(arm, seed, reference, args) for arm, seed in runs})
  for name in plan.runs:
    sweep_lib.train_run(plan, args.workroot, name)


# ----------------------------------------------------------------------------- report


def _last(series: dict[int, float]) -> float:
  return series[max(series)] if series else float("nan")


def _window_mean(series: dict[int, float], start: int) -> float:
  values = [v for s, v in series.items() if s > start]
  return float(np.mean(values)) if values else float("nan")


def collect(args: argparse.Namespace, runs: list[tuple[str, int]]) -> list[dict]:
  rows = []
  for arm, seed in runs:
    workdir = os.path.join(args.workroot, "runs", run_name(arm, seed))
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(os.path.join(workdir, "TRAINING_DONE")):
      print(f"[ada_digits] {arm} seed {seed}: not finished, left out of the report")
      continue
    m = curves.read_metrics(path)
    fid, p, sign = m.get(FID_KEY, {}), m.get("augment_p", {}), m.get("signs/real", {})
    half = args.steps // 2
    with open(os.path.join(workdir, "TRAINING_DONE")) as f:
      wall = f.read().split()[0]
    rows.append(dict(
        arm=arm, seed=seed, steps=max(fid) if fid else 0, final_fid=_last(fid),
        best_fid=min(fid.values()) if fid else float("nan"),
        # The mean of the evaluations in the last quarter: less noisy than the last one alone.
        late_fid=_window_mean(fid, args.steps * 3 // 4),
        final_class_accuracy=_last(m.get(ACC_KEY, {})), final_p=_last(p),
        p_mean_2nd_half=_window_mean(p, half), sign_mean_2nd_half=_window_mean(sign, half),
        wall_s=float(wall), series=m))
  return rows


def _fmt(x: float, digits: int = 2) -> str:
  return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def write_tables(args: argparse.Namespace, rows: list[dict]) -> None:
  fields = ["arm", "seed", "steps", "final_fid", "late_fid", "best_fid", "final_class_accuracy",
            "final_p", "p_mean_2nd_half", "sign_mean_2nd_half", "wall_s"]
  with open(os.path.join(args.outdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in fields})
  lines = [f"# ADA on {args.max_images} digits: final FID (digits features, 1000 samples, "
           "reference = all 1797 digits)", "",
           f"{args.steps} steps of {BATCH_SIZE} ({args.steps * BATCH_SIZE / 1000:g} kimg); "
           "mean +- sample std over seeds (ddof=1)."
           + (f" Every arm: {args.set.replace(',', ', ')}." if args.set else ""), "",
           "| arm | runs | final FID | min / max | last-quarter FID | best FID in run | "
           "class acc. | p (2nd half) | E[sign] (2nd half) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for arm in args.arms:
    sel = [r for r in rows if r["arm"] == arm]
    if not sel:
      continue
    fid = np.array([r["final_fid"] for r in sel])
    sd = np.std(fid, ddof=1) if len(fid) > 1 else float("nan")
    lines.append(
        f"| {arm} | {len(sel)} | {fid.mean():.2f} +- {_fmt(sd)} | {fid.min():.2f} / "
        f"{fid.max():.2f} | {np.mean([r['late_fid'] for r in sel]):.2f} | "
        f"{np.mean([r['best_fid'] for r in sel]):.2f} | "
        f"{np.mean([r['final_class_accuracy'] for r in sel]):.3f} | "
        f"{_fmt(np.mean([r['p_mean_2nd_half'] for r in sel]), 3)} | "
        f"{np.mean([r['sign_mean_2nd_half'] for r in sel]):.3f} |")
  lines += ["", "Last-quarter FID: the mean of the evaluations after 3/4 of the steps.", "",
            "Each run:", "", "| arm | seed | final FID | last-quarter FID | best FID | class acc. "
            "| final p | E[sign] (2nd half) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['arm']} | {r['seed']} | {r['final_fid']:.2f} | {r['late_fid']:.2f} | "
                 f"{r['best_fid']:.2f} | "
                 f"{r['final_class_accuracy']:.3f} | {_fmt(r['final_p'], 3)} | "
                 f"{r['sign_mean_2nd_half']:.3f} | {r['wall_s']:.0f} |")
  with open(os.path.join(args.outdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def _xy(series: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
  steps = sorted(series)
  return np.array(steps), np.array([series[s] for s in steps])


def write_plots(args: argparse.Namespace, rows: list[dict]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_p, ax_s) = plt.subplots(1, 2, figsize=(10, 3.6))
  for r in rows:
    color = ARM_COLORS[r["arm"]]
    if r["arm"] == "ada":
      ax_p.plot(*_xy(r["series"].get("augment_p", {})), color=color, alpha=0.5 + 0.2 * r["seed"],
                label=f"ada seed {r['seed']}")
    ax_s.plot(*_xy(r["series"].get("signs/real", {})), color=color, lw=1,
              alpha=0.9 if r["arm"] == "ada" else 0.45,
              label=f"{r['arm']}" if r["seed"] == min(x["seed"] for x in rows) else None)
  ax_s.axhline(0.6, color="k", ls="--", lw=1, label="ADA target 0.6")
  ax_p.set(xlabel="step", ylabel="augment p (50-step means)",
           title=f"ADA ('bgc') p, ada_kimg={args.ada_kimg:g}")
  ax_s.set(xlabel="step", ylabel="E[sign(D(real))] (50-step means)",
           title="sign statistic (ADA's r_t)")
  ax_p.legend(fontsize=8)
  ax_s.legend(fontsize=8)
  for ax in (ax_p, ax_s):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(args.outdir, "ada_p.png"), dpi=80)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 3.8))
  for arm in args.arms:
    sel = [r for r in rows if r["arm"] == arm]
    for i, r in enumerate(sel):
      ax.plot(*_xy(r["series"].get(FID_KEY, {})), color=ARM_COLORS[arm], marker="o", ms=3,
              lw=1, alpha=0.8, label=arm if i == 0 else None)
  ax.set(xlabel="step", ylabel="FID (digits features, vs all digits)",
         title=f"FID vs step, {args.max_images} training images (one line per seed)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.outdir, "fid_vs_step.png"), dpi=80)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workroot", default="/tmp/ada_digits",
                      help="run workdirs and the reference statistics (not committed)")
  parser.add_argument("--outdir", default=os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--max_images", type=int, default=300)
  parser.add_argument("--ada_kimg", type=float, default=5.0)
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--eval_every", type=int, default=250)
  parser.add_argument("--set", default="",
                      help="comma-separated field=value overrides of every arm, e.g. a wider D "
                           "that overfits: discriminator.channel_base=1024,"
                           "discriminator.channel_max=128,train.r1_gamma=0.01")
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  args.shared = parse_set(args.set)
  args.arms = [a for a in args.arms.split(",") if a]
  for arm in args.arms:
    arm_overrides(arm, args)  # fail on an unknown arm before training anything
  seeds = [int(s) for s in args.seeds.split(",") if s]
  # Seed-major order: a partial experiment still has every arm at its first seeds.
  runs = [(arm, seed) for seed in seeds for arm in args.arms]
  if not args.report_only:
    train_all(args, runs)
  rows = collect(args, runs)
  os.makedirs(args.outdir, exist_ok=True)
  write_tables(args, rows)
  write_plots(args, rows)
  print(open(os.path.join(args.outdir, "results.md")).read())


if __name__ == "__main__":
  main()
