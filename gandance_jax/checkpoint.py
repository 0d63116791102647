"""Orbax checkpoints of the train state, the config beside them, and `load_generator`.

Storage only: this module knows nothing of training. A state is any dataclass pytree with
the fields `g_ema_params` and `g_buffers` (train/state.py's TrainState); its structure comes
from the abstract state the caller passes to `restore`.

Layout of a workdir::

  config.json                     the run's config (written at start by process 0)
  checkpoints/<step>/train/       TrainState minus G EMA and G buffers (Orbax, OCDBT)
  checkpoints/<step>/g_ema/       {'params': G EMA params, 'buffers': G buffers incl. w_avg}
  checkpoints/<step>/meta/        JSON: step, config, a fingerprint of each item
  corrupt_checkpoints/<step>-<t>  checkpoints that failed to restore, moved aside
  best_checkpoint/<step>/         G EMA + meta of the best in-loop evaluation so far
                                  (config.best_metric; `BestSnapshot`)

Saving is asynchronous (`CheckpointManager` with async checkpointing: the arrays are copied
off the devices before `save` returns, the files are written in a background thread), keeps
the newest `keep` checkpoints, and commits atomically: Orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save (SIGKILL included) leaves
only complete checkpoints behind.

Corruption: a missing or truncated file makes Orbax raise; a flipped bit may not, so each
item also carries a fingerprint (a position-weighted sum of the raw bits of every leaf,
computed on the devices) that is checked after restoring. A checkpoint that fails either way
is reported, moved to `corrupt_checkpoints/`, and the previous one is used.

`g_ema` is its own item so that sampling and evaluation (`load_generator`) read only the
generator, on any device count, without building optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gandance_jax import errors
from gandance_jax.networks import biggan, families, stylegan2

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"  # One JSON record per line: {"step": ..., metric: value}.
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
BEST_DIR = "best_checkpoint"
_G_EMA_FIELDS = ("g_ema_params", "g_buffers")
STANDING_STATS_KEY = 11    # fold_in purpose of the seed's key for BigGAN's standing statistics.
STANDING_BATCH_MAX = 256   # Largest batch of one standing-statistics forward.

PyTree = Any
TrainState = Any  # A dataclass pytree with g_ema_params and g_buffers (train/state.py).


class CorruptCheckpointError(errors.UserError, RuntimeError):
  """A checkpoint could not be restored or its fingerprint does not match (exit 2)."""

  exit_code = errors.ExitCode.BAD_INPUT


class MissingCheckpointError(errors.UserError, FileNotFoundError):
  """No (readable) checkpoint where one was asked for; the message names the directory and
  the steps there are (exit 2)."""

  exit_code = errors.ExitCode.BAD_INPUT


class SaveFailedError(errors.WorkdirIOError):
  """An asynchronous checkpoint save failed (disk full, permission): training stops at once,
  the last committed checkpoint is kept and the save's temporaries are removed (exit 4)."""


# ----------------------------------------------------------------------------- config


def config_to_json(config: Mapping[str, Any]) -> str:
  """The JSON text of a run's config (its plain-dict form, e.g. `HParams.config`)."""
  return json.dumps(config, indent=2, sort_keys=True)


def save_config(workdir: str, config: Mapping[str, Any]) -> None:
  """Writes `workdir/config.json` atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config_to_json(config))
  os.replace(tmp, path)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """[(dotted field, old value, new value)] where two configs differ, sorted by field.

  Both sides are compared in their JSON form (tuples and lists are one thing, as in
  config.json); a field present on one side only shows `MISSING` on the other.
  """
  a, b = json.loads(config_to_json(old)), json.loads(config_to_json(new))
  out: list[tuple[str, Any, Any]] = []

  def walk(prefix: str, x: Any, y: Any) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
      for k in sorted(set(x) | set(y)):
        walk(f"{prefix}{k}.", x.get(k, MISSING), y.get(k, MISSING))
    elif x != y:
      out.append((prefix[:-1], x, y))

  walk("", a, b)
  return out


MISSING = "<absent>"  # config_diff's value of a field one config does not have


def config_from_dict(d: dict[str, Any]) -> ml_collections.ConfigDict:
  """A ConfigDict from its JSON form (lists of numbers become tuples, as configs use them)."""
  def fix(v):
    if isinstance(v, dict):
      return {k: fix(x) for k, x in v.items()}
    if isinstance(v, list):
      return tuple(fix(x) for x in v)
    return v
  return ml_collections.ConfigDict(fix(d))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved in `workdir/config.json`."""
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    return config_from_dict(json.load(f))


