"""Shared by the trainer tests: a tiny digits config (8x8, a few thousand parameters) that
exercises every phase in a handful of steps, and a runner for `gandance_jax.main` in a
subprocess (needed for SIGKILL/SIGTERM, forced device counts and several processes).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every phase runs within a few steps: R1 every 4, path length every 2, ADA adjusts every
# 2, label reset and style mixing with probability 1/2. 24 steps, a checkpoint every 4 (the
# kill tests need steps left after the first checkpoint).
TINY = {
    "data.resolution": 8,
    "generator.resolution": 8, "generator.z_dim": 8, "generator.w_dim": 8,
    "generator.channel_base": 32, "generator.channel_max": 8, "generator.mapping_layers": 1,
    "discriminator.resolution": 8, "discriminator.channel_base": 32,
    "discriminator.channel_max": 8, "discriminator.mapping_layers": 1,
    "discriminator.mbstd_group_size": 4,
    "train.batch_size": 8, "train.total_kimg": 0.192, "train.r1_interval": 4,
    "train.pl_weight": 2.0, "train.pl_interval": 2, "train.style_mixing_prob": 0.5,
    "train.label_reset_prob": 0.5, "train.augment": "diffaugment_ada", "train.ada_interval": 2,
    "train.ada_kimg": 0.1, "train.ada_target": 0.0,
    "train.augment_policy": "color,translation,cutout",
    "log_every_steps": 1, "checkpoint_every_steps": 4, "sample_every_steps": 8,
    "grid_per_class": 2, "evals.class_accuracy.final": False, "sample.batch_size": 20,
}


def tiny_config(**overrides: Any):
  """The tiny config as a ConfigDict (in-process tests); overrides use '__' for '.'."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config("shrink")
  # The evaluators' default per-sample random noise (NVIDIA's protocol) compiles ~3x longer
  # on CPU; the in-process trainer tests do not test the protocol (test_evaluator does).
  # (Not in TINY: a --config flag cannot add a key the config file lacks.)
  values = {**TINY, "evals.class_accuracy.noise_mode": "const"}
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return set_fields(config, values)


def set_fields(config: Any, values: dict[str, Any]) -> Any:
  """Sets config fields by dotted name ('train.batch_size': 4); returns the config."""
  for dotted, value in values.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_hparams(**overrides: Any):
  """The tiny config's typed hyper-parameters (what the trainer takes)."""
  from gandance_jax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.validate_config(tiny_config(**overrides))


def tiny_flags(tiny: bool = True, **overrides: Any) -> list[str]:
  """The tiny config as command-line overrides of configs/digits.py:shrink (only
  `overrides` when not `tiny`, e.g. for another config file)."""
  values = dict(TINY) if tiny else {}
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return [f"--config.{k}={v}" for k, v in values.items()]


# configs/biggan_digits.py:shrink (ch 2, 32x32, batch 8 = 2 D steps of 4) with every phase
# within a few steps: label reset with p = 1/2, G EMA from step 2, DiffAugment; no sampling
# or evaluation (the BigGAN trainer tests are about the train step).
BIGGAN_CONFIG = "configs/biggan_digits.py:shrink"


def biggan_flags(num_steps: int, **overrides: Any) -> list[str]:
  """--config overrides (plus --mode=train) of a `num_steps`-step BigGAN trainer run;
  `overrides` use '__' for '.' as in tiny_config."""
  values = {
      "train.label_reset_prob": 0.5, "train.total_kimg": num_steps * 8 / 1000,
      "train.ema_start": 2, "train.standing_stats": 0, "log_every_steps": 1,
      "checkpoint_every_steps": 100, "sample_every_steps": 100,
      "evals.class_accuracy.final": False,
  }
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return [f"--config.{k}={v}" for k, v in values.items()] + ["--mode=train"]


