"""The run report: one self-contained `<workdir>/report.html` to open in a browser.

  python -m gandance_jax.report runs/digits          # rebuilds runs/digits/report.html

The page has, in order: the metrics per guidance scale of the newest evaluation (best scale
marked), the guidance grid (rows = classes, columns = scales), the class interpolation strip,
the training curves, the newest training grid, and the config fields that differ from the
config file's defaults. Images are embedded (base64), so the page needs no network and no
other file. The training loop rewrites it at each evaluation and at the end; main.py at the
end of every mode. `write_sweep_report` makes the same kind of page for launch/sweep.py.

A small script in the page writes how many images decoded into `#image-status`
(`data-loaded`, `data-total`), which the browser test reads.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

from gandance_jax import checkpoint
from gandance_jax import console
from gandance_jax.train import curves

REPORT_FILE = "report.html"
# The config file and its values without command-line overrides (main.py writes it at start),
# so the report can show only what the user changed.
CONFIG_SOURCE_FILE = "config_source.json"
# Metrics where lower is better; every other per-scale metric is better higher.
_LOWER_IS_BETTER = ("fid",)

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.field { text-align: left; font-family: monospace; }
tr.best-row td { background: #eef7ee; } td.best { font-weight: bold; }
figure { margin: 0.5em 0 1.2em 0; } figcaption { font-size: 0.85em; color: #555; }
img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }
.muted { color: #777; font-size: 0.85em; }
"""

# Counts the decoded images (naturalWidth > 0) once the page has loaded.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var s = document.getElementById('image-status');
  s.setAttribute('data-loaded', ok); s.setAttribute('data-total', imgs.length);
  s.textContent = ok + ' of ' + imgs.length + ' images loaded';
});
"""


# ----------------------------------------------------------------------------- reading a run


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1} (lists become tuples, as in config files)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = tuple(value) if isinstance(value, list) else value
  return out


def save_config_source(workdir: str, config_file: str, defaults: Mapping[str, Any]) -> str:
  """Writes `<workdir>/config_source.json`: the config file's name and its default values
  (the config before command-line overrides). Returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_SOURCE_FILE)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump({"config_file": config_file, "defaults": defaults}, f, indent=2,
              sort_keys=True, default=str)
  os.replace(tmp, path)
  return path


def config_diff(workdir: str) -> tuple[str, list[tuple[str, Any, Any]]]:
  """(config file, [(field, default, value)]) for the fields of config.json that differ
  from the config file's defaults; ('', []) when either file is missing."""
  config_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  source_path = os.path.join(workdir, CONFIG_SOURCE_FILE)
  if not (os.path.exists(config_path) and os.path.exists(source_path)):
    return "", []
  with open(config_path) as f:
    values = flatten(json.load(f))
  with open(source_path) as f:
    source = json.load(f)
  defaults = flatten(source.get("defaults", {}))
  missing = object()
  diff = [(k, defaults.get(k, missing), v) for k, v in sorted(values.items())
          if defaults.get(k, missing) != v]
  return str(source.get("config_file", "")), [
      (k, "(not in the file)" if d is missing else d, v) for k, d, v in diff]


def latest_scale_metrics(workdir: str) -> tuple[int | None, dict[str, float]]:
  """(step, {'<eval>/<metric>@<scale>': value}) of the newest evaluated step of the run."""
  return curves.latest_scale_metrics(checkpoint.metrics_path(workdir))


def best_scales(scales: Sequence[float], columns: Sequence[str],
                table: Mapping[float, Mapping[str, float]]) -> dict[str, float]:
  """{column: the scale with the best value} (lowest FID, highest anything else)."""
  best = {}
  for column in columns:
    have = [s for s in scales if column in table[s]]
    if have:
      lower = column.rsplit("/", 1)[-1] in _LOWER_IS_BETTER
      pick = min if lower else max
      best[column] = pick(have, key=lambda s: table[s][column])
  return best


def primary_column(columns: Sequence[str]) -> str | None:
  """The metric that decides the best row: a FID if there is one, else the first."""
  for column in columns:
    if column.rsplit("/", 1)[-1] == "fid":
      return column
  return columns[0] if columns else None


def _newest(paths: Iterable[str]) -> str | None:
  paths = [p for p in paths if os.path.isfile(p)]
  return max(paths, key=os.path.getmtime) if paths else None


