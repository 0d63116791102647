"""The training loop: `train(hparams, workdir)`, read top to bottom (big_vision's train.py).

  1. mesh, input               the 'data' mesh, the deterministic source
  2. models and state          G, D, Adam x2, the state built already replicated (jit + shardings)
  3. checkpoint                restore the newest readable checkpoint, or start fresh
  4. writers, hooks            clu writer, ReportProgress, SIGTERM watcher, evaluators
  5. loop                      step; then the periodic actions, each a named function of
                               (run, state, step): log, grid, evals, checkpoint, preemption
  6. end                       final checkpoint, final grid, the evaluators marked `final`
                               (evaluation/evaluators/), the training curves

`train` takes the typed `HParams` of `config_lib.validate_config` (main.py converts the
config file's values at the entry point). `Run` holds what the periodic actions share and never
changes during the loop; the two things that do (the metrics interval and the last saved
step) live in `MetricsLogger` and `Saver`.

Bit-for-bit resumption: the state holds every quantity a step reads (see train/state.py), all
randomness is fold_in(root key, step, purpose), the data source is a pure function of
(seed, step) and restarts at the restored step, and which lazy phases run depends only on the
step. A restarted run therefore recomputes exactly what the uninterrupted run computed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from gandance_jax import checkpoint as checkpoint_lib
from gandance_jax import console
from gandance_jax import data as data_lib
from gandance_jax import errors
from gandance_jax import images as images_lib
from gandance_jax import multihost
from gandance_jax import report as report_lib
from gandance_jax import sampler as sampler_lib
from gandance_jax.evaluation import evaluators
from gandance_jax.train import curves
from gandance_jax.train import sharding as sharding_lib
from gandance_jax.train import state as state_lib
from gandance_jax.train import step as step_lib
from gandance_jax.train import warm_start
from gandance_jax.train.hparams import HParams, TrainHParams

# fold_in purpose of the root key for the periodic sample grids (one z per grid cell).
_GRID_KEY = 7


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """A loss (or the state) became NaN/inf; the message names the step and the loss (exit 1)."""

  exit_code = errors.ExitCode.NON_FINITE


class ConfigChangedError(errors.BadInputError):
  """The config differs from the one the workdir's checkpoints were trained with (exit 2)."""


# Fields that may differ from config.json when a run resumes (dotted prefixes): how long to
# train, what to log, evaluate and keep, and where the data lie. Any other change (networks,
# losses, optimizer, batch size, seed) makes the checkpoints another run's: refused unless
# --allow_config_change.
RESUME_SAFE_FIELDS = (
    "train.total_kimg", "evals", "best_metric", "best_mode", "eval_samples", "sample",
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "sample_every_steps",
    "grid_per_class", "prefetch", "data.data_dir")


def _is_resume_safe(field: str) -> bool:
  return any(field == f or field.startswith(f + ".") for f in RESUME_SAFE_FIELDS)


def check_config_change(workdir: str, config: dict[str, Any],
                        allow_config_change: bool = False) -> list[tuple[str, Any, Any]]:
  """Compares `config` with the workdir's config.json when the workdir has checkpoints.

  Returns the differences (dotted field, stored, current); raises ConfigChangedError listing
  them when one is outside RESUME_SAFE_FIELDS and `allow_config_change` is False. Reads only.
  """
  path = os.path.join(workdir, checkpoint_lib.CONFIG_FILE)
  ckpt_dir = os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR)
  has_checkpoints = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
  if not has_checkpoints or not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.BadInputError(
        f"{path} is unreadable ({type(e).__name__}: {e}); it records the config of the "
        "checkpoints in this workdir: restore it, or pass --allow_config_change to resume "
        "with the current config") from None
  diff = checkpoint_lib.config_diff(stored, config)
  unsafe = [d for d in diff if not _is_resume_safe(d[0])]
  lines = "; ".join(f"{field}: {old!r} -> {new!r}" for field, old, new in diff)
  if unsafe and not allow_config_change:
    raise ConfigChangedError(
        f"the config differs from {path}, which the checkpoints in {ckpt_dir} were trained "
        f"with: {lines}. Fields {[d[0] for d in unsafe]} change the run itself: use the same "
        "config (e.g. the same ':shrink' and overrides), or a new --workdir; "
        "--allow_config_change resumes anyway (only fields of the same shapes can be "
        f"restored). Safe to change on resume: {list(RESUME_SAFE_FIELDS)}")
  if diff:
    logging.warning("Config changed since %s: %s", path, lines)
  return diff


