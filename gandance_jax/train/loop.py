"""The training loop: `train(config, workdir)`, read top to bottom.

  1. config, mesh, input       validate, build the 'data' mesh, the deterministic source
  2. models and state          G, D, Adam x2, the state built already replicated (jit + shardings)
  3. checkpoint                restore the newest readable checkpoint, or start fresh
  4. step, writers, hooks      jitted phases, clu writers, ReportProgress, SIGTERM watcher
  5. loop                      step; every log_every_steps: fetch metrics, stop on non-finite
                               losses, write; periodic sample grids, evals, checkpoints
  6. end                       final checkpoint, final grid, class accuracy (digits), all
                               `config.evals` (evaluation/evaluator.py), metrics

Bit-for-bit resumption: the state holds every quantity a step reads (see train/state.py), all
randomness is fold_in(root key, step, purpose), the data source is a pure function of
(seed, step) and restarts at the restored step, and which lazy phases run depends only on the
step. A restarted run therefore recomputes exactly what the uninterrupted run computed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from gandance_jax import checkpoint as checkpoint_lib
from gandance_jax import config_lib, images as images_lib
from gandance_jax.train import sharding as sharding_lib
from gandance_jax.train import state as state_lib
from gandance_jax.train.step import TrainStep

METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
  """A loss (or the state) became NaN/inf; the message names the step and the loss."""


class Preempted(Exception):
  """SIGTERM received: a checkpoint was saved at `step` and training stopped."""

  def __init__(self, step: int):
    super().__init__(f"preempted: checkpoint saved at step {step}")
    self.step = step


def total_steps(config: ml_collections.ConfigDict) -> int:
  """Number of steps for `train.total_kimg` thousand real images."""
  return int(math.ceil(float(config.train.total_kimg) * 1000 / int(config.train.batch_size)))


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


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _check_source(config: ml_collections.ConfigDict, source: Any) -> None:
  g = config.generator
  checks = (("generator.num_classes", g.num_classes, source.num_classes),
            ("generator.resolution", g.resolution, source.resolution),
            ("generator.img_channels", g.img_channels, source.channels))
  for field, want, got in checks:
    if want != got:
      raise ValueError(f"config.{field} = {want} is invalid: the data source "
                       f"{config.data.name!r} has {got}")


_BUILD_CACHE: dict[tuple[str, Any], tuple[Any, ...]] = {}


def _build(config: ml_collections.ConfigDict, mesh: Any) -> tuple[Any, ...]:
  """(G, D, init_fn, TrainStep, params_finite) for a config and mesh.

  Cached by the config fields that shape them, so that calling `train` again in one process
  (a resumed run in a notebook, the tests) reuses the compiled phases.
  """
  # Only these fields shape the compiled functions (logging, evals etc. do not).
  key = (json.dumps({k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
                     for k in ("seed", "generator", "discriminator", "train")},
                    sort_keys=True, default=str), mesh)
  if key not in _BUILD_CACHE:
    replicated = sharding_lib.replicated(mesh)
    G, D = state_lib.build_models(config)
    g_tx, d_tx = state_lib.make_optimizers(config)
    init_fn = jax.jit(lambda: state_lib.init_train_state(config, G, D, g_tx, d_tx),
                      out_shardings=replicated)
    train_step = TrainStep(config, G, D, g_tx, d_tx, mesh)
    params_finite = jax.jit(state_lib.params_are_finite, out_shardings=replicated)
    while len(_BUILD_CACHE) >= 4:
      _BUILD_CACHE.pop(next(iter(_BUILD_CACHE)))
    _BUILD_CACHE[key] = (G, D, init_fn, train_step, params_finite)
  return _BUILD_CACHE[key]


def abstract_train_state(init_fn: Any, sharding: Any) -> state_lib.TrainState:
  """The state's leaves as ShapeDtypeStruct placed with `sharding` (no computation).

  What checkpoint restore and the ahead-of-time compile (gandance_jax/aot.py) take in
  place of the real state.
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init_fn))