def find_images(workdir: str) -> list[tuple[str, str]]:
  """[(title, path)] of the images the report shows, those that exist, in page order."""
  samples = _newest(glob.glob(os.path.join(workdir, "samples", "*", "grid_*.png")))
  sample_dir = os.path.dirname(samples) if samples else None
  interp = (_newest(glob.glob(os.path.join(sample_dir, "interp_*.png"))) if sample_dir
            else None)
  train_grid = os.path.join(workdir, "grid_final.png")
  if not os.path.exists(train_grid):
    train_grid = _newest(glob.glob(os.path.join(workdir, "grid_[0-9]*.png")))
  found = [("Guidance grid", samples), ("Class interpolation", interp),
           ("Training curves", os.path.join(workdir, curves.CURVES_FILE)),
           ("Training samples (G EMA, no guidance)", train_grid)]
  return [(title, p) for title, p in found if p and os.path.isfile(p)]


def _caption(path: str) -> str:
  """The PNG's 'Description' text (images.save_png writes it), else ''."""
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(path) as im:
      return str(getattr(im, "text", {}).get("Description", ""))
  except Exception:  # pylint: disable=broad-except
    return ""


# ----------------------------------------------------------------------------- HTML


def _img(path: str) -> str:
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode("ascii")
  return f'<img src="data:image/png;base64,{data}" alt="{html.escape(os.path.basename(path))}">'


def _figure(title: str, path: str, caption: str = "") -> str:
  caption = caption or _caption(path)
  text = html.escape(os.path.basename(path)) + (f": {html.escape(caption)}" if caption else "")
  return f"<h2>{html.escape(title)}</h2>\n<figure>{_img(path)}<figcaption>{text}</figcaption></figure>"


def metrics_html(metrics: Mapping[str, float]) -> str:
  """The metrics per guidance scale: one `tr.scale-row` per scale; the best value of each
  column in bold, the row of the best primary metric (FID if any) marked 'best'."""
  scales, columns, table = console.metrics_by_scale(metrics)
  if not scales:
    return "<p class='muted'>No evaluation yet.</p>"
  best = best_scales(scales, columns, table)
  primary = primary_column(columns)
  # Two header rows: the evaluator over its metrics, then the metric names.
  groups: list[list[Any]] = []
  for c in columns:
    group, _, metric = c.rpartition("/")
    if groups and groups[-1][0] == group:
      groups[-1][1] += 1
    else:
      groups.append([group, 1])
  top = "".join(f"<th colspan='{n}'>{html.escape(g)}</th>" for g, n in groups)
  head = "".join(f"<th>{html.escape(c.rpartition('/')[2])}</th>" for c in columns)
  rows = []
  for s in scales:
    marked = primary is not None and best.get(primary) == s
    cells = []
    for c in columns:
      v = table[s].get(c)
      cls = ' class="best"' if best.get(c) == s else ""
      cells.append(f"<td{cls}>{'-' if v is None else console.format_value(v)}</td>")
    mark = f"best ({html.escape(primary)})" if marked else ""
    rows.append(f'<tr class="scale-row{" best-row" if marked else ""}" data-scale="{s:g}">'
                f"<td>{s:g}</td>{''.join(cells)}<td>{mark}</td></tr>")
  top_row = (f"<tr><th rowspan='2'>scale</th>{top}<th rowspan='2'></th></tr>"
             if any(g for g, _ in groups) else "")
  head_row = (f"<tr>{head}</tr>" if top_row else
              f"<tr><th>scale</th>{head}<th></th></tr>")
  return (f"<div style='overflow-x: auto'><table id=\"metrics\">{top_row}{head_row}\n"
          + "\n".join(rows) + "</table></div>\n<p class='muted'>Bold: the best scale of each "
          "metric (lowest FID, highest otherwise).</p>")


def _config_html(config_file: str, diff: list[tuple[str, Any, Any]]) -> str:
  if not config_file:
    return "<p class='muted'>config_source.json not found (runs started by main.py write it).</p>"
  if not diff:
    return f"<p>{html.escape(config_file)} as it is (no field changed).</p>"
  rows = "".join(f"<tr><td class='field'>{html.escape(k)}</td><td>{html.escape(str(d))}</td>"
                 f"<td>{html.escape(str(v))}</td></tr>" for k, d, v in diff)
  return (f"<p>Fields that differ from {html.escape(config_file)}:</p>"
          f"<table id='config'><tr><th>field</th><th>file default</th><th>this run</th></tr>"
          f"{rows}</table>")