def check_workdir(workdir: str) -> None:
  """Raises WorkdirIOError if `workdir` cannot be a run's directory (a file in the way)."""
  path = os.path.abspath(workdir)
  while path and not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.WorkdirIOError(
        f"--workdir {workdir!r} cannot be created: {path!r} is a file, expected a directory")


class Preempted(Exception):
  """SIGTERM received: a checkpoint was saved at `step` and training stopped."""

  def __init__(self, step: int):
    super().__init__(f"preempted: checkpoint saved at step {step}")
    self.step = step


class PreemptionWatcher:
  """Turns SIGTERM into a 'save and stop' request at a step all processes agree on.

  One process: a SIGTERM handler sets a flag. Several processes: JAX's preemption sync
  point (the coordination service catches SIGTERM and agrees on a step for everyone).
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi = jax.process_count() > 1
    if not self._multi:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (e.g. some test runners): no handler
        self._previous = None

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint after the current step.")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # preemption service disabled
        return False
    return self.requested

  def close(self) -> None:
    if not self._multi and self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class MetricsBuffer:
  """Keeps the device scalars of recent steps; fetched in one go every log interval."""

  def __init__(self):
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.pending.append((step, metrics))

  def flush(self) -> list[tuple[int, dict[str, float]]]:
    """Fetches pending metrics [(step, {name: value})]; raises NonFiniteLossError."""
    if not self.pending:
      return []
    fetched = jax.device_get([(s, {k: sharding_lib.fetch(v) for k, v in m.items()})
                              for s, m in self.pending])
    self.pending = []
    out = []
    for step, metrics in fetched:
      values = {k: float(v) for k, v in metrics.items()}
      # Name a loss if one is bad (a NaN loss also poisons derived values such as ADA's p).
      for name, value in sorted(values.items(), key=lambda kv: not kv[0].startswith("loss")):
        if not math.isfinite(value):
          raise NonFiniteLossError(f"non-finite {name} = {value} at step {step}")
      out.append((step, values))
    return out


def _interval_means(rows: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
  sums: dict[str, list[float]] = {}
  for _, values in rows:
    for k, v in values.items():
      sums.setdefault(k, []).append(v)
  return {k: float(np.mean(v)) for k, v in sums.items()}


def total_steps(t: TrainHParams) -> int:
  """Number of steps for `train.total_kimg` thousand real images."""
  return int(math.ceil(float(t.total_kimg) * 1000 / int(t.batch_size)))


def check_source(hp: HParams, source: Any) -> None:
  """Raises BadInputError naming the field where the networks do not fit the data."""
  checks = (("generator.num_classes", hp.generator["num_classes"], source.num_classes),
            ("generator.resolution", hp.generator["resolution"], source.resolution),
            ("generator.img_channels", hp.generator["img_channels"], source.channels))
  for field, want, got in checks:
    if want != got:
      raise errors.BadInputError(f"config.{field} = {want} is invalid: the data source "
                       f"{hp.data['name']!r} has {got}")


@dataclasses.dataclass(frozen=True)
class Built:
  """The models and jitted functions of one (hyper-parameters, mesh)."""
  G: Any
  D: Any
  init_fn: Any             # () -> a fresh TrainState, replicated
  train_step: Any          # step.TrainStep or step_biggan.BigGANTrainStep (make_train_step)
  params_finite: Any       # state -> bool [], replicated


_BUILD_CACHE: dict[tuple[str, Any], Built] = {}


def build(hp: HParams, mesh: Any) -> Built:
  """`Built` for `hp` and `mesh`, cached by the fields that shape the compiled functions, so
  that calling `train` again in one process (a resumed run, the tests) reuses them."""
  key = (hp.build_key(), mesh)
  if key not in _BUILD_CACHE:
    replicated = sharding_lib.replicated(mesh)
    G, D = state_lib.build_models(hp)
    g_tx, d_tx = state_lib.make_optimizers(hp.train)
    init_fn = jax.jit(lambda: state_lib.init_train_state(hp, G, D, g_tx, d_tx),
                      out_shardings=replicated)
    params_finite = jax.jit(state_lib.params_are_finite, out_shardings=replicated)
    while len(_BUILD_CACHE) >= 4:
      _BUILD_CACHE.pop(next(iter(_BUILD_CACHE)))
    _BUILD_CACHE[key] = Built(
        G, D, init_fn, step_lib.make_train_step(hp.train, G, D, g_tx, d_tx, mesh),
        params_finite)
  return _BUILD_CACHE[key]


def abstract_train_state(init_fn: Any, sharding: Any) -> state_lib.TrainState:
  """The state's leaves as ShapeDtypeStruct placed with `sharding` (no computation).

  What checkpoint restore and the ahead-of-time compile (gandance_jax/train/aot.py) take in
  place of the real state.
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init_fn))


