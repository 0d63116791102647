"""BigGAN killed and preempted mid-run resumes bit for bit, as the StyleGAN2 trainer does
(tests/test_checkpoint.py): a `gandance_jax.main` subprocess on configs/biggan_digits.py:shrink
is SIGKILLed after its first checkpoint, restarted, SIGTERMed (it saves a checkpoint off the
schedule and exits 143), restarted again; the finished run equals an uninterrupted one in
every loss of every step and in every leaf of the final state: G, D, both optimisers, the
BN running statistics and spectral-norm vectors (non-trainable collections that train mode
writes back), G EMA and the step counters of the D/G schedule.

Slow (excluded from CI): four processes each load BigGAN's compiled phases (compiled once,
then read from the shared XLA cache); 4 min 2 s on 2 cores shared with a BigGAN
training and a StyleGAN2 training (`pytest -m slow tests/test_biggan_resume.py`)."""

from __future__ import annotations

import signal

import jax
import numpy as np
import pytest

from tests import _mp_common as common

CONFIG = common.BIGGAN_CONFIG
NUM_STEPS = 12


def _flags() -> list[str]:
  # A checkpoint every 2 steps, so that steps remain after the first one.
  return common.biggan_flags(NUM_STEPS, checkpoint_every_steps=2)


LOSS_KEYS = ("loss/G", "loss/D", "loss/D_real", "loss/D_fake", "scores/real", "scores/fake",
             "ema_beta")


def _trainer(workdir, cache, log_path) -> common.Trainer:
  return common.Trainer(workdir, cache, *_flags(), log_path=log_path, config=CONFIG,
                        tiny=False)


@pytest.mark.slow
def test_biggan_sigkill_and_sigterm_then_restart_resume_bit_for_bit(tmp_path):
  cache = tmp_path / "xla"
  reference = common.run_main(tmp_path / "reference", cache, *_flags(), config=CONFIG,
                              tiny=False, timeout=900)
  assert reference.returncode == 0, reference.stderr[-5000:]

  workdir = tmp_path / "interrupted"
  trainer = _trainer(workdir, cache, tmp_path / "run1.log")
  first = common.wait_for_checkpoint(workdir, trainer, timeout=900)
  trainer.proc.send_signal(signal.SIGKILL)
  assert trainer.wait(timeout=60) == -signal.SIGKILL, "the trainer finished before the kill"
  assert first < NUM_STEPS

  trainer = _trainer(workdir, cache, tmp_path / "run2.log")
  common.wait_for_checkpoint(workdir, trainer, after=first, timeout=900)
  trainer.proc.send_signal(signal.SIGTERM)
  assert trainer.wait(timeout=300) == 143, trainer.log()[-5000:]
  log = trainer.log()
  assert f"Resumed from the checkpoint at step {first}" in log
  saved = int(log.split("Preempted: checkpoint saved at step ")[1].split(";")[0])
  assert first < saved < NUM_STEPS

  result = common.run_main(workdir, cache, *_flags(), config=CONFIG, tiny=False, timeout=900)
  assert result.returncode == 0, result.stderr[-5000:]
  assert f"Resumed from the checkpoint at step {saved}" in result.stderr

  # Every loss of every step (the killed run's rows for steps it recomputed are replaced
  # by the later ones: read_metrics keeps the last), bit for bit.
  ref_rows = common.read_metrics(tmp_path / "reference")
  got_rows = common.read_metrics(workdir)
  assert sorted(ref_rows) == sorted(got_rows) == list(range(1, NUM_STEPS + 1))
  for step in ref_rows:
    want = {k: ref_rows[step][k] for k in LOSS_KEYS if k in ref_rows[step]}
    assert set(want) >= {"loss/G", "loss/D"}, step
    assert {k: got_rows[step].get(k) for k in want} == want, f"step {step}"

  # The final state, every leaf, bit for bit (restored through the trainer's own
  # fingerprint-checked restore).
  a, b = common.restore_arrays(tmp_path / "reference"), common.restore_arrays(workdir)
  assert a["step"] == b["step"] == NUM_STEPS
  flat_a = jax.tree_util.tree_leaves_with_path({"train": a["train"], "g_ema": a["g_ema"]})
  flat_b = jax.tree_util.tree_leaves({"train": b["train"], "g_ema": b["g_ema"]})
  assert len(flat_a) == len(flat_b) > 100
  names = [jax.tree_util.keystr(p) for p, _ in flat_a]
  # The non-trainable collections are in the compared state (not only the parameters).
  assert any("stored_mean" in n for n in names) and any("['u" in n for n in names), names[:20]
  for (path, x), y in zip(flat_a, flat_b):
    assert np.array_equal(np.asarray(x), np.asarray(y)), f"{jax.tree_util.keystr(path)} differs"
