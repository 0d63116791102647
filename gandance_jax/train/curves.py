"""Training curves of a run as one PNG: losses, D scores, augmentation p, class accuracy and
in-loop evaluation metrics against the step, read from `<workdir>/metrics.jsonl`; and, on
their own panels, the metrics evaluated at several guidance scales against the scale, at the
newest evaluated step (in-loop or `--mode=eval`).

  python -m gandance_jax.train.curves runs/c10            # writes runs/c10/curves.png
  python -m gandance_jax.train.curves runs/c10 --out=/tmp/c10.png

The training loop writes the same file at the end of every run (process 0). A killed and
resumed run logs some steps twice; the last record of a step wins.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from gandance_jax import checkpoint

CURVES_FILE = "curves.png"

# Panels: (title, metric-name predicate). Evaluation metrics ('<eval>/<metric>@<scale>')
# get one panel per metric, with one line per scale.
_PANELS = (
    ("losses", lambda k: k.startswith("loss/")),
    ("D scores", lambda k: k.startswith("scores/") or k.startswith("signs/")),
    ("augment p", lambda k: k == "augment_p"),
    # The accuracy only: the evaluator's classifier score and mean p(c|x) have other
    # ranges and get panels of their own below.
    ("class accuracy of G EMA samples",
     lambda k: k.startswith("class_accuracy") and k.split("@")[0].endswith("class_accuracy")),
)


def read_metrics(path: str) -> dict[str, dict[int, float]]:
  """metrics.jsonl -> {metric: {step: value}} (numbers only; the last record of a step wins).

  Raises:
    FileNotFoundError naming the path.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist (a run's --workdir has metrics.jsonl)")
  series: dict[str, dict[int, float]] = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      record = json.loads(line)
      step = record.get("step")
      if step is None or record.get("eval"):  # CLI evaluations are not on the curve
        continue
      for key, value in record.items():
        if key in ("step", "final") or isinstance(value, bool):
          continue
        if isinstance(value, (int, float)) and math.isfinite(value):
          series.setdefault(key, {})[int(step)] = float(value)
  return series


def latest_scale_metrics(path: str) -> tuple[int | None, dict[str, float]]:
  """(step, {'<eval>/<metric>@<scale>': value}) of the newest evaluated step in the
  metrics.jsonl at `path` (in-loop and `--mode=eval` records of that step merged, later
  records win); (None, {}) when there is none."""
  if not os.path.exists(path):
    return None, {}
  by_step: dict[int, dict[str, float]] = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line being written while we read
      scaled = {k: float(v) for k, v in record.items()
                if "@" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v)}
      if scaled:
        by_step.setdefault(int(record.get("step", 0)), {}).update(scaled)
  if not by_step:
    return None, {}
  step = max(by_step)
  return step, by_step[step]


def scale_panels(metrics: dict[str, float]) -> list[tuple[str, dict[float, float]]]:
  """[('<eval>/<metric>', {scale: value})] for the metrics evaluated at 2+ scales."""
  groups: dict[str, dict[float, float]] = {}
  for key, value in metrics.items():
    name, _, scale = key.partition("@")
    try:
      groups.setdefault(name, {})[float(scale)] = value
    except ValueError:
      continue
  return [(name, values) for name, values in sorted(groups.items()) if len(values) > 1]


def _panels(series: dict[str, dict[int, float]]) -> list[tuple[str, list[str]]]:
  panels = []
  used: set[str] = set()
  for title, wanted in _PANELS:
    keys = sorted(k for k in series if wanted(k))
    if keys:
      panels.append((title, keys))
      used.update(keys)
  evals: dict[str, list[str]] = {}
  for key in sorted(series):
    if "@" in key and key not in used:
      evals.setdefault(key.split("@")[0], []).append(key)
  panels += [(name, keys) for name, keys in evals.items()]
  return panels


def plot(workdir: str, out: str | None = None) -> str:
  """Writes the curves of `workdir` to `out` (default `<workdir>/curves.png`); returns it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  series = read_metrics(os.path.join(workdir, checkpoint.METRICS_FILE))
  panels = _panels(series)
  scale_step, scale_metrics = latest_scale_metrics(os.path.join(workdir,
                                                                checkpoint.METRICS_FILE))
  by_scale = scale_panels(scale_metrics)
  if not panels and not by_scale:
    raise ValueError(f"{os.path.join(workdir, checkpoint.METRICS_FILE)} has no metrics to plot yet")
  count = len(panels) + len(by_scale)
  cols = min(3, count)
  rows = -(-count // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
  for ax, (title, keys) in zip(axes.ravel(), panels):
    one_metric = len({k.split("@")[0] for k in keys}) == 1
    for key in keys:
      steps = sorted(series[key])
      if "@" in key and one_metric:  # lines differ by the guidance scale only
        label = f"scale {key.split('@')[1]}"
      else:
        label = key.replace("@", " @ scale ") if "@" in key else key
      ax.plot(steps, [series[key][s] for s in steps], marker="o" if len(steps) < 30 else None,
              markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax, (name, values) in zip(axes.ravel()[len(panels):], by_scale):
    scales = sorted(values)
    ax.plot(scales, [values[x] for x in scales], marker="o", color="tab:purple")
    ax.set_title(f"{name} vs guidance scale (step {scale_step})")
    ax.set_xlabel("guidance scale")
    ax.grid(alpha=0.3)
  for ax in axes.ravel()[count:]:
    ax.axis("off")
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  out = out or os.path.join(workdir, CURVES_FILE)
  tmp = f"{out}.tmp{os.getpid()}.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, out)
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdir", help="a run's --workdir (reads its metrics.jsonl)")
  parser.add_argument("--out", default=None, help="PNG path (default <workdir>/curves.png)")
  args = parser.parse_args(argv)
  try:
    print(plot(args.workdir, args.out))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