# ----------------------------------------------------------------------------- fingerprint


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  x = jnp.ravel(x)
  if x.dtype.itemsize != 4:
    x = x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  # Position weights (odd, Knuth's multiplicative hash) make swaps and flips visible;
  # uint32 arithmetic wraps, which is what we want.
  weights = jnp.arange(x.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


def fingerprint(tree: PyTree) -> jax.Array:
  """uint32 []: a checksum of every leaf's bits and position (not cryptographic)."""
  leaves = jax.tree.leaves(tree)
  total = jnp.uint32(0)
  for i, leaf in enumerate(leaves):
    total = total + _leaf_fingerprint(leaf) * jnp.uint32(2 * i + 1)
  return total


_fingerprint_jit = jax.jit(fingerprint)


def _fetch_int(x: jax.Array) -> int:
  if x.is_fully_addressable:
    return int(np.asarray(x))
  return int(np.asarray(x.addressable_data(0)))


def _split_state(state: TrainState) -> tuple[dict[str, Any], dict[str, Any]]:
  """(train item, g_ema item): every field once; G buffers live with G EMA."""
  train = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
           if f.name not in _G_EMA_FIELDS}
  g_ema = {"params": state.g_ema_params, "buffers": state.g_buffers}
  return train, g_ema


def _join_state(like: TrainState, train: dict[str, Any], g_ema: dict[str, Any]) -> TrainState:
  """The inverse of `_split_state`, as an instance of `like`'s class."""
  return type(like)(g_ema_params=g_ema["params"], g_buffers=g_ema["buffers"], **train)


# ----------------------------------------------------------------------------- manager


