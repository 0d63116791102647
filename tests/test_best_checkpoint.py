"""The best in-loop snapshot (config.best_metric): kept apart from the rotated checkpoints,
equal to the checkpoint of the best step, read by --checkpoint=best, carried over a resume."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from gandance_jax import checkpoint, config_lib
from gandance_jax.evaluation import cli
from gandance_jax.train import loop
from tests import _mp_common as common


def _config(**overrides):
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = common.tiny_config(**overrides)
  config.evals = digits.get_config("shrink,fid").evals
  config.evals.fid.every_steps = 2
  config.evals.fid.guidance_scales = (1.0,)
  config.evals.fid.noise_mode = "const"   # cheaper to compile; the protocol is not tested here
  return config


@pytest.mark.parametrize("field, value, message", [
    ("best_metric", "fid/fid@1", "of an evaluator in config.evals"),   # no evals configured
    ("best_metric", "fid", "'<eval name>/<metric>@<scale>'"),
    ("best_mode", "lowest", "allowed values are ['min', 'max']"),
])
def test_invalid_settings_are_named(field, value, message):
  config = common.tiny_config()
  config[field] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.{field} = .*{re.escape(message)}"):
    config_lib.validate_config(config)


def test_metric_of_an_evaluator_that_never_runs_is_refused():
  config = _config(best_metric="fid/fid@1")
  config.evals.fid.every_steps = 0
  with pytest.raises(config_lib.ConfigError, match="every_steps is 0"):
    config_lib.validate_config(config)


def test_best_snapshot_is_the_best_step_and_survives_rotation(tmp_path):
  workdir = str(tmp_path / "run")
  # 6 steps, FID every 2 steps, checkpoints every 2 but only the newest one kept.
  config = _config(best_metric="fid/fid@1", train__total_kimg=0.048,
                   checkpoint_every_steps=2, keep_checkpoints=1, sample_every_steps=1000,
                   train__augment="none")
  loop.train(config_lib.validate_config(config), workdir)
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  fids = {r["step"]: r["fid/fid@1"] for r in records if "fid/fid@1" in r}
  assert sorted(fids) == [2, 4, 6]
  best_step = min(fids, key=fids.get)

  G, best_vars, _, step = checkpoint.load_generator(workdir, best=True)
  assert step == best_step
  snapshot = checkpoint.BestSnapshot(workdir, "fid/fid@1")  # what a resumed run would see
  try:
    assert snapshot.value == pytest.approx(fids[best_step]) and snapshot.step == best_step
    assert not snapshot.better(fids[best_step] + 1) and snapshot.better(fids[best_step] - 1)
  finally:
    snapshot.close()
  # The rotated checkpoints: only the newest is left; the snapshot is still there.
  assert checkpoint.Checkpointer(workdir).all_steps() == [6]
  if best_step == 6:
    _, last_vars, _, _ = checkpoint.load_generator(workdir)
    jax.tree.map(np.testing.assert_array_equal, best_vars, last_vars)

  # --checkpoint=best: the CLI evaluation of the snapshot = the in-loop value at that step.
  metrics = cli.run(config, workdir, "best")
  # The same index-keyed samples and extractor compiled again in this process: features
  # equal up to another fusion's rounding (~1e-7 relative), float64 statistics after; FID
  # is a difference of traces of its own size, so it moves ~1e-7 relative. A wrong snapshot
  # (another step's weights) changes FID by > 1%.
  assert metrics["fid/fid@1"] == pytest.approx(fids[best_step], rel=1e-6)
  eval_record = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")][-1]
  assert eval_record["checkpoint"] == "best" and eval_record["step"] == best_step
  with pytest.raises(ValueError, match="--checkpoint = 'newest' is invalid"):
    checkpoint.load_generator_from(workdir, "newest")


def test_mode_max_and_missing_snapshot(tmp_path):
  snapshot = checkpoint.BestSnapshot(str(tmp_path), "fid/class_accuracy@1", mode="max")
  try:
    assert snapshot.better(0.1)
    snapshot.value = 0.5
    assert snapshot.better(0.6) and not snapshot.better(0.4)
  finally:
    snapshot.close()
  with pytest.raises(FileNotFoundError, match="no best snapshot"):
    checkpoint.load_generator(str(tmp_path / "elsewhere"), best=True)