def _page(title: str, body: Sequence[str]) -> str:
  return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
          f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
          f"<h1>{html.escape(title)}</h1>\n"
          f"<p class='muted'>written {time.strftime('%Y-%m-%d %H:%M:%S')}; "
          "<span id='image-status'>images: script not run</span></p>\n"
          + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")


def _write(path: str, text: str) -> str:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def build_html(workdir: str) -> str:
  """The report page of the run in `workdir` (see the module docstring)."""
  step, metrics = latest_scale_metrics(workdir)
  config_file, diff = config_diff(workdir)
  body = [f"<p>workdir <code>{html.escape(os.path.abspath(workdir))}</code>"
          + (f", config {html.escape(config_file)}" if config_file else "") + "</p>",
          f"<h2>Metrics per guidance scale{f' (step {step})' if step is not None else ''}</h2>",
          metrics_html(metrics)]
  body += [_figure(title, path) for title, path in find_images(workdir)]
  body += ["<h2>Config</h2>", _config_html(config_file, diff)]
  return _page(f"Run report: {os.path.basename(os.path.abspath(workdir))}", body)


def write_report(workdir: str) -> str:
  """Writes `<workdir>/report.html` atomically; returns its path."""
  return _write(os.path.join(workdir, REPORT_FILE), build_html(workdir))


def write_sweep_report(outdir: str, tables: Sequence[tuple[str, Sequence[str],
                                                            Sequence[Sequence[str]]]],
                       plots: Sequence[str]) -> str:
  """`<outdir>/report.html` of a sweep: one table per grid [(title, header, rows)] and the
  plots (PNG paths), embedded. Returns its path."""
  body = []
  for title, header, rows in tables:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    lines = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                    for row in rows)
    body.append(f"<h2>{html.escape(title)}</h2>\n<table><tr>{head}</tr>{lines}</table>")
  body += [_figure(os.path.splitext(os.path.basename(p))[0], p) for p in plots
           if os.path.isfile(p)]
  return _write(os.path.join(outdir, REPORT_FILE),
                _page(f"Sweep report: {os.path.basename(os.path.abspath(outdir))}", body))


# ----------------------------------------------------------------------------- main.py hooks


def record_config_source(workdir: str, config_flag: Any) -> None:
  """main.py at start (process 0): config_source.json from the --config flag, its file read
  again without the command-line overrides. Never stops a run: a failure is logged."""
  if not console.is_main_process():
    return
  try:
    name = config_flag.config_filename
    save_config_source(workdir, name, config_flag.parser.parse(name).to_dict())
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("could not record the config file's defaults: %s: %s",
                    type(e).__name__, e)


def _command(argv: Sequence[str], mode: str | None) -> str:
  args = [a for a in argv if not a.startswith(("--mode=", "--checkpoint="))]
  if mode:
    args.append(f"--mode={mode}")
  return " ".join(["python -m gandance_jax.main"] + [shlex.quote(a) for a in args])


def finish(workdir: str, mode: str, argv: Sequence[str] | None = None) -> None:
  """main.py at the end (process 0): rewrites the report and prints the closing summary:
  where the files are and what to run next."""
  if not console.is_main_process():
    return
  argv = sys.argv[1:] if argv is None else argv
  try:
    path = write_report(workdir)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("could not write the run report: %s: %s", type(e).__name__, e)
    path = None
  lines = [f"done ({mode}). In {workdir}:"]
  if path:
    lines.append(f"  {REPORT_FILE:<17} open this first: metrics per scale, grids, curves, config")
  for title, image in find_images(workdir):
    lines.append(f"  {os.path.relpath(image, workdir):<17}  {title}")
  samples = sorted(glob.glob(os.path.join(workdir, "samples", "*", "samples_*.npz")))
  if samples:
    lines.append(f"  {os.path.relpath(os.path.dirname(samples[-1]), workdir) + '/':<17} "
                 f"samples_*.npz for FID tools (ADM layout)")
  lines.append(f"  {console.LOG_FILE:<17} the full log; metrics.jsonl: every number")
  lines.append("next: re-run the same command to resume; for samples or metrics only add "
               "--mode=sample or --mode=eval:")
  lines.append(f"  {_command(argv, 'sample')}")
  console.say("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m gandance_jax.report <workdir>", file=sys.stderr)
    return 2
  workdir = argv[0]
  if not os.path.isdir(workdir):
    print(f"error: workdir {workdir!r} is not a directory (a run's --workdir)", file=sys.stderr)
    return 2
  print(write_report(workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
