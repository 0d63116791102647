"""benchmarks/device_check.sh: the smoke run (every section on the CPU, tiny shapes) and the
driver's pure parts (plan under a time budget, peak table, report table)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_lib  # noqa: E402  pylint: disable=wrong-import-position
import device_check  # noqa: E402  pylint: disable=wrong-import-position


def _smoke_run(tmp):
  """(report, RESULTS.md text) of one `device_check.sh --smoke` run."""
  out, md = tmp / "dc.json", tmp / "RESULTS.md"
  md.write_text("# Benchmark results\n")
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run([str(REPO / "benchmarks" / "device_check.sh"), "--smoke",
                         f"--out={out}", f"--results_md={md}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), md.read_text()


def test_smoke_run(tmp_path):
  # One test, not several sharing a module fixture: under pytest-xdist each worker would
  # run the fixture again, and the smoke run is the expensive part.
  report, md = _smoke_run(tmp_path)

  # Every section of the smoke plan finished without error.
  sections = device_check.default_sections(smoke=True)
  assert {s.split("/")[0] for s in sections} == set(device_check.SECTIONS)
  for name in sections:
    kind, _, key = name.partition("/")
    value = report[kind][key] if key else report[kind]
    assert "error" not in value and "skipped" not in value, (name, value)
  assert report["env"]["platform"] == "cpu"

  # Train: per-phase times, compile times and the compiler's memory analysis.
  train = report["train"]["imagenet64/f32"]
  assert set(train["phases"]) == set(device_check.SMOKE.train_phases)
  for row in train["phases"].values():
    assert row["ms"] > 0 and row["compile_s"] > 0
    assert row["compiler_memory"]["peak_bytes"] > 0   # XLA:CPU gives a memory analysis
  assert train["img_per_s"] > 0 and train["schedule_steps"] == 16   # one R1 period
  # No peak FLOP/s is known for a CPU: MFU is omitted, not made up.
  assert train["step_mfu"] is None and train["peak_flops"] is None
  assert report["aot"]["imagenet64/f32"]["phases_peak_bytes"]["finish"] > 0

  # Sampling: the baseline has no overhead; |C| = 10 mappings per sample bound it above 0.
  modes = report["sampling"]["modes"]
  assert list(modes) == list(device_check.SMOKE.sampling_modes)
  assert modes["unguided"]["overhead"] == 0.0 and modes["unguided"]["flop_bound"] == 0.0
  assert modes["training-free |C|=10"]["flop_bound"] > 0
  fused = report["sampling"]["fused_modconv"]
  assert fused["fused_ms"] > 0 and fused["nonfused_ms"] > 0
  # Both forms compute the same images: float32 rounding of O(1) values over a few layers
  # (tests/test_layers_fused.py bounds it tightly; here only gross breakage is caught).
  assert fused["max_abs_diff"] < 1e-3
  fid = report["fid"]
  assert fid["img_per_s"] > 0 and fid["gflop_per_image"] > 0
  assert fid["weights"].startswith("random")

  # The dated table went to the given file (appended), with the device's name.
  assert md.startswith("# Benchmark results\n")
  assert f"### Device check, {report['meta']['date']}: cpu x1" in md
  assert "| imagenet64 | f32 |" in md
  assert report["markdown"] in md


def test_plan_skips_what_does_not_fit():
  s = device_check.Settings()
  sections = device_check.default_sections(smoke=False)
  groups = device_check.plan(s, sections, num_devices=8, budget_s=420)
  # The AOT estimates run first, in the background, on 8 forced CPU devices.
  assert groups[0].cpu_devices == 8
  assert all(name.startswith("aot/") for name in groups[0].sections)
  # Then one worker per section in priority order; env rides with the first.
  assert [g.sections for g in groups[1:4]] == [("env", "train/imagenet64/f32"), ("sampling",),
                                               ("train/cifar10/f32",)]
  assert [g.cpu_devices for g in groups[1:]] == [0] * (len(groups) - 1)
  assert sorted(sum((g.sections for g in groups), ())) == sorted(sections)


def test_driver_records_skipped_groups(tmp_path):
  # A budget below every group's minimum: nothing starts, everything says why.
  records = device_check.run_driver(device_check.Settings(), ["fid", "sampling"],
                                    budget_s=1.0, num_devices=1, progress=lambda m: None)
  assert set(records) == {"fid", "sampling"}
  assert all("time budget" in r["skipped"] for r in records.values())
  report = device_check.assemble(records, dict(date="d", smoke=False, budget_s=1.0,
                                               wall_s=0.0, per_device_batch=64))
  text = device_check.markdown(report)
  assert "Not measured:" in text and "- fid: skipped: time budget" in text


def test_peak_flops_table():
  assert bench_lib.peak_flops("NVIDIA H200", "bfloat16") == pytest.approx(989.4e12)
  assert bench_lib.peak_flops("NVIDIA H100 PCIe", "float32") == pytest.approx(378e12)
  assert bench_lib.peak_flops("NVIDIA A100-SXM4-80GB", "float32_full") == pytest.approx(19.5e12)
  assert bench_lib.peak_flops("TPU v5 lite", "bfloat16") == pytest.approx(197e12)
  assert bench_lib.peak_flops("cpu", "float32") is None
  assert bench_lib.peak_flops("TPU v4", "float32_full") is None
  assert bench_lib.mfu(2e12, 1.0, 4e12) == 0.5
  assert bench_lib.mfu(None, 1.0, 4e12) is None


class _Cost:
  """Stands in for a Compiled object: cost_analysis() as a list (JAX < 0.4.30), a dict, or
  None (a backend without it)."""

  def __init__(self, cost):
    self.cost = cost

  def cost_analysis(self):
    return self.cost

  def memory_analysis(self):
    return None


@pytest.mark.parametrize("cost,want", [([{"flops": 5.0}], 5.0), ({"flops": 5.0}, 5.0),
                                       (None, None), ([], None), ({"flops": -1.0}, None)])
def test_flops_of_accepts_every_return_type(cost, want):
  assert bench_lib.flops_of(_Cost(cost)) == want
  assert bench_lib.memory_of(_Cost(cost)) is None


def test_train_config_batch_and_precision():
  config = device_check.train_config("cifar10", "bf16", device_check.Settings(), 2)
  assert config.train.batch_size == 2 * device_check.PER_DEVICE_BATCH
  assert config.generator.num_bf16_res == 4 and config.discriminator.num_bf16_res == 4
  assert config.generator.channel_max == 512     # the real widths, not :shrink
  with pytest.raises(KeyError, match="no field 'nope'"):
    bench_lib.load_config("configs/cifar10.py", "", {"train.nope": 1})
