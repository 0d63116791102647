"""Checkpoints: fingerprints, a corrupted newest checkpoint, and bit-for-bit resumption after
SIGKILL and SIGTERM (trainer subprocesses of `gandance_jax.main` on the tiny config)."""

from __future__ import annotations

import glob
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import checkpoint
from gandance_jax.train import loop
from tests import _mp_common as common


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
  return common.shared_dir(tmp_path_factory)


def test_fingerprint_sees_a_flipped_bit():
  tree = {"a": jnp.arange(6, dtype=jnp.float32), "b": {"c": jnp.ones((2, 2), jnp.int32)}}
  base = int(checkpoint.fingerprint(tree))
  flipped = np.asarray(tree["a"]).view(np.uint32).copy()
  flipped[3] ^= 1
  other = dict(tree, a=jnp.asarray(flipped.view(np.float32)))
  assert int(checkpoint.fingerprint(other)) != base
  swapped = dict(tree, a=tree["a"][::-1])
  assert int(checkpoint.fingerprint(swapped)) != base
  assert int(checkpoint.fingerprint(tree)) == base


def _data_files(step_dir):
  files = glob.glob(os.path.join(step_dir, "train", "**", "d", "*"), recursive=True)
  return sorted(files, key=os.path.getsize)


def _flip_a_byte(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(data)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# Orbax's async machinery may report a closed asyncio loop at interpreter-level cleanup.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, os.remove])
def test_corrupted_newest_checkpoint_is_reported_and_previous_used(tmp_path, caplog, damage):
  hp = common.tiny_hparams()   # 24 steps, checkpoints 16, 20, 24 kept
  workdir = str(tmp_path / "run")
  final = loop.train(hp, workdir)
  want = jax.tree.map(np.asarray, final)
  # Every data file of the newest checkpoint (a single file may hold only unused bytes).
  for path in _data_files(os.path.join(workdir, "checkpoints", "24")):
    damage(path)

  with caplog.at_level(logging.ERROR):
    resumed = loop.train(hp, workdir)      # restores step 20, recomputes 21..24
  assert any("step 24" in r.getMessage() and "corrupted" in r.getMessage()
             for r in caplog.records)
  assert len(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == 1
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [
      16, 20, 24]
  # The recomputed steps are bit-for-bit those of the first run.
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, resumed), want)


def test_sigkill_and_sigterm_then_restart_resume_bit_for_bit(shared, tmp_path):
  """Killed (SIGKILL) after its first checkpoint, restarted, preempted (SIGTERM: saves a
  checkpoint off the 4-step schedule and exits 143), restarted again: the finished run
  equals the uninterrupted reference bit for bit (per-step losses and final state)."""
  reference = common.reference_run(shared)
  workdir = tmp_path / "interrupted"
  trainer = common.Trainer(workdir, shared / "xla", log_path=tmp_path / "run1.log")
  first = common.wait_for_checkpoint(workdir, trainer)
  trainer.proc.send_signal(signal.SIGKILL)
  assert trainer.wait(timeout=60) == -signal.SIGKILL, "the trainer finished before the kill"
  assert first < common.NUM_STEPS

  trainer = common.Trainer(workdir, shared / "xla", log_path=tmp_path / "run2.log")
  common.wait_for_checkpoint(workdir, trainer, after=first)
  trainer.proc.send_signal(signal.SIGTERM)
  assert trainer.wait(timeout=120) == 143, trainer.log()[-5000:]
  log = trainer.log()
  assert f"Resumed from the checkpoint at step {first}" in log
  assert "Preempted: checkpoint saved at step" in log
  saved = int(log.split("Preempted: checkpoint saved at step ")[1].split(";")[0])
  assert first < saved < common.NUM_STEPS
  assert str(saved) in os.listdir(workdir / "checkpoints")

  result = common.run_main(workdir, shared / "xla")
  assert result.returncode == 0, result.stderr[-5000:]
  assert f"Resumed from the checkpoint at step {saved}" in result.stderr
  common.assert_same_run(reference, workdir)
