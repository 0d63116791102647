"""The same tiny run on 1 device, on 4 forced CPU devices and in 2 processes (gloo
collectives) gives the same losses and parameters up to float reassociation; the 2-process
run goes end to end: preempted, resumed, evaluated in the loop and from the command line,
sampled, with the numbers of one process."""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pytest

from tests import _mp_common as common


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
  return common.shared_dir(tmp_path_factory)


def _assert_close_runs(reference, workdir):
  """Same losses at every step and same final G EMA, up to float reassociation (observed:
  2e-7 relative in the first 3 steps, 5e-6 after 24 steps).

  Not bit-exact by design: 4 devices or 2 processes sum the gradients and the batch
  statistics in another order (all-reduce). One step's reassociation is ~sqrt(K) eps = 1e-6
  relative (K <= 3 * 3 * 8 = 72 per tiny conv); training then amplifies it step by step, hence 1e-5
  for the first 3 steps and 1e-4 after (20x the 24-step observation). A wrong shard, a lost
  or doubled sample or a per-device batch statistic changes the losses by > 1e-2."""
  ref, got = common.loss_rows(reference), common.loss_rows(workdir)
  assert sorted(got) == sorted(ref) == list(range(1, common.NUM_STEPS + 1))
  for step in ref:
    rtol = 1e-5 if step <= 3 else 1e-4
    for name, value in ref[step].items():
      np.testing.assert_allclose(got[step][name], value, rtol=rtol, atol=1e-6,
                                 err_msg=f"{name} at step {step}")
  a, b = common.restore_arrays(reference), common.restore_arrays(workdir)
  for x, y in zip(jax.tree.leaves(a["g_ema"]), jax.tree.leaves(b["g_ema"])):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def test_four_devices_match_one(shared, tmp_path):
  reference = common.reference_run(shared)
  result = common.run_main(tmp_path / "four", shared / "xla", num_devices=4)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "on 4 devices (1 processes)" in result.stderr
  _assert_close_runs(reference, tmp_path / "four")


def _start_processes(workdir, cache_dir, log_dir, tag: str, *extra: str, **overrides
                     ) -> list[common.Trainer]:
  """Starts main.py in 2 local processes (gloo)."""
  port = common.free_port()
  return [common.Trainer(workdir, cache_dir, f"--coordinator_address=localhost:{port}",
                         "--num_processes=2", f"--process_id={i}", *extra,
                         log_path=log_dir / f"{tag}_process_{i}.log", **overrides)
          for i in range(2)]


def _wait(trainers: list[common.Trainer], expected: int = 0) -> list[str]:
  """Waits for every process; asserts their exit codes; returns their logs."""
  try:
    for trainer in trainers:
      assert trainer.wait(timeout=420) == expected, trainer.log()[-5000:]
  finally:
    for trainer in trainers:
      if trainer.proc.poll() is None:
        trainer.proc.kill()
  return [t.log() for t in trainers]


FID_CONFIG = "configs/digits.py:shrink,fid"  # + an in-loop FID evaluator (60 samples)


