"""Reproduce the paper's sweeps as tables and plots; resumable cell by cell.

  python launch/sweep.py --sweep=configs/sweeps/digits_mini.py --outdir=docs/sweep_digits

A sweep file defines `get_config(arg)` returning a namespace (or dict) with
  base_config   the experiment config file (e.g. 'configs/digits.py' or 'configs/x.py:shrink')
  overrides     {dotted.field: value} applied to the base config for every run
  runs          {run_name: {dotted.field: value}}: one training run per entry (e.g. one per
                reset probability p, paper Fig. 6); trained (or resumed) in
                <outdir>/runs/<run_name> by `python -m gandance_jax.main`, or taken from
                `workdir` if that key is given (an existing run)
  eval          dict(extractor='digits'|'inception', num_samples, batch_size, seed, ...):
                fields of an evaluator (gandance_jax/evaluation/evaluators/)
  grids         {grid_name: dict(runs=[...], mode, scales=[...], num_opposite=[...],
                psi=[...], schedules={name: '4:1.5,8:1.5,16:1.0'}, eval_seed=N)}
                (eval_seed: the grid's samples from another seed than eval['seed'], to
                measure the sampling noise of a cell)
Every cell (grid, run, mode, |C|, scale or schedule, psi, eval seed) is evaluated once:
results are appended to <outdir>/results.jsonl as they finish and a rerun skips the cells
already there.
Outputs: report.html (the tables and plots below in one self-contained page), results.csv,
results.md (one table per grid) and PNG plots:
  fid_vs_scale.png (Table 1: FID vs scale per |C| and learned), fid_vs_psi.png (Table 3),
  fid_vs_p.png (Fig. 6), layerwise.png (Fig. 4), classifier_vs_scale.png (Table S1); grids
  named reset*, psi* and seed* (cells repeated on another training seed) have no scale curve.
Library logs go to <outdir>/log.txt; each run's own log to its workdir's log.txt.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The sweep drives the checkout it lives in (its runs are `python -m gandance_jax.main` with
# cwd=REPO): import that library, not another installed copy.
if REPO not in sys.path:
  sys.path.insert(0, REPO)
# digit_accuracy / style_accuracy: the two halves of a digits100 class (extractor 'digits100').
METRICS = ("fid", "class_accuracy", "digit_accuracy", "style_accuracy", "classifier_score",
           "target_probability", "inception_score", "precision", "recall")


def load_py_config(path: str) -> Any:
  """Loads `path[:arg]` (a file with get_config(arg)) like ml_collections config_flags."""
  path, _, arg = path.partition(":")
  if not os.path.exists(path):
    raise SystemExit(f"sweep/config file {path!r} not found")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def cell_key(cell: dict[str, Any]) -> str:
  key = {k: cell[k] for k in ("grid", "run", "mode", "num_opposite", "scale", "schedule",
                              "psi")}
  # Only where a grid sets it, so the cells of older results.jsonl files keep their keys.
  if cell.get("eval_seed") is not None:
    key["eval_seed"] = cell["eval_seed"]
  return json.dumps(key, sort_keys=True)


def expand_cells(sweep: Any) -> list[dict[str, Any]]:
  """All cells of all grids, in a stable order."""
  cells = []
  for grid_name, g in sweep.grids.items():
    g = dict(g)
    runs = list(g.get("runs", [g.get("run")]))
    mode = g.get("mode", "learned")
    num_opp = list(g.get("num_opposite", [0]))
    psis = list(g.get("psi", [1.0]))
    schedules = dict(g.get("schedules", {}))
    scales = list(g.get("scales", [1.0])) if not schedules else [None]
    extra = {} if g.get("eval_seed") is None else {"eval_seed": int(g["eval_seed"])}
    for run in runs:
      if run not in sweep.runs:
        raise SystemExit(f"grid {grid_name!r} refers to unknown run {run!r}; "
                         f"runs: {list(sweep.runs)}")
      for k in (num_opp if mode == "training_free" else [0]):
        for psi in psis:
          for scale in scales:
            for sched in (list(schedules) if schedules else [None]):
              cells.append(dict(grid=grid_name, run=run, mode=mode, num_opposite=int(k),
                                scale=None if scale is None else float(scale),
                                schedule=sched,
                                schedule_spec=schedules.get(sched) if sched else None,
                                psi=float(psi), **extra))
  return cells


def run_workdir(sweep: Any, outdir: str, run: str) -> str:
  spec = dict(sweep.runs[run])
  return spec.get("workdir") or os.path.join(outdir, "runs", run)


def runs_to_train(sweep: Any, used: list[str]) -> list[str]:
  """The runs the cells use plus the runs they start from ('{outdir}/runs/<run>' in a
  value), in the order of sweep.runs (a run's starting point is listed before it)."""
  needed = set(used)
  changed = True
  while changed:
    changed = False
    for run in list(needed):
      for v in dict(sweep.runs[run]).values():
        for other in sweep.runs:
          if isinstance(v, str) and f"{{outdir}}/runs/{other}" in v and other not in needed:
            needed.add(other)
            changed = True
  return [run for run in sweep.runs if run in needed]


def train_run(sweep: Any, outdir: str, run: str) -> None:
  """Trains (or resumes, or finds finished) one run in a subprocess."""
  spec = dict(sweep.runs[run])
  if spec.get("workdir"):
    return
  workdir = run_workdir(sweep, outdir, run)
  # String values may name other runs' workdirs: '{outdir}' is this sweep's --outdir (e.g.
  # train.init_from='{outdir}/runs/pre' fine-tunes the run 'pre', listed before it).
  values = {k: v.replace("{outdir}", outdir) if isinstance(v, str) else v
            for k, v in {**dict(sweep.overrides), **spec}.items()}
  # No shell in between: a string goes as it is (quotes would become part of the value).
  flags = [f"--config.{k}={v}" for k, v in values.items()]
  cmd = [sys.executable, "-m", "gandance_jax.main", f"--config={sweep.base_config}",
         f"--workdir={workdir}", "--mode=train", *flags]
  done = os.path.join(workdir, "TRAINING_DONE")
  if os.path.exists(done):
    return
  print(f"[sweep] training run {run}: {' '.join(cmd)}", flush=True)
  t0 = time.time()
  subprocess.run(cmd, check=True, cwd=REPO)
  os.makedirs(workdir, exist_ok=True)
  with open(done, "w") as f:
    f.write(f"{time.time() - t0:.1f} s\n")


def evaluate_cells(sweep: Any, outdir: str, cells: list[dict[str, Any]]) -> None:
  """Evaluates the cells not yet in results.jsonl, appending each as it finishes."""
  from gandance_jax import checkpoint, guidance  # pylint: disable=g-import-not-at-top
  from gandance_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  results_path = os.path.join(outdir, "results.jsonl")
  done = set()
  if os.path.exists(results_path):
    with open(results_path) as f:
      done = {cell_key(json.loads(line)) for line in f if line.strip()}
  todo = [c for c in cells if cell_key(c) not in done]
  print(f"[sweep] {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run",
        flush=True)
  loaded: dict[str, Any] = {}
  eval_data: dict[str, Any] = {}
  for i, cell in enumerate(todo):
    run = cell["run"]
    if run not in loaded:
      loaded[run] = checkpoint.load_generator(run_workdir(sweep, outdir, run))
    G, g_vars, config, step = loaded[run]
    if run not in eval_data:
      eval_data[run] = evaluators.EvalData(outdir, config.data)
    eval_fields = dict(sweep.eval)
    if cell.get("eval_seed") is not None:
      eval_fields["seed"] = cell["eval_seed"]
    spec = evaluators.parse_spec("sweep", dict(
        type="fid", mode=cell["mode"], num_opposite=cell["num_opposite"],
        truncation_psi=cell["psi"], **eval_fields))
    if cell["schedule_spec"]:
      scale = guidance.layerwise_scale(G, guidance.parse_layer_scales(cell["schedule_spec"]))
    else:
      scale = cell["scale"]
    t0 = time.time()
    metrics = evaluators.make(spec, G, eval_data[run]).metrics_at(g_vars, scale)
    row = {**{k: v for k, v in cell.items() if k != "schedule_spec"}, "step": int(step),
           "seconds": round(time.time() - t0, 2), **metrics}
    with open(results_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    print(f"[sweep] {i + 1}/{len(todo)} {cell_key(cell)} -> fid {metrics.get('fid', float('nan')):.3f}",
          flush=True)


def load_results(outdir: str) -> list[dict[str, Any]]:
  path = os.path.join(outdir, "results.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.3f}"
  return "" if v is None else str(v)


_CELL_COLUMNS = ["grid", "run", "mode", "num_opposite", "scale", "schedule", "psi", "eval_seed"]


def grid_tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
  """One table per grid: (grid name, header, formatted rows); the cell columns that vary
  within the grid (and the scale) and every metric present."""
  metric_cols = [m for m in METRICS if any(m in r for r in rows)]
  tables = []
  for grid in dict.fromkeys(r["grid"] for r in rows):
    sub = [r for r in rows if r["grid"] == grid]
    show = [c for c in _CELL_COLUMNS[1:]
            if len({json.dumps(r.get(c)) for r in sub}) > 1 or c == "scale"]
    tables.append((grid, show + metric_cols,
                   [[_fmt(r.get(c)) for c in show + metric_cols] for r in sub]))
  return tables


def write_tables(outdir: str, rows: list[dict[str, Any]]) -> None:
  """results.csv (all rows) and results.md (one Markdown table per grid)."""
  if not rows:
    return
  cols = _CELL_COLUMNS
  metric_cols = [m for m in METRICS if any(m in r for r in rows)]
  with open(os.path.join(outdir, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(cols + metric_cols + ["step"])
    for r in rows:
      w.writerow([r.get(c) for c in cols + metric_cols + ["step"]])
  lines = []
  for grid, header, table in grid_tables(rows):
    lines += [f"### {grid}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines.append("")
  with open(os.path.join(outdir, "results.md"), "w") as f:
    f.write("\n".join(lines))


def write_plots(outdir: str, rows: list[dict[str, Any]]) -> list[str]:
  """The paper-style plots for whichever grids are present."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []

  def save(fig, name):
    path = os.path.join(outdir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

  def series(sub, x, key_fn, metric):
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in sub:
      if r.get(x) is not None and metric in r:
        groups.setdefault(key_fn(r), []).append((r[x], r[metric]))
    return {k: sorted(v) for k, v in groups.items()}

  def lines(groups, xlabel, ylabel, name, styles=None):
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, pts in groups.items():
      ax.plot(*zip(*pts), marker="o", label=k, **(styles or {}).get(k, {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, name)

  # Table 1 / S1 curves: the scale grids at psi = 1 (the p and psi grids have their own plots;
  # 'seed' grids repeat cells on another training seed, read from the tables).
  by_scale = [r for r in rows if r.get("schedule") is None and r.get("psi") == 1.0
              and not r["grid"].startswith(("reset", "psi", "seed"))]
  label = lambda r: (f"training-free |C|={r['num_opposite'] or 'all'}"
                     if r["mode"] == "training_free" else r["mode"]) + (
                         f" ({r['run']})" if len({x['run'] for x in by_scale}) > 1 else "")
  for metric, name, ylabel in (("fid", "fid_vs_scale.png", "FID"),
                               ("classifier_score", "classifier_vs_scale.png",
                                "classifier score")):
    groups = series(by_scale, "scale", label, metric)
    if groups and any(len(v) > 1 for v in groups.values()):
      lines(groups, "guidance scale", ylabel, name)
  psi_rows = [r for r in rows if r.get("schedule") is None and r["grid"].startswith("psi")]
  groups = series(psi_rows, "psi", lambda r: f"{r['mode']} scale {r['scale']:g}", "fid")
  if groups:
    lines(groups, "truncation psi", "FID", "fid_vs_psi.png")
  # Fig. 6: the reset-p runs ('p<value>'), one curve per guidance mode (when a sweep guides
  # its p runs both ways) and scale; with more than two scales also the paper's own layout,
  # FID vs scale, one curve per p (and mode).
  p_rows = [r for r in rows if r["grid"].startswith("reset")]
  p_modes = {(r["mode"], r.get("num_opposite")) for r in p_rows}
  mode_of = lambda r: ("" if len(p_modes) == 1 else (
      f"training-free |C|={r['num_opposite'] or 'all'}, " if r["mode"] == "training_free"
      else f"{r['mode']}, "))
  p_rows = sorted((dict(r, p=float(r["run"].lstrip("p"))) for r in p_rows),
                  key=lambda r: (mode_of(r), r["scale"], r["p"]))
  # The same colour for the same scale (or p) in every mode, a dashed line for training-free.
  def styled(key_fn, colour_of):
    values = sorted({colour_of(r) for r in p_rows})
    return {key_fn(r): dict(color=f"C{values.index(colour_of(r)) % 10}",
                            linestyle="--" if r["mode"] == "training_free" else "-")
            for r in p_rows}
  by_scale_key = lambda r: f"{mode_of(r)}scale {r['scale']:g}"
  by_p_key = lambda r: f"{mode_of(r)}p = {r['p']:g}"
  if p_rows:
    lines(series(p_rows, "p", by_scale_key, "fid"), "label reset probability p", "FID",
          "fid_vs_p.png", styled(by_scale_key, lambda r: r["scale"]))
  if len({r["scale"] for r in p_rows}) > 2:
    lines(series(p_rows, "scale", by_p_key, "fid"), "guidance scale", "FID",
          "fid_vs_scale_by_p.png", styled(by_p_key, lambda r: r["p"]))
  lw = [r for r in rows if r.get("schedule")]
  if lw:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([r["schedule"] for r in lw], [r["fid"] for r in lw])
    ax.set_ylabel("FID")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    save(fig, "layerwise.png")
  return written


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep", required=True, help="sweep config file")
  parser.add_argument("--outdir", required=True, help="where runs, results and plots go")
  parser.add_argument("--only", default="", help="comma-separated grid names to run")
  parser.add_argument("--skip_training", action="store_true",
                      help="only evaluate runs that are already trained")
  parser.add_argument("--report_only", action="store_true",
                      help="rebuild tables and plots from results.jsonl")
  args = parser.parse_args(argv)
  sweep = load_py_config(args.sweep)
  if isinstance(sweep, dict):
    sweep = types.SimpleNamespace(**sweep)
  for field in ("base_config", "runs", "eval", "grids"):
    if not hasattr(sweep, field):
      raise SystemExit(f"sweep file {args.sweep} lacks the field {field!r}")
  if not hasattr(sweep, "overrides"):
    sweep.overrides = {}
  os.makedirs(args.outdir, exist_ok=True)
  from gandance_jax import console, report  # pylint: disable=g-import-not-at-top
  console.setup(args.outdir)
  cells = expand_cells(sweep)
  if args.only:
    keep = set(args.only.split(","))
    unknown = keep - set(sweep.grids)
    if unknown:
      raise SystemExit(f"--only names unknown grids {sorted(unknown)}; have {list(sweep.grids)}")
    cells = [c for c in cells if c["grid"] in keep]
  if not args.report_only:
    for run in runs_to_train(sweep, [c["run"] for c in cells]):
      if not args.skip_training:
        train_run(sweep, args.outdir, run)
    evaluate_cells(sweep, args.outdir, cells)
  rows = load_results(args.outdir)
  write_tables(args.outdir, rows)
  plots = write_plots(args.outdir, rows)
  page = report.write_sweep_report(args.outdir, grid_tables(rows), plots)
  print(f"[sweep] wrote {page} (open it first), results.md, results.csv and "
        f"{len(plots)} plots in {args.outdir}")
  return 0


def run() -> int:
  """`main` with the exit codes of gandance_jax/errors.py: a bad sweep file or flag (raised
  here as SystemExit(message)) prints one `error:` line and exits 2, not Python's 1."""
  try:
    return main()
  except SystemExit as e:
    if isinstance(e.code, str):
      print(f"error: {e.code}", file=sys.stderr)
      return 2
    raise


if __name__ == "__main__":
  sys.exit(run())
