"""gandance_jax.train.aot: ahead-of-time compile of the training phases and the per-device memory
report. The tool runs in subprocesses because the device count is fixed per process."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from gandance_jax.train import aot
from tests import _mp_common

# The tiny trainer config runs all five phases (pl_weight > 0, r1_gamma > 0); without
# augmentation its phases compile in a few seconds.
OVERRIDES = {"train__augment": "none"}
ALL_PHASES = ["g_main", "g_reg", "d_main", "d_reg", "finish"]


def run_aot(*extra: str, num_devices: int, out=None, **overrides) -> subprocess.CompletedProcess:
  values = dict(OVERRIDES, **overrides)
  cmd = [sys.executable, "-m", "gandance_jax.train.aot", "--config=configs/digits.py:shrink",
         f"--num_devices={num_devices}", *_mp_common.tiny_flags(**values), *extra]
  if out is not None:
    cmd.append(f"--out={out}")
  # subprocess_env(1): CPU only, no forced device count (the tool sets its own), cheap XLA
  # optimisation level.
  return subprocess.run(cmd, cwd=_mp_common.REPO, env=_mp_common.subprocess_env(1),
                        capture_output=True, text=True, timeout=300, check=False)


def batch_bytes(config) -> int:
  """Bytes of one global batch: float32 images [B, R, R, C] and int32 labels [B]."""
  b, r, c = (config.train.batch_size, config.generator.resolution,
             config.generator.img_channels)
  return b * r * r * c * 4 + b * 4


@pytest.fixture(scope="module")
def report4(tmp_path_factory):
  """(report of all phases on 4 devices, the completed process)."""
  out = tmp_path_factory.mktemp("aot") / "report.json"
  result = run_aot(num_devices=4, out=out)
  assert result.returncode == 0, result.stderr[-5000:]
  return json.loads(out.read_text()), result


def test_report_lists_every_phase_with_sizes(report4):
  report, result = report4
  assert report["num_devices"] == report["mesh_devices"] == 4
  assert report["per_device_batch"] == 2
  assert list(report["phases"]) == ALL_PHASES
  for name, p in report["phases"].items():
    assert p["argument_bytes"] > 0 and p["temp_bytes"] > 0, name
    assert p["compile_seconds"] > 0, name
    # The state is donated: its buffers are reused by the new state.
    assert p["alias_bytes"] == report["state_bytes_per_device"]["total"], name
    assert p["peak_bytes"] == (p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"]
                               + p["temp_bytes"]), name
  worst = max(report["phases"], key=lambda n: report["phases"][n]["peak_bytes"])
  assert report["max_peak"] == {"phase": worst, "bytes": report["phases"][worst]["peak_bytes"]}
  # The printed table has a row per phase, the maximum and the caveat.
  for name in ALL_PHASES:
    assert f"\n{name} " in result.stdout
  assert "max estimated peak per device: " + worst in result.stdout
  assert "ESTIMATE of GPU/TPU memory" in result.stdout


def test_state_bytes_and_params_match_the_abstract_state(report4):
  import jax  # pylint: disable=g-import-not-at-top
  from gandance_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  report, _ = report4
  config = _mp_common.tiny_config(**OVERRIDES)
  hp = _mp_common.tiny_hparams(**OVERRIDES)
  G, D = state_lib.build_models(hp)
  g_tx, d_tx = state_lib.make_optimizers(hp.train)
  state = jax.eval_shape(lambda: state_lib.init_train_state(hp, G, D, g_tx, d_tx))
  nbytes = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  assert report["state_bytes_per_device"]["total"] == nbytes(state)
  assert report["state_bytes_per_device"]["g_params"] == 4 * count(state.g_params)
  assert report["params"] == {"g": count(state.g_params), "d": count(state.d_params)}
  # d_main reads the whole state (replicated: all of it on every device) and the batch
  # (split over 'data': a quarter of it per device).
  assert report["phases"]["d_main"]["argument_bytes"] == nbytes(state) + batch_bytes(config) // 4


def test_per_device_batch_arguments_shrink_with_more_devices(report4, tmp_path):
  report, _ = report4
  out = tmp_path / "one.json"
  result = run_aot("--phases=d_main", num_devices=1, out=out)
  assert result.returncode == 0, result.stderr[-5000:]
  one = json.loads(out.read_text())
  assert list(one["phases"]) == ["d_main"]
  config = _mp_common.tiny_config(**OVERRIDES)
  # Same replicated state; the 4-device program holds 3/4 of the batch less per device.
  shrink = one["phases"]["d_main"]["argument_bytes"] - report["phases"]["d_main"]["argument_bytes"]
  assert shrink == batch_bytes(config) * 3 // 4
  assert one["state_bytes_per_device"] == report["state_bytes_per_device"]


def test_over_budget_exits_3_naming_the_phase(tmp_path):
  out = tmp_path / "budget.json"
  result = run_aot("--budget_gib=0.000001", "--phases=finish", num_devices=2, out=out)
  assert result.returncode == aot.EXIT_OVER_BUDGET, result.stderr[-5000:]
  assert "phase finish needs an estimated" in result.stderr
  assert "--budget_gib=1e-06" in result.stderr
  report = json.loads(out.read_text())  # still written, with the verdict
  assert report["fits_budget"] is False


def test_batch_size_not_divisible_by_devices_names_the_field():
  result = run_aot(num_devices=4, train__batch_size=6)
  assert result.returncode == aot.EXIT_CONFIG
  assert "config.train.batch_size = 6" in result.stderr
  assert "Traceback" not in result.stderr


def test_phase_selection():
  config = _mp_common.tiny_config(train__pl_weight=0.0)
  runnable = ["g_main", "d_main", "d_reg", "finish"]
  assert aot.selected_phases(runnable, None, config) == runnable
  assert aot.selected_phases(runnable, ["finish", "g_main"], config) == ["g_main", "finish"]
  with pytest.raises(aot.AotError, match=r"g_reg does not run with config.train.pl_weight = 0"):
    aot.selected_phases(runnable, ["g_reg"], config)
  with pytest.raises(aot.AotError, match="unknown phase 'g'"):
    aot.selected_phases(runnable, ["g"], config)


def test_already_initialised_jax_is_reported():
  code = ("import jax; jax.devices()\n"
          "from gandance_jax.train import aot\n"
          "aot.force_host_devices(3)\n"
          "try:\n  aot.check_devices(3)\nexcept aot.AotError as e:\n  print(e)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=_mp_common.REPO,
                          env=_mp_common.subprocess_env(1), capture_output=True, text=True,
                          timeout=120, check=True)
  assert "--num_devices=3" in result.stdout
  assert "initialised with 1 cpu device(s)" in result.stdout


def test_force_host_devices_replaces_only_the_count():
  env = {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=2 --xla_bar"}
  aot.force_host_devices(8, env)
  assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_bar",
                                      "--xla_force_host_platform_device_count=8"]
  assert env["JAX_PLATFORMS"] == "cpu"
  empty: dict[str, str] = {}
  aot.force_host_devices(1, empty)
  assert empty["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