def _place(tree: Any, sharding: Any) -> Any:
  """Host (numpy) leaves -> global arrays with `sharding` (every process holds the same
  values); jax.Arrays are kept as they are."""
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else multihost.to_global(x, sharding), tree)


def _initial_state(hp: HParams, built: Built, ckpt: Any, replicated: Any,
                   restart_from_scratch: bool = False
                   ) -> tuple[state_lib.TrainState, int, bool]:
  """(state, step, resumed): the newest readable checkpoint, a warm start, or a fresh one."""
  restored = ckpt.restore_latest(abstract_train_state(built.init_fn, replicated),
                                 restart_if_unreadable=restart_from_scratch)
  if restored is not None:
    logging.info("Resumed from the checkpoint at step %d.", restored[1])
    return restored[0], restored[1], True
  state = built.init_fn()
  if hp.train.init_from:
    state = _place(warm_start.apply(state, hp), replicated)
    logging.info("Started from the pre-trained networks of %s (empty-class row: %s).",
                 hp.train.init_from, hp.train.init_empty)
  else:
    logging.info("Started from scratch (seed %d).", hp.seed)
  return state, 0, False


# ----------------------------------------------------------------------------- periodic work


class MetricsLogger:
  """Device metrics of each step, fetched and written (means per interval) on `log`.

  A checkpoint saved mid-interval stores the interval's fetched rows (`rows`, passed back as
  `pending` on resume), so a resumed run writes the same records as an uninterrupted one.
  """

  def __init__(self, writer: Any, path: str, batch_size: int, step: int,
               pending: Any = ()):
    self.writer, self.path, self.batch_size = writer, path, batch_size
    self.buffer = MetricsBuffer()
    self.tick = (time.time(), step)
    self.progress: console.Progress | None = None  # shows the losses of each flush
    # Fetched and checked, not yet written: [(step, {name: value})] of the current interval.
    self.rows: list[tuple[int, dict[str, float]]] = [
        (int(s), {k: float(v) for k, v in values.items()}) for s, values in pending]

  def check(self) -> None:
    """Fetches the pending device metrics; raises NonFiniteLossError on a non-finite one."""
    self.rows.extend(self.buffer.flush())

  def log(self, step: int) -> None:
    """Raises NonFiniteLossError on a non-finite value; one record per call with data."""
    self.check()
    rows, self.rows = self.rows, []
    if not rows:
      return
    means = _interval_means(rows)
    now = time.time()
    means["images_per_sec"] = (step - self.tick[1]) * self.batch_size / max(
        now - self.tick[0], 1e-9)
    means["kimg"] = step * self.batch_size / 1000
    self.tick = (now, step)
    self.writer.write_scalars(step, means)
    if self.progress is not None:
      self.progress.metrics(step, means)
    # One record per flush: `step` = steps done, values = means over the interval.
    checkpoint_lib.append_metrics(self.path, {"step": step, **means})


@dataclasses.dataclass(frozen=True)
class Run:
  """What the periodic actions of one run share (fixed for the whole loop)."""
  hp: HParams
  workdir: str
  G: Any
  params_finite: Any
  ckpt: Any
  logger: MetricsLogger
  suite: evaluators.Suite
  best: Any                 # checkpoint.BestSnapshot or None
  grid: sampler_lib.Sampler
  grid_labels: np.ndarray


def _non_finite_parts(state: state_lib.TrainState) -> str:
  """Which parts of the state hold a NaN/inf ('G', 'D', 'G EMA', other fields by name); run
  on the host once training has already failed, so its cost does not matter."""
  names = {"g_params": "G", "d_params": "D", "g_ema_params": "G EMA"}
  bad = []
  for f in dataclasses.fields(state):
    leaves = jax.tree.leaves(getattr(state, f.name))
    host = [np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x) for x in leaves]
    if any(np.issubdtype(h.dtype, np.floating) and not np.isfinite(h).all() for h in host):
      bad.append(names.get(f.name, f.name))
  return ", ".join(bad) or "the state"