def test_two_processes_end_to_end(shared, tmp_path):
  """2 processes: train until preempted (SIGTERM to both after the first checkpoint), resume
  to the end with --mode=all (in-loop FID every 8 steps, final class accuracy, sampling,
  evaluation). Training matches the 1-device run; every evaluation and sample file matches
  what one process computes from the same checkpoint."""
  reference = common.reference_run(shared)
  workdir = tmp_path / "two"
  cache = shared / "xla"
  every = {"evals__fid__every_steps": 8}
  trainers = _start_processes(workdir, cache, tmp_path, "first", "--mode=train",
                              config=FID_CONFIG, **every)
  first_ckpt = common.wait_for_checkpoint(workdir, trainers[0])
  for trainer in trainers:
    trainer.proc.send_signal(signal.SIGTERM)
  first = _wait(trainers, expected=143)
  assert "on 2 devices (2 processes)" in first[0]
  assert "Started from scratch" in first[0]
  # Process 1 logs only warnings: the run's INFO log comes from process 0.
  assert "Started from scratch" not in first[1]
  # JAX's preemption sync point: both processes stop and save at the same step.
  saved = {int(log.split("Preempted: checkpoint saved at step ")[1].split(";")[0])
           for log in first}
  assert len(saved) == 1
  [saved] = saved
  assert first_ckpt <= saved < common.NUM_STEPS
  assert str(saved) in os.listdir(workdir / "checkpoints")

  second = _wait(_start_processes(workdir, cache, tmp_path, "second", "--mode=all",
                                  config=FID_CONFIG, evals__class_accuracy__final=True,
                                  evals__class_accuracy__num_samples=20,
                                  **every))
  assert f"Resumed from the checkpoint at step {saved}" in second[0]

  # Training: the preempted run and its resumption = the 1-device run.
  _assert_close_runs(reference, workdir)

  # In-loop evaluations at 8, 16 and 24 (by whichever run reached the step), one record each
  # (process 0 writes); the final class accuracy (evaluator `class_accuracy`) once.
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  fid_rows = {r["step"]: r for r in records if "fid/fid@1" in r and not r.get("eval")}
  assert sorted(fid_rows) == [8, 16, 24]
  assert sum(1 for r in records if "fid/fid@1" in r and not r.get("eval")) == 3
  finals = [r for r in records if "class_accuracy/class_accuracy@1" in r and not r.get("eval")]
  assert len(finals) == 1 and 0 <= finals[0]["class_accuracy/class_accuracy@1"] <= 1
  eval_rows = [r for r in records if r.get("eval")]
  assert len(eval_rows) == 1 and eval_rows[0]["step"] == 24
  # The CLI evaluation of the final checkpoint = the in-loop one at step 24 (same program).
  for key in ("fid/fid@1", "fid/fid@1.3", "fid/class_accuracy@1.3"):
    assert eval_rows[0][key] == pytest.approx(fid_rows[24][key], rel=1e-9), key

  # One process, one device, the same checkpoint: the same FID (the 2-process run split the
  # 60 samples 30/30 and the 1797 real digits 898/899, then merged statistics).
  from gandance_jax import checkpoint, sample_cli
  from gandance_jax.evaluation import evaluators
  G, g_vars, config, step = checkpoint.load_generator(str(workdir))
  assert step == common.NUM_STEPS
  config = common.tiny_config()
  from configs import digits
  config.evals = digits.get_config("shrink,fid").evals
  [spec] = [s for s in evaluators.parse_evals(config.evals) if s.name == "fid"]
  data = evaluators.EvalData(str(tmp_path / "single"), config.data)
  single = evaluators.make(spec, G, data)
  [ref_path] = [p for p in (workdir / "reference").glob("*.npz")]
  ref_two = np.load(ref_path)
  ref_one, _ = data.reference(spec)
  # float32 features of other XLA options / batch compositions: ~1e-9 apart. Per image the
  # 128 features may differ by ~sqrt(K) eps relative (K <= 512: 3e-6); averaged over 1797
  # images the means move ~sqrt(1797) times less (7e-8 relative), so 1e-6 / 1e-5 are 15x
  # that; 898/899 real digits merged wrongly would move mu by ~1e-2.
  assert int(ref_two["num_samples"]) == ref_one.num_samples == 1797
  np.testing.assert_allclose(ref_two["mu"], ref_one.mu, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(ref_two["sigma"], ref_one.sigma, rtol=1e-5, atol=1e-8)
  for scale in spec.guidance_scales:
    got = single.metrics_at(g_vars, scale)
    assert got["fid"] == pytest.approx(eval_rows[0][f"fid/fid@{scale:g}"], rel=1e-4)
    assert got["class_accuracy"] == pytest.approx(
        eval_rows[0][f"fid/class_accuracy@{scale:g}"], abs=1.5 / spec.num_samples)

  # Sampling: process 0 wrote each file once; the images equal one process's.
  outdir = workdir / "samples" / f"step_{common.NUM_STEPS}"
  names = sorted(p.name for p in outdir.iterdir())
  assert not [n for n in names if ".tmp" in n], names
  npz_two = [n for n in names if n.endswith(".npz")]
  assert npz_two and any(n.startswith("grid_") for n in names)
  one = sample_cli.run_with_generator(G, g_vars, config.sample, str(tmp_path / "one"))
  for path in one["npz"]:
    with np.load(path) as a, np.load(outdir / os.path.basename(path)) as b:
      np.testing.assert_array_equal(a["arr_1"], b["arr_1"])
      diff = np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int))
      assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