def free_port() -> int:
  """A TCP port free on localhost now (for a jax.distributed coordinator)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def main_command(workdir: str | os.PathLike, cache_dir: str | os.PathLike,
                 *extra: str, config: str = "configs/digits.py:shrink", full_log: bool = True,
                 tiny: bool = True, **overrides: Any) -> list[str]:
  # full_log: the whole log on stderr (--alsologtostderr), as the tests that read a run's
  # INFO lines (resumed, started, preempted) need; the terminal a user sees is full_log=False.
  return [sys.executable, "-m", "gandance_jax.main", f"--config={config}",
          f"--workdir={workdir}", f"--compilation_cache_dir={cache_dir}",
          *tiny_flags(tiny, **overrides), *extra, *(["--alsologtostderr"] if full_log else [])]


def subprocess_env(num_devices: int = 1) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if num_devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  # Tests check equality across runs, not speed: XLA's cheapest optimisation level halves
  # the compile time of the tiny phases (all runs of a comparison use the same flags).
  flags.append("--xla_backend_optimization_level=0")
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def run_main(workdir, cache_dir, *extra: str, num_devices: int = 1, timeout: float = 300,
             full_log: bool = True, **overrides: Any) -> subprocess.CompletedProcess:
  return subprocess.run(main_command(workdir, cache_dir, *extra, full_log=full_log,
                                     **overrides), cwd=REPO,
                        env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout, check=False)


class Trainer:
  """A trainer subprocess whose log goes to a file (a pipe nobody reads would fill up and
  block the process, and with it any process waiting on it in a collective)."""

  def __init__(self, workdir, cache_dir, *extra: str, log_path, num_devices: int = 1,
               config: str = "configs/digits.py:shrink", tiny: bool = True, **overrides: Any):
    self.log_path = pathlib.Path(log_path)
    self._log = open(self.log_path, "w")
    self.proc = subprocess.Popen(main_command(workdir, cache_dir, *extra, config=config,
                                              tiny=tiny, **overrides),
                                 cwd=REPO, env=subprocess_env(num_devices),
                                 stdout=subprocess.DEVNULL, stderr=self._log, text=True)

  def wait(self, timeout: float = 300) -> int:
    try:
      return self.proc.wait(timeout=timeout)
    finally:
      self._log.close()

  def log(self) -> str:
    return self.log_path.read_text()


def read_metrics(workdir) -> dict[int, dict[str, float]]:
  """metrics.jsonl -> {step: merged records}; a value logged twice (killed run) keeps the
  last. Evaluation records of a step (in-loop FID) merge with its loss record."""
  out: dict[int, dict[str, float]] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if not record.get("final") and not record.get("eval"):
        out.setdefault(record["step"], {}).update(record)
  return out


def loss_rows(workdir) -> dict[int, dict[str, float]]:
  keys = ("loss/G", "loss/D", "loss/D_reg", "loss/G_reg", "augment_p", "scores/real")
  return {s: {k: r[k] for k in keys if k in r} for s, r in read_metrics(workdir).items()}


def restore_arrays(workdir, step: int | None = None) -> dict[str, Any]:
  """The state of a checkpoint as numpy arrays, through the trainer's own read-only restore
  (fingerprints checked), whatever topology saved it."""
  from gandance_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from gandance_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  state, step = state_lib.load_train_state(str(workdir), step)
  train, g_ema = checkpoint._split_state(state)  # pylint: disable=protected-access
  return {"step": step, "train": train, "g_ema": g_ema}


NUM_STEPS = 24


def shared_dir(tmp_path_factory) -> pathlib.Path:
  """The folder of the trainer tests' shared runs and XLA cache: one per test session, and
  under pytest-xdist one for all workers of the session (their base temp folders share a
  parent), so the reference run is made once, not once per worker."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = root / "trainer_shared"
  path.mkdir(exist_ok=True)
  return path


def reference_run(base: pathlib.Path) -> pathlib.Path:
  """The uninterrupted 1-device tiny run, made once per test session under `base` (a file
  lock: the first worker trains, the others wait for its DONE)."""
  workdir = base / "reference"
  with open(base / "reference.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "DONE").exists():
      if workdir.exists():  # a worker killed mid-run: start again
        import shutil  # pylint: disable=g-import-not-at-top
        shutil.rmtree(workdir)
      result = run_main(workdir, base / "xla")
      assert result.returncode == 0, result.stderr[-5000:]
      (workdir / "DONE").touch()
  return workdir


def wait_for_checkpoint(workdir, trainer: Trainer, after: int = 0, timeout: float = 300) -> int:
  """Polls until a committed checkpoint of a step > `after` exists; returns its step."""
  import time  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(workdir) / "checkpoints"
  deadline = time.time() + timeout
  while time.time() < deadline:
    if directory.is_dir():
      steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()
               and int(p.name) > after]
      if steps:
        return min(steps)
    if trainer.proc.poll() is not None:
      raise AssertionError(f"trainer exited ({trainer.proc.returncode}) before a checkpoint:"
                           f" {trainer.log()[-3000:]}")
    time.sleep(0.01)
  raise AssertionError("no checkpoint within the timeout")


def assert_same_run(workdir_a, workdir_b, exact: bool = True) -> None:
  """Final checkpoints and per-step losses are equal (bit-for-bit when `exact`)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  a, b = restore_arrays(workdir_a), restore_arrays(workdir_b)
  assert a["step"] == b["step"] == NUM_STEPS
  flat_a = jax.tree_util.tree_leaves_with_path({"train": a["train"], "g_ema": a["g_ema"]})
  flat_b = jax.tree_util.tree_leaves({"train": b["train"], "g_ema": b["g_ema"]})
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    if exact:
      assert np.array_equal(x, y), f"{jax.tree_util.keystr(path)} differs"
  losses_a, losses_b = loss_rows(workdir_a), loss_rows(workdir_b)
  assert sorted(losses_a) == sorted(losses_b) == list(range(1, NUM_STEPS + 1))
  if exact:
    assert losses_a == losses_b