class Saver:
  """Saves a checkpoint once per step, after checking losses and parameters."""

  def __init__(self, last_saved: int):
    self.last_saved = last_saved

  def save(self, run: Run, state: state_lib.TrainState, step: int) -> None:
    if step == self.last_saved:
      return
    run.logger.check()  # raises on non-finite losses before anything bad is saved
    if not bool(sharding_lib.fetch(run.params_finite(state))):
      raise NonFiniteLossError(f"non-finite parameters of {_non_finite_parts(state)} after "
                               f"step {step}")
    # The metrics interval is not cut here: its rows so far travel with the checkpoint.
    run.ckpt.save(state, step, run.hp.config,
                  extra_meta={"metrics_pending": [[s, v] for s, v in run.logger.rows]})
    self.last_saved = step


def write_grid(run: Run, state: state_lib.TrainState, name: str) -> None:
  """One row per class of G EMA samples (plain conditional sampling, fixed z per cell)."""
  key = jax.random.fold_in(jax.random.key(run.hp.seed), _GRID_KEY)
  images = multihost.to_host(run.grid(state_lib.sampling_variables(run.hp, run.G, state), key,
                                      run.grid_labels))
  if jax.process_index() == 0:
    images_lib.class_rows_grid(os.path.join(run.workdir, name), images, run.grid_labels,
                               run.hp.grid_per_class, num_classes=run.G.num_classes)


def run_evals(run: Run, state: state_lib.TrainState, step: int,
              specs: list[evaluators.EvalSpec]) -> None:
  """The evaluators `specs` on G EMA; the best one so far is kept (config.best_metric)."""
  if not specs:
    return
  variables = state_lib.sampling_variables(run.hp, run.G, state)
  metrics = run.suite.run(run.G, variables, step, specs,
                          writer=run.logger.writer, metrics_path=run.logger.path)
  console.say(console.eval_line(step, metrics))
  if run.best is not None:
    run.best.update(state, step, metrics, run.hp.config)
  # The curves and the report show every evaluation as it lands.
  write_curves(run.workdir)
  write_report(run.workdir)


def write_report(workdir: str) -> None:
  if jax.process_index() != 0:
    return
  try:
    report_lib.write_report(workdir)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("could not write the run report: %s: %s", type(e).__name__, e)


def write_curves(workdir: str) -> None:
  if jax.process_index() != 0:
    return
  try:
    logging.info("Training curves: %s", curves.plot(workdir))
  except Exception as e:  # pylint: disable=broad-except
    # A picture must never cost a finished run: say why and go on.
    logging.warning("could not plot the training curves: %s: %s", type(e).__name__, e)


def periodic(run: Run, saver: Saver, watcher: PreemptionWatcher, state: state_lib.TrainState,
             step: int, num_steps: int) -> None:
  """Everything due after `step` steps, in order: log, grid, evals, checkpoint, preemption."""
  hp = run.hp
  if step % hp.log_every_steps == 0 or step == num_steps:
    run.logger.log(step)
  if step % hp.sample_every_steps == 0:
    write_grid(run, state, f"grid_{step:08d}.png")
  if step < num_steps:
    run_evals(run, state, step, run.suite.due(step))
  if step % hp.checkpoint_every_steps == 0:
    saver.save(run, state, step)
  if watcher.should_stop(step):
    saver.save(run, state, step)
    run.ckpt.wait()
    logging.warning("Preempted: checkpoint saved at step %d; exiting.", step)
    raise Preempted(step)


# ----------------------------------------------------------------------------- the loop


