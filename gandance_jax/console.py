"""What a person sees on the terminal; everything else goes to `<workdir>/log.txt`.

Layer 0 (imports nothing of the project). The terminal gets a header, a progress bar (or,
when stderr is not a terminal, one line every eighth of the run), one line per evaluation and
a closing summary, all printed by process 0 only. Library INFO lines (Orbax, absl, JAX,
clu's logging writer) and this project's own INFO lines go to `<workdir>/log.txt`; warnings
of this project and errors of any library still reach the terminal.

  --verbosity=1, --logtostderr or --alsologtostderr (the usual absl flags) restore the full
  log on the terminal (log.txt is written either way).

Importing this module sets a quiet default for TensorFlow's C++ start-up lines (oneDNN, CPU
instruction notices: TF_CPP_MIN_LOG_LEVEL=2), which must be in the environment before
TensorFlow is imported; an explicit value in the environment, or one of the flags above on
the command line, wins.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

LOG_FILE = "log.txt"
# Progress mode: 'auto' (a bar on a terminal, else lines), 'bar', 'lines' or 'none'.
PROGRESS_ENV = "GANDANCE_PROGRESS"
# Non-terminal progress: about this many lines per run (the main job fits in 40 lines).
PROGRESS_LINES = 8

_VERBOSE_FLAGS = ("--logtostderr", "--alsologtostderr")


def verbose_argv(argv: Sequence[str] | None = None) -> bool:
  """Whether the command line asks for the full log on the terminal (see module doc)."""
  argv = sys.argv[1:] if argv is None else argv
  for arg in argv:
    if arg in _VERBOSE_FLAGS or arg.startswith(tuple(f + "=t" for f in _VERBOSE_FLAGS)):
      return True
    for prefix in ("--verbosity=", "-v="):
      if arg.startswith(prefix):
        try:
          return int(arg[len(prefix):]) >= 1
        except ValueError:
          return False
  return False


def _quiet_environment() -> None:
  if verbose_argv():
    return
  # 2: TensorFlow's C++ INFO and WARNING lines off (the CPU-instruction and oneDNN notices);
  # errors stay. oneDNN itself is left as it is (turning it off would change TF's numerics).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_quiet_environment()


def is_main_process() -> bool:
  """Process 0 (the one that prints); decided without importing JAX when it is not loaded."""
  jax = sys.modules.get("jax")
  if jax is None:
    return True
  try:
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except
    return True


def say(message: str = "") -> None:
  """Lines for the person at the terminal (stdout, process 0 only); also in log.txt."""
  if is_main_process():
    if _state["bar"] is not None:
      _state["bar"].write(message, file=sys.stdout)  # above the bar, not through it
    else:
      print(message, flush=True)
    if _state["file_handler"] is not None and message:
      # Not through the root logger: with --verbosity=1 the terminal would show it twice.
      _state["file_handler"].handle(logging.LogRecord(
          __name__, logging.INFO, __file__, 0, message, None, None))


def train_header(*, data: str, model: str, devices: str, workdir: str, plan: str) -> str:
  """The few lines that say what is trained, on what, and where the files go."""
  return (f"gandance_jax: training {data}\n"
          f"  model    {model}\n"
          f"  run      {plan} on {devices}\n"
          f"  workdir  {workdir} (library log: {os.path.join(workdir, LOG_FILE)})")


class _TerminalFilter(logging.Filter):
  """Keeps on the terminal: this project's warnings and errors, any library's errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    ours = f"{os.sep}gandance_jax{os.sep}" in (record.pathname or "")
    return record.levelno >= (logging.WARNING if ours else logging.ERROR)


_state: dict[str, Any] = {"file_handler": None, "filter": None, "stream_handler": None,
                          "bar": None}