def _place(tree: Any, sharding: Any) -> Any:
  """Host (numpy) leaves -> global arrays with `sharding` (every process holds the same
  values); jax.Arrays are kept as they are."""
  from gandance_jax import multihost  # pylint: disable=g-import-not-at-top
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else multihost.to_global(x, sharding), tree)


def train(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Trains (or resumes) the run in `workdir`; returns the final state.

  Raises:
    NonFiniteLossError: a loss or the state became non-finite (the last good checkpoint
      is kept).
    Preempted: SIGTERM was received (after saving a checkpoint).
  """
  # clu's writers import TensorFlow (seconds): only here, so that tools that just build the
  # step (gandance_jax/aot.py) start fast.
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

  # --- 1. Config, mesh, input. ------------------------------------------------------
  config_lib.validate_config(config)
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  checkpoint_lib.save_config(workdir, config)
  mesh = sharding_lib.make_mesh(config.mesh.data)
  sharding_lib.check_batch_size(config, mesh)
  replicated = sharding_lib.replicated(mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  from gandance_jax.data import make_source  # pylint: disable=g-import-not-at-top
  source = make_source(config.data)
  _check_source(config, source)
  batch_size = int(t.batch_size)
  num_steps = total_steps(config)
  logging.info("Training %s: %d steps of %d images on %d devices (%d processes); workdir %s",
               config.data.name, num_steps, batch_size, mesh.devices.size,
               jax.process_count(), workdir)

  # --- 2. Models, optimizers, jitted phases, state (built replicated). ------------------
  G, D, init_fn, train_step, params_finite = _build(config, mesh)
  abstract_state = abstract_train_state(init_fn, replicated)

  # --- 3. Checkpoint: resume or start. -----------------------------------------------
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(abstract_state)
  if restored is not None:
    state, step = restored
    logging.info("Resumed from the checkpoint at step %d.", step)
  else:
    state, step = init_fn(), 0
    if t.init_from:
      from gandance_jax import warm_start  # pylint: disable=g-import-not-at-top
      state = _place(warm_start.apply(state, config), replicated)
      logging.info("Started from the pre-trained networks of %s (empty-class row: %s).",
                   t.init_from, t.init_empty)
    else:
      logging.info("Started from scratch (seed %d).", config.seed)
  num_params = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  logging.info("G: %d params, D: %d params, num_ws %d", num_params(state.g_params),
               num_params(state.d_params), G.num_ws)
  last_saved = step if restored is not None else -1

  # --- 4. Step function, writers, hooks. ----------------------------------------------
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.log_every_steps)
  metrics_path = os.path.join(workdir, METRICS_FILE)
  buffer = MetricsBuffer()
  watcher = PreemptionWatcher()
  progress_bar = None
  if jax.process_index() == 0 and sys.stderr.isatty():
    import tqdm  # pylint: disable=g-import-not-at-top
    progress_bar = tqdm.tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True)

  grid_labels = np.repeat(np.arange(G.num_classes, dtype=np.int32), config.grid_per_class)
  grid_z = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(config.seed), 7),
                                        (grid_labels.size, G.z_dim)))

  def write_grid(name: str) -> None:
    from gandance_jax import digits_eval  # pylint: disable=g-import-not-at-top
    sample = digits_eval.make_sampler(G, replicated)
    images = sample(state.g_ema_variables, grid_z, grid_labels)
    if jax.process_index() == 0:
      images_lib.class_rows_grid(os.path.join(workdir, name), images, grid_labels,
                                 config.grid_per_class)

  def class_accuracy() -> dict[str, float]:
    if config.data.name != "digits" or not config.class_accuracy.num_per_class:
      return {}
    from gandance_jax import digits_eval  # pylint: disable=g-import-not-at-top
    return digits_eval.evaluate_generator(
        G, state.g_ema_variables, config.class_accuracy.num_per_class, seed=config.seed,
        batch_size=config.sample.batch_size, sharding=replicated)

  def save_checkpoint() -> None:
    nonlocal last_saved
    if step == last_saved:
      return
    log_metrics()  # raises on non-finite losses before anything bad is saved
    if not bool(sharding_lib.fetch(params_finite(state))):
      raise NonFiniteLossError(f"non-finite parameters after step {step}")
    ckpt.save(state, step, config)
    last_saved = step

  tick = {"time": time.time(), "step": step}

  def log_metrics() -> None:
    rows = buffer.flush()
    if not rows:
      return
    means = _interval_means(rows)
    now = time.time()
    elapsed = max(now - tick["time"], 1e-9)
    means["images_per_sec"] = (step - tick["step"]) * batch_size / elapsed
    means["kimg"] = step * batch_size / 1000
    tick.update(time=now, step=step)
    writer.write_scalars(step, means)
    # One record per flush: `step` = steps done, values = means over the interval.
    _append_jsonl(metrics_path, {"step": step, **means})

  evaluator = None
  if config.evals:
    # pylint: disable-next=g-import-not-at-top
    from gandance_jax.evaluation import evaluator as evaluator_lib
    evaluator = evaluator_lib.Evaluator(config, workdir)

  best = None
  if config.get("best_metric", ""):
    best = checkpoint_lib.BestSnapshot(workdir, config.best_metric, config.best_mode)

  def run_evals(final: bool) -> None:
    if evaluator is not None:
      metrics = evaluator.run(G, state.g_ema_variables, step,
                              specs=evaluator.specs if final else None, writer=writer,
                              metrics_path=metrics_path)
      if best is not None:
        best.update(state, step, metrics, config)

  def write_curves() -> None:
    if jax.process_index() != 0:
      return
    from gandance_jax import curves  # pylint: disable=g-import-not-at-top
    try:
      logging.info("Training curves: %s", curves.plot(workdir))
    except Exception as e:  # pylint: disable=broad-except
      # A picture must never cost a finished run: say why and go on.
      logging.warning("could not plot the training curves: %s: %s", type(e).__name__, e)

  # --- 5. Loop. --------------------------------------------------------------------
  batches = sharding_lib.global_batches(source.batches(batch_size, start_step=step),
                                        batch_sharding, prefetch=config.prefetch)
  try:
    with metric_writers.ensure_flushes(writer):
      while step < num_steps:
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          batch = next(batches)
          state, metrics = train_step(state, batch, step)
        buffer.add(step, metrics)
        step += 1
        report_progress(step, time.time())
        if progress_bar is not None:
          progress_bar.update(1)
        if step % config.log_every_steps == 0 or step == num_steps:
          log_metrics()
        if step % config.sample_every_steps == 0:
          write_grid(f"grid_{step:08d}.png")
        every = config.class_accuracy.every_steps
        if every and step % every == 0 and step < num_steps:
          acc = class_accuracy()
          if acc:
            writer.write_scalars(step, acc)
            _append_jsonl(metrics_path, {"step": step, **acc})
        if evaluator is not None and step < num_steps and evaluator.due(step):
          run_evals(final=False)
        if step % config.checkpoint_every_steps == 0:
          save_checkpoint()
        if watcher.should_stop(step):
          save_checkpoint()
          ckpt.wait()
          logging.warning("Preempted: checkpoint saved at step %d; exiting.", step)
          raise Preempted(step)

      # --- 6. End: final checkpoint, grid, class accuracy. -----------------------------
      save_checkpoint()
      write_grid("grid_final.png")
      acc = class_accuracy()
      if acc:
        logging.info("Class accuracy of G EMA samples at step %d: %s", step, acc)
        writer.write_scalars(step, acc)
        _append_jsonl(metrics_path, {"step": step, "final": True, **acc})
      run_evals(final=True)
      write_curves()
  except NonFiniteLossError as e:
    ckpt.wait()
    good = ckpt.latest_step()
    raise NonFiniteLossError(
        f"{e}. Training stopped; the last good checkpoint is "
        f"{'step ' + str(good) if good is not None else 'none'} in {ckpt.directory}.") from None
  finally:
    watcher.close()
    if progress_bar is not None:
      progress_bar.close()
    ckpt.close()
    if best is not None:
      best.close()
  return state