def _restore(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState,
             meta_out: dict[str, Any] | None = None) -> TrainState:
  """Restores `step` into the shardings of `abstract_state`, fingerprints checked; the
  checkpoint's metadata goes into `meta_out` if given."""
  abstract_train, abstract_g_ema = _split_state(abstract_state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        train=ocp.args.StandardRestore(abstract_train),
        g_ema=ocp.args.StandardRestore(abstract_g_ema), meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpointError(f"step {step}: {type(e).__name__}: {e}") from e
  meta = restored.meta
  for name, item in (("train", restored.train), ("g_ema", restored.g_ema)):
    got, want = _fetch_int(_fingerprint_jit(item)), meta.get(f"fingerprint_{name}")
    if got != want:
      raise CorruptCheckpointError(
          f"step {step}: fingerprint of item '{name}' is {got}, expected {want}")
  if meta_out is not None:
    meta_out.clear()
    meta_out.update(meta)
  return _join_state(abstract_state, restored.train, restored.g_ema)


class Checkpointer:
  """Async, keep-N, atomically committed checkpoints of a `TrainState` under a workdir."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    # cleanup_tmp_directories: a run killed mid-save leaves an uncommitted temporary
    # directory; remove it on restart (it is never read, it only takes space).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("train", "g_ema", "meta"))
    self._pending: int | None = None  # the step of the async save in flight
    self.restored_meta: dict[str, Any] = {}  # metadata of the last restored checkpoint

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, step: int, config: Mapping[str, Any],
           extra_meta: Mapping[str, Any] | None = None) -> None:
    """Starts an async save of `state` at `step` (returns once the arrays are off-device).

    `extra_meta`: JSON-able values stored beside (`restored_meta` after a restore).

    Raises SaveFailedError if the previous save failed (checked first: a run must not go on
    with its newest progress unsaved).
    """
    self.wait()
    train, g_ema = _split_state(state)
    meta = dict(step=int(step),
                fingerprint_train=_fetch_int(_fingerprint_jit(train)),
                fingerprint_g_ema=_fetch_int(_fingerprint_jit(g_ema)),
                config=dict(config), time=time.time(), **dict(extra_meta or {}))
    self.manager.save(int(step), args=ocp.args.Composite(
        train=ocp.args.StandardSave(train), g_ema=ocp.args.StandardSave(g_ema),
        meta=ocp.args.JsonSave(meta)), force=True)
    self._pending = int(step)

  def _temporaries(self) -> list[str]:
    if not os.path.isdir(self.directory):
      return []
    return [os.path.join(self.directory, n) for n in os.listdir(self.directory)
            if ".orbax-checkpoint-tmp" in n]

  def wait(self) -> None:
    """Waits for the pending async save; raises SaveFailedError (temporaries removed, the
    committed checkpoints kept) if it failed."""
    step, self._pending = self._pending, None
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
      # Orbax logs (and swallows) a failed finalisation: the step is then not committed.
      ok = jax.process_count() > 1 or os.path.isdir(os.path.join(self.directory, str(step)))
      cause = None if ok else "the step directory was not committed"
    except Exception as e:  # pylint: disable=broad-except
      cause = f"{type(e).__name__}: {errors.one_line(e)}"
    if cause is None:
      return
    if jax.process_index() == 0:
      for tmp in self._temporaries():
        shutil.rmtree(tmp, ignore_errors=True)
    self.manager.reload()
    good = self.manager.latest_step()
    raise SaveFailedError(
        f"saving the checkpoint of step {step} in {self.directory} failed ({cause[:500]}); "
        f"training stopped. The last good checkpoint is "
        f"{'step ' + str(good) if good is not None else 'none'}; free space or fix the "
        "permissions and re-run the command to resume from it")

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()

  def _quarantine(self, step: int, error: Exception) -> None:
    logging.error("Checkpoint at step %d in %s is corrupted (%s: %s); moving it to %s and "
                  "using the previous one.", step, self.directory, type(error).__name__,
                  str(error)[:500], CORRUPT_DIR)
    if jax.process_index() == 0:
      dst = os.path.join(self.workdir, CORRUPT_DIR, f"{step}-{int(time.time())}")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"gandance_quarantine_{step}")
    self.manager.reload()

  def restore(self, step: int, abstract_state: TrainState) -> TrainState:
    """Restores `step` into the shardings of `abstract_state`; raises CorruptCheckpointError."""
    return _restore(self.manager, step, abstract_state, self.restored_meta)

  def restore_latest(self, abstract_state: TrainState, restart_if_unreadable: bool = False
                     ) -> tuple[TrainState, int] | None:
    """(state, step) of the newest readable checkpoint, or None if there is none.

    Unreadable checkpoints newer than the restored one are reported (logging.error) and
    moved to `corrupt_checkpoints/`. When none is readable nothing is moved (a state of
    another shape, e.g. a changed config, fails every checkpoint: they are not corrupt) and
    CorruptCheckpointError lists them, unless `restart_if_unreadable`: then they are moved
    aside and None is returned (a fresh start).
    """
    failed: list[tuple[int, CorruptCheckpointError]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state = self.restore(step, abstract_state)
      except CorruptCheckpointError as e:
        failed.append((step, e))
        continue
      for bad, error in failed:
        self._quarantine(bad, error)
      return state, step
    if failed and not restart_if_unreadable:
      details = "; ".join(f"{e}"[:300] for _, e in failed)
      raise CorruptCheckpointError(
          f"no checkpoint in {self.directory} can be restored into this run's state "
          f"(steps {[s for s, _ in failed]}; nothing was moved): {details}. If the config "
          "changed, use the config of config.json or a new --workdir; to start this workdir "
          "from scratch (the checkpoints are moved to corrupt_checkpoints/) pass "
          "--restart_from_scratch")
    for bad, error in failed:
      self._quarantine(bad, error)
    return None


# ----------------------------------------------------------------------------- other runs


def load_state(workdir: str, abstract_state: TrainState, step: int | None = None
               ) -> tuple[TrainState, int]:
  """The whole state (numpy leaves) of another run, read-only, shaped like `abstract_state`.

  For warm starts (gandance_jax/train/warm_start.py). Unlike `Checkpointer.restore_latest`, an
  unreadable checkpoint is skipped without being moved: the other run's files are never
  touched.

  Raises:
    FileNotFoundError if `workdir` has no readable checkpoint (or none at `step`).
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  if not os.path.isdir(directory):
    raise MissingCheckpointError(f"no checkpoints in {directory}")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_state)
  manager = ocp.CheckpointManager(directory, item_names=("train", "g_ema", "meta"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise MissingCheckpointError(
            f"no checkpoint at step {step} in {directory} (have {steps})")
      steps = [step]
    problems = []
    for s in steps:
      try:
        return jax.tree.map(np.asarray, _restore(manager, s, abstract)), s
      except CorruptCheckpointError as e:
        logging.error("checkpoint %d in %s is unreadable (%s); trying the previous one", s,
                      directory, e)
        problems.append(str(e)[:200])
  finally:
    manager.close()
  raise MissingCheckpointError(f"no readable checkpoint in {directory}: {problems}")


# ----------------------------------------------------------------------------- generator


def load_generator_from(workdir: str, which: str = "latest", **kwargs: Any
                        ) -> tuple[stylegan2.Generator, dict[str, Any],
                                   ml_collections.ConfigDict, int]:
  """`load_generator` by name: 'latest', 'best' (the best in-loop snapshot) or a step number
  (main.py's --checkpoint flag). Raises ValueError naming a bad value."""
  which = str(which).strip()
  if which == "latest":
    return load_generator(workdir, **kwargs)
  if which == "best":
    return load_generator(workdir, best=True, **kwargs)
  if which.isdigit():
    return load_generator(workdir, int(which), **kwargs)
  raise errors.BadInputError(
      f"--checkpoint = {which!r} is invalid: 'latest', 'best' or a step number")



class BestSnapshot:
  """The G EMA of the best in-loop evaluation so far, under `<workdir>/best_checkpoint/`.

  Training keeps only the newest `keep_checkpoints` checkpoints; the snapshot of the step
  with the best `config.best_metric` (e.g. 'fid10k/fid@1.3', lower is better with
  best_mode='min') is kept apart so that it is never rotated away. It holds the `g_ema` item
  and its metadata in the same layout as a checkpoint, so `load_generator(workdir,
  best=True)` reads it. Every process must call `update` (Orbax saves are collective).
  """

  def __init__(self, workdir: str, metric: str, mode: str = "min"):
    if mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {mode!r}")
    self.metric, self.mode = metric, mode
    self.directory = os.path.abspath(os.path.join(workdir, BEST_DIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("g_ema", "meta"))
    self.value: float | None = None
    self.step: int | None = None
    latest = self.manager.latest_step()
    if latest is not None:  # A resumed run competes with the best of its earlier part.
      meta = self.manager.restore(latest, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore())).meta
      if meta.get("best_metric") == metric:
        self.value, self.step = float(meta["best_value"]), int(latest)

  def better(self, value: float) -> bool:
    if self.value is None:
      return True
    return value < self.value if self.mode == "min" else value > self.value

  def update(self, state: TrainState, step: int, metrics: dict[str, float],
             config: Mapping[str, Any]) -> bool:
    """Saves state's G EMA if metrics[metric] beats the best so far; returns whether it did."""
    if self.metric not in metrics:
      return False
    value = float(metrics[self.metric])
    if not np.isfinite(value) or not self.better(value):
      return False
    _, g_ema = _split_state(state)
    meta = dict(step=int(step), fingerprint_g_ema=_fetch_int(_fingerprint_jit(g_ema)),
                config=dict(config), best_metric=self.metric,
                best_value=value, best_mode=self.mode, time=time.time())
    self.manager.save(int(step), args=ocp.args.Composite(
        g_ema=ocp.args.StandardSave(g_ema), meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()
    logging.info("New best %s = %.6g at step %d (previous: %s); G EMA saved in %s",
                 self.metric, value, step, self.value, self.directory)
    self.value, self.step = value, int(step)
    return True

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def standing_stats(G: biggan.Generator, variables: Mapping[str, Any], seed: int,
                   num_accumulations: int, batch_size: int, num_D_steps: int
                   ) -> dict[str, Any]:
  """BigGAN G EMA's variables with standing statistics (`biggan.accumulate_standing_stats`)
  over `num_accumulations` forwards of one D step's batch (batch_size / num_D_steps, at most
  STANDING_BATCH_MAX: the reference's per-iteration batch), from a key of the run's seed;
  unchanged when num_accumulations is 0. Training and `load_generator` both use this, so a
  run's grids and evaluations and the CLIs sample the same generator."""
  if num_accumulations <= 0:
    return dict(variables)
  key = jax.random.fold_in(jax.random.key(int(seed)), STANDING_STATS_KEY)
  batch = min(int(batch_size) // int(num_D_steps), STANDING_BATCH_MAX)
  return biggan.accumulate_standing_stats(G, variables, key, int(num_accumulations), batch)


def _biggan_sampling_variables(G: biggan.Generator, item: Mapping[str, Any],
                               config: ml_collections.ConfigDict) -> dict[str, Any]:
  """BigGAN's G EMA {'params', 'batch_stats'} from its g_ema item, with the run's standing
  statistics (config.train.standing_stats)."""
  variables = {"params": item["params"], biggan.STATS: item["buffers"]["ema_batch_stats"]}
  t = config.train
  return standing_stats(G, variables, int(config.seed), int(t.get("standing_stats", 0) or 0),
                        int(t.batch_size), int(t.get("num_D_steps", 1)))


def load_generator(workdir: str, step: int | None = None, *,
                   sharding: jax.sharding.Sharding | None = None, best: bool = False
                   ) -> tuple[stylegan2.Generator, dict[str, Any], ml_collections.ConfigDict,
                              int]:
  """Loads the EMA generator of a training run, for sampling and evaluation.

  Reads only the `g_ema` item (EMA params and the buffers, including the tracked `w_avg`)
  of the newest checkpoint (or of `step`), without building optimizer state. With
  `step=None` a corrupted newest checkpoint is reported and the previous one used.

  Args:
    workdir: the training run's --workdir.
    step: a checkpoint step, or None for the newest readable one.
    sharding: where to put the variables; default: replicated over all devices (works for
      any device count, and for several processes when every process calls this).
    best: read the best in-loop snapshot (`BestSnapshot`, config.best_metric) instead.
  Returns:
    (G module, {'params', 'buffers'} variables (BigGAN: {'params', 'batch_stats'} of G EMA,
    standing statistics re-estimated if the run's train.standing_stats > 0), the run's
    config, the step).
  Raises:
    FileNotFoundError if there is no (readable) checkpoint.
  """
  directory = os.path.abspath(os.path.join(workdir, BEST_DIR if best else CHECKPOINT_DIR))
  if best and not os.path.isdir(directory):
    raise MissingCheckpointError(
        f"no best snapshot in {directory}: set config.best_metric to an in-loop evaluation "
        "metric, e.g. 'fid/fid@1.3', and train")
  if not os.path.isdir(directory):
    raise MissingCheckpointError(f"no checkpoints in {directory}")
  manager = ocp.CheckpointManager(
      directory, item_names=("g_ema", "meta") if best else ("train", "g_ema", "meta"),
      options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise MissingCheckpointError(
          f"no checkpoint at step {step} in {directory} (have {steps})")
    steps = [step]
  if sharding is None:
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
  problems = []
  for s in steps:
    try:
      meta = manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      config = config_from_dict(meta["config"])
      G = families.make_generator(config.generator.to_dict())
      abstract = jax.eval_shape(lambda: families.init_generator(G, jax.random.key(0)))
      if families.is_biggan(G):  # The g_ema item of BigGAN (train/state.py's layout).
        stats = abstract[biggan.STATS]
        abstract = {"params": abstract["params"],
                    "buffers": {"batch_stats": stats, "ema_batch_stats": stats}}
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
      g_vars = manager.restore(s, args=ocp.args.Composite(
          g_ema=ocp.args.StandardRestore(abstract))).g_ema
      got = _fetch_int(_fingerprint_jit(g_vars))
      if got != meta["fingerprint_g_ema"]:
        raise CorruptCheckpointError(f"fingerprint {got} != {meta['fingerprint_g_ema']}")
      manager.close()
      if families.is_biggan(G):
        g_vars = _biggan_sampling_variables(G, g_vars, config)
      return G, dict(g_vars), config, s
    except Exception as e:  # pylint: disable=broad-except
      logging.error("Generator checkpoint at step %d in %s is unreadable (%s: %s)%s", s,
                    directory, type(e).__name__, str(e)[:300],
                    "; trying the previous one" if step is None else "")
      problems.append(f"step {s}: {type(e).__name__}: {str(e)[:200]}")
  manager.close()
  raise MissingCheckpointError(f"no readable checkpoint in {directory}: {problems}")


# ----------------------------------------------------------------------------- metrics


def metrics_path(workdir: str) -> str:
  """`<workdir>/metrics.jsonl`: the run's numbers, one JSON record per line."""
  return os.path.join(workdir, METRICS_FILE)


def append_metrics(path: str, record: Mapping[str, Any]) -> None:
  """Appends one JSON record to a metrics file (process 0 only; the others hold the same)."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(dict(record)) + "\n")