def train(hp: HParams, workdir: str, *, allow_config_change: bool = False,
          restart_from_scratch: bool = False,
          on_start: Callable[[], None] | None = None) -> state_lib.TrainState:
  """Trains (or resumes) the run in `workdir`; returns the final state.

  Everything is checked (workdir, batch split, data, the config against the checkpoints'
  config.json, the restore) before config.json is written: a start that fails leaves the
  workdir as it was.

  Args:
    allow_config_change: resume although fields outside RESUME_SAFE_FIELDS changed.
    restart_from_scratch: when no checkpoint can be restored, move them all to
      corrupt_checkpoints/ and start fresh (default: stop with CorruptCheckpointError).
    on_start: called once the run is known to start (right after config.json is written),
      for what else the entry point records in the workdir (the report's config source).

  Raises:
    ConfigChangedError / errors.BadInputError: the config does not fit the workdir or data.
    checkpoint.CorruptCheckpointError: checkpoints exist but none can be restored.
    checkpoint.SaveFailedError: a checkpoint save failed (disk full, permission).
    NonFiniteLossError: a loss or the state became non-finite (the last good checkpoint
      is kept).
    Preempted: SIGTERM was received (after saving a checkpoint).
  """
  # --- 1. Mesh, input. ---------------------------------------------------------------
  # Nothing is written before every check has passed (config.json last, once restored).
  check_workdir(workdir)
  mesh = sharding_lib.make_mesh(hp.mesh_data)
  try:
    sharding_lib.check_batch_size(hp, mesh)
    source = data_lib.make_source(hp.data)
  except (ValueError, FileNotFoundError) as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.BadInputError(errors.one_line(e)) from e
  replicated = sharding_lib.replicated(mesh)
  check_source(hp, source)
  check_config_change(workdir, hp.config, allow_config_change)
  # clu's writers import TensorFlow (seconds): only here, after the checks (a refused start
  # stays fast), so that tools that just build the step (train/aot.py) start fast too.
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  batch_size, num_steps = hp.train.batch_size, total_steps(hp.train)
  logging.info("Training %s: %d steps of %d images on %d devices (%d processes); workdir %s",
               hp.data["name"], num_steps, batch_size, mesh.devices.size,
               jax.process_count(), workdir)

  # --- 2. Models, optimizers, jitted phases; 3. the state: resumed, warm or fresh. ------
  built = build(hp, mesh)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=hp.keep_checkpoints)
  try:
    state, step, resumed = _initial_state(hp, built, ckpt, replicated, restart_from_scratch)
  except BaseException:
    ckpt.manager.close()
    raise
  checkpoint_lib.save_config(workdir, hp.config)
  if on_start is not None:
    on_start()
  num_params = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  logging.info("G: %d params, D: %d params, num_ws %d", num_params(state.g_params),
               num_params(state.d_params), built.G.num_ws)
  console.say(console.train_header(
      data=f"{hp.data['name']} {source.resolution}x{source.resolution}x{source.channels}, "
           f"{source.num_classes} classes",
      model=f"G {num_params(state.g_params):,} params, D {num_params(state.d_params):,}, "
            f"num_ws {built.G.num_ws}",
      devices=f"{mesh.devices.size} {jax.devices()[0].platform} device(s), "
              f"{jax.process_count()} process(es)",
      workdir=workdir,
      plan=f"{num_steps} steps of {batch_size} images"
           + (f", resuming at step {step}" if resumed else "")))

  # --- 4. Writers, hooks, evaluators. ------------------------------------------------
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=hp.log_every_steps)
  run = Run(
      hp=hp, workdir=workdir, G=built.G, params_finite=built.params_finite, ckpt=ckpt,
      logger=MetricsLogger(writer, checkpoint_lib.metrics_path(workdir), batch_size, step,
                           ckpt.restored_meta.get("metrics_pending", ()) if resumed else ()),
      suite=evaluators.Suite(hp.evals, evaluators.EvalData(workdir, hp.data)),
      best=(checkpoint_lib.BestSnapshot(workdir, hp.best_metric, hp.best_mode)
            if hp.best_metric else None),
      grid=sampler_lib.make_sampler(built.G, mode="none", devices=mesh.devices.flat),
      grid_labels=np.repeat(np.asarray(images_lib.grid_classes(built.G.num_classes),
                                       np.int32), hp.grid_per_class))
  saver, watcher = Saver(step if resumed else -1), PreemptionWatcher()
  progress_bar = run.logger.progress = console.Progress(num_steps, initial=step)

  # --- 5. Loop. --------------------------------------------------------------------
  batches = sharding_lib.global_batches(source.batches(batch_size, start_step=step),
                                        sharding_lib.batch_sharding(mesh), prefetch=hp.prefetch)
  try:
    with metric_writers.ensure_flushes(writer):
      while step < num_steps:
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          state, metrics = built.train_step(state, next(batches), step)
        run.logger.buffer.add(step, metrics)
        step += 1
        report_progress(step, time.time())
        progress_bar.update(step)
        periodic(run, saver, watcher, state, step, num_steps)

      # --- 6. End: final checkpoint, grid, evaluators, curves. -------------------------
      saver.save(run, state, step)
      write_grid(run, state, "grid_final.png")
      run_evals(run, state, step, run.suite.final())
      write_curves(workdir)
      write_report(workdir)
  except NonFiniteLossError as e:
    ckpt.wait()
    good = ckpt.latest_step()
    raise NonFiniteLossError(
        f"{e}. Training stopped; the last good checkpoint is "
        f"{'step ' + str(good) if good is not None else 'none'} in {ckpt.directory}.") from None
  finally:
    watcher.close()
    progress_bar.close()
    ckpt.close()
    if run.best is not None:
      run.best.close()
  return state