def setup(workdir: str | None, verbose: bool | None = None) -> str | None:
  """Routes the log: INFO and up to `<workdir>/log.txt` (appended), the terminal quiet.

  Call after absl has parsed the flags (inside `main`). Returns the log path (None when
  `workdir` is None or cannot be created: then only the terminal filter is installed).
  `verbose` (default: from the command line, `verbose_argv`) keeps the full terminal log.
  Python warnings (`warnings.warn`) are routed through logging as well.
  """
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  verbose = verbose_argv() if verbose is None else verbose
  root = logging.getLogger()
  teardown()
  logging.captureWarnings(True)
  handler = absl_logging.get_absl_handler()
  if handler not in root.handlers:
    # A tool that does not start through absl.app (launch/sweep.py): a terminal handler of
    # its own, so that warnings still show while INFO goes to the file.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(absl_logging.PythonFormatter())
    root.addHandler(handler)
    _state["stream_handler"] = handler
  if not verbose:
    _state["filter"] = _TerminalFilter()
    handler.addFilter(_state["filter"])
  path = None
  if workdir:
    try:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, LOG_FILE)
      file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError:
      path = None  # The run itself reports an unwritable workdir with a clear message.
    else:
      file_handler.setFormatter(absl_logging.PythonFormatter())
      file_handler.setLevel(logging.INFO)
      root.addHandler(file_handler)
      _state["file_handler"] = file_handler
  if root.level > logging.INFO or root.level == logging.NOTSET:
    root.setLevel(logging.INFO)
  return path


