"""BigGAN trained a few steps in 2 local processes (jax.distributed, gloo collectives) equals
the same run in 1 process: the global batch is split 4/4 between the processes and BigGAN's
cross-replica batch norm takes its moments over the global batch, so losses, parameters,
BN running statistics, spectral-norm vectors and G EMA agree up to float reassociation
(and, for the biases that feed a batch norm, up to Adam's normalised float noise).

Slow (excluded from CI): each process compiles BigGAN's phases; ~6 min in all under
`nice -n 19` on 2 cores shared with other jobs (load ~9)."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import pytest

from tests import _mp_common as common

CONFIG = common.BIGGAN_CONFIG
NUM_STEPS = 4


def _flags() -> list[str]:
  return common.biggan_flags(NUM_STEPS)


def _loss_rows(workdir: pathlib.Path) -> dict[int, dict[str, Any]]:
  keys = ("loss/G", "loss/D", "loss/D_real", "loss/D_fake", "scores/real", "scores/fake",
          "scores/fake_g", "ema_beta")
  return {s: {k: r[k] for k in keys if k in r}
          for s, r in common.read_metrics(workdir).items()}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  cache = tmp_path / "xla"
  one = common.run_main(tmp_path / "one", cache, *_flags(), config=CONFIG, tiny=False,
                        timeout=900)
  assert one.returncode == 0, one.stderr[-5000:]

  port = common.free_port()
  trainers = [common.Trainer(tmp_path / "two", cache, *_flags(),
                             f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}", log_path=tmp_path / f"process_{i}.log",
                             config=CONFIG, tiny=False)
              for i in range(2)]
  try:
    codes = [t.wait(timeout=900) for t in trainers]
  finally:
    for t in trainers:
      if t.proc.poll() is None:
        t.proc.kill()
  texts = [t.log() for t in trainers]
  assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
  assert "on 2 devices (2 processes)" in texts[0]

  # The same losses at every step. float32 sums over another split of the batch (4 + 4
  # rows, then a cross-process sum) reassociate: ~1e-7 relative per op; after a few
  # steps of Adam with eps 1e-6 that grows, as in test_multiprocess (5e-6 after 24 steps).
  ref, got = _loss_rows(tmp_path / "one"), _loss_rows(tmp_path / "two")
  assert sorted(ref) == sorted(got) == list(range(1, NUM_STEPS + 1))
  for step, row in ref.items():
    assert set(got[step]) == set(row), step
    for name, value in row.items():
      np.testing.assert_allclose(got[step][name], value, rtol=1e-4, atol=1e-5,
                                 err_msg=f"{name} at step {step}")
  assert ref[1]["ema_beta"] == 0.0 and ref[NUM_STEPS]["ema_beta"] > 0  # EMA started

  # The whole final state: G, D, their optimisers, G's and D's BN statistics and SN
  # vectors, G EMA (params and BN statistics), up to float reassociation; except the null
  # directions below. Per-process BN (moments of 4 rows instead of 8) would give other
  # losses and running variances.
  #
  # Null directions: the biases of G's convolutions that feed a batch norm (conv1 -> bn2;
  # conv2 + conv_sc -> the next block's bn1 or the output BN) have a true gradient of zero
  # (BN removes any per-channel shift), so their computed gradient is float noise, whose
  # sign differs between the runs. Adam (beta1 = 0) normalises it to steps of at most
  # lr * sqrt((1 - beta2^t) / (1 - beta2)) <= lr * sqrt(t) at step t: such a bias (and its
  # EMA, a convex combination) may differ by 2 lr sum_t sqrt(t); the BN running means
  # that track it (batch means holding up to two such biases, averaged) by twice that.
  from configs import biggan_digits  # pylint: disable=g-import-not-at-top
  lr = biggan_digits.get_config("shrink").train.g_lr
  bias_bound = 2 * lr * sum(np.sqrt(t) for t in range(1, NUM_STEPS + 1))
  a, b = common.restore_arrays(tmp_path / "one"), common.restore_arrays(tmp_path / "two")
  assert a["step"] == b["step"] == NUM_STEPS
  flat_a = jax.tree_util.tree_leaves_with_path({"train": a["train"], "g_ema": a["g_ema"]})
  flat_b = jax.tree_util.tree_leaves({"train": b["train"], "g_ema": b["g_ema"]})
  assert len(flat_a) == len(flat_b)
  null = 0
  for (path, x), y in zip(flat_a, flat_b):
    name = jax.tree_util.keystr(path)
    x, y = np.asarray(x), np.asarray(y)
    if "synthesis_network" in name and any(f"['{c}']['bias']" in name for c in (
        "conv1", "conv2", "conv_sc")) and "opt_state" not in name:
      null += 1
      np.testing.assert_allclose(y, x, rtol=0, atol=bias_bound, err_msg=name)
    elif name.endswith("['stored_mean']"):
      np.testing.assert_allclose(y, x, rtol=1e-4, atol=2 * bias_bound, err_msg=name)
    else:
      np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, err_msg=name)
  # 3 blocks x 3 biases, in G and in G EMA.
  assert null == 18