def terminal_handler() -> logging.Handler:
  """The handler that writes log records to the terminal (absl's, or setup's own)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  return _state["stream_handler"] or absl_logging.get_absl_handler()


def teardown() -> None:
  """Undoes `setup` (closes log.txt, removes the terminal filter)."""
  if _state["file_handler"] is not None:
    logging.getLogger().removeHandler(_state["file_handler"])
    _state["file_handler"].close()
    _state["file_handler"] = None
  if _state["filter"] is not None:
    terminal_handler().removeFilter(_state["filter"])
    _state["filter"] = None
  if _state["stream_handler"] is not None:
    logging.getLogger().removeHandler(_state["stream_handler"])
    _state["stream_handler"] = None


# ----------------------------------------------------------------------------- formatting


def format_value(value: float) -> str:
  """4 significant digits, so a column of metrics lines up."""
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def split_metric(key: str) -> tuple[str, str, float | None]:
  """'fid10k/fid@1.3' -> ('fid10k', 'fid', 1.3); 'loss/G' -> ('loss', 'G', None)."""
  name, _, scale = key.partition("@")
  group, _, metric = name.rpartition("/")
  try:
    value = float(scale) if scale else None
  except ValueError:
    value = None
  return group, metric, value


def metrics_by_scale(metrics: Mapping[str, float]
                     ) -> tuple[list[float], list[str], dict[float, dict[str, float]]]:
  """Evaluation metrics '<eval>/<metric>@<scale>' -> (scales, columns, {scale: {col: v}}).

  A column that repeats another one (the same values at a subset of its scales, e.g. the
  end-of-training classifier evaluator at scale 1 beside the FID evaluator's classifier
  metrics over all scales) is left out. A column is '<metric>' when one evaluator reports
  it, '<eval>/<metric>' when several do.
  """
  full: dict[str, dict[float, float]] = {}
  for key, value in metrics.items():
    group, metric, scale = split_metric(key)
    if scale is None or not isinstance(value, (int, float)):
      continue
    full.setdefault(f"{group}/{metric}" if group else metric, {})[scale] = float(value)
  names = list(full)
  kept = []
  for i, name in enumerate(names):
    values = full[name]
    repeats = any(
        other != name and set(values) <= set(full[other])
        and all(full[other][s] == v for s, v in values.items())
        and (len(full[other]) > len(values) or names.index(other) < i)
        for other in names)
    if not repeats:
      kept.append(name)
  metric_of = {name: name.rpartition("/")[2] for name in kept}
  count = {m: list(metric_of.values()).count(m) for m in metric_of.values()}
  columns = [metric_of[n] if count[metric_of[n]] == 1 else n for n in kept]
  table: dict[float, dict[str, float]] = {}
  for name, column in zip(kept, columns):
    for scale, value in full[name].items():
      table.setdefault(scale, {})[column] = value
  return sorted(table), columns, table


def metrics_table(metrics: Mapping[str, float]) -> list[str]:
  """Lines of a plain-text table: one row per guidance scale, one column per metric."""
  scales, columns, table = metrics_by_scale(metrics)
  if not scales:
    return []
  cells = {s: [format_value(table[s][c]) if c in table[s] else "-" for c in columns]
           for s in scales}
  widths = [max(len(c), *(len(cells[s][i]) for s in scales)) for i, c in enumerate(columns)]
  lines = ["  scale  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
  for s in scales:
    lines.append(f"  {s:5g}  " + "  ".join(f"{v:>{w}}" for v, w in zip(cells[s], widths)))
  return lines


def eval_line(step: int, metrics: Mapping[str, float]) -> str:
  """One line per in-loop evaluation: 'step 500  eval  class_accuracy@1 0.62 ...'."""
  parts = []
  for key, value in metrics.items():
    group, metric, scale = split_metric(key)
    shown = metric if scale is None else f"{metric}@{scale:g}"
    parts.append(f"{shown} {format_value(value)}")
  return f"step {step}  eval  " + "  ".join(parts)


# ----------------------------------------------------------------------------- progress


def progress_mode() -> str:
  """'bar', 'lines' or 'none' from $GANDANCE_PROGRESS (default: a bar on a terminal)."""
  mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
  if mode not in ("auto", "bar", "lines", "none"):
    raise ValueError(f"${PROGRESS_ENV} = {mode!r} is invalid: auto, bar, lines or none")
  if mode == "auto":
    mode = "bar" if sys.stderr.isatty() else "lines"
  return mode


class Progress:
  """Training progress with the latest losses and it/s.

  'bar': a tqdm bar on stderr. 'lines': one line on stdout each time about a tenth of the
  run has passed (PROGRESS_LINES; at the next `metrics` call), and at the end. Only process 0 shows it.
  """

  def __init__(self, total: int, initial: int = 0, mode: str | None = None,
               enabled: bool | None = None):
    self.total, self.step = int(total), int(initial)
    self.mode = progress_mode() if mode is None else mode
    if not (is_main_process() if enabled is None else enabled):
      self.mode = "none"
    self.every = max(1, math.ceil(self.total / PROGRESS_LINES))
    self._next_line = (self.step // self.every + 1) * self.every
    self._tick = (time.time(), self.step)
    self._rate = 0.0
    self._bar = None
    if self.mode == "bar":
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=self.total, initial=self.step, unit="step",
                            dynamic_ncols=True, file=sys.stderr)
      _state["bar"] = self._bar

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self.step)
    self.step = step

  def metrics(self, step: int, values: Mapping[str, float]) -> None:
    """Shows the losses of `values` (and the rate since the last call)."""
    now = time.time()
    if now > self._tick[0] and step > self._tick[1]:
      self._rate = (step - self._tick[1]) / (now - self._tick[0])
    self._tick = (now, step)
    shown = {k.split("/", 1)[1] if k.startswith("loss/") else k: v
             for k, v in values.items() if k.startswith("loss/") and "reg" not in k}
    if self._bar is not None:
      self._bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)
    elif self.mode == "lines" and (step >= self._next_line or step >= self.total):
      self._next_line = (step // self.every + 1) * self.every
      losses = "  ".join(f"loss/{k} {v:.3f}" for k, v in shown.items())
      say(f"step {step}/{self.total} {100 * step / max(self.total, 1):3.0f}%  {losses}  "
          f"{self._rate:.1f} it/s")

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
      _state["bar"] = None
