"""Launch scripts fail early with clear messages; the sweep expands, resumes and reports."""

import json
import os
import subprocess
import sys
import types

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "launch"))
import sweep as sweep_lib  # noqa: E402  pylint: disable=g-import-not-at-top


def _run(cmd, env=None):
  full_env = dict(os.environ)
  for k in ("TPU_NAME", "ZONE", "ACCELERATOR", "WORKDIR", "CONFIG", "SLURM_JOB_ID"):
    full_env.pop(k, None)
  full_env.update(env or {})
  return subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                        timeout=60)


@pytest.mark.parametrize("cmd, env, message", [
    (["bash", "launch/local.sh"], {}, "usage: launch/local.sh CONFIG WORKDIR"),
    (["bash", "launch/local.sh", "configs/nope.py", "/tmp/x"], {},
     "config file 'configs/nope.py' not found"),
    (["bash", "launch/local.sh", "configs/digits.py", "/tmp/x", "fly"], {},
     "MODE must be train, sample or eval, got 'fly'"),
    (["bash", "launch/slurm.sbatch"], {}, "set CONFIG=path/to/config.py"),
    (["bash", "launch/slurm.sbatch"], {"CONFIG": "configs/digits.py", "WORKDIR": "/tmp/w"},
     "not inside a SLURM allocation"),
    (["bash", "launch/tpu_pod.sh", "configs/digits.py"], {"TPU_NAME": "t"}, "set ZONE"),
    (["bash", "launch/tpu_pod.sh", "configs/digits.py"],
     {"TPU_NAME": "t", "ZONE": "z", "ACCELERATOR": "v4-8", "WORKDIR": "/local/dir"},
     "WORKDIR must be a gs:// bucket path"),
])
def test_scripts_fail_early_with_a_message(cmd, env, message):
  result = _run(cmd, env)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr


def test_sweep_cells_expand_from_the_paper_grids():
  sweep = sweep_lib.load_py_config(str(REPO_ROOT / "configs/sweeps/digits_mini.py"))
  cells = sweep_lib.expand_cells(sweep)
  grids = {}
  for c in cells:
    grids[c["grid"]] = grids.get(c["grid"], 0) + 1
  # 3 |C| x 6 scales; 6 scales; 2 scales x 3 psi; 4 runs x 2 scales; 4 schedules.
  assert grids == {"table1_training_free": 18, "table1_learned": 6, "psi_learned": 6,
                   "reset_p": 8, "layerwise": 4}
  assert len({sweep_lib.cell_key(c) for c in cells}) == len(cells)


@pytest.mark.parametrize("arg", ["", ":shrink"])
def test_digits100_sweep_names_valid_fields_and_the_paper_grids(arg):
  """Every run's overrides name existing fields of configs/digits100.py and give a valid config
  (a typo would otherwise surface only when main.py starts that run, an hour into the
  sweep); the cells are the issue's grids. Loads files only: no training, no evaluation."""
  from gandance_jax import config_lib  # pylint: disable=g-import-not-at-top
  from tests import _mp_common  # pylint: disable=g-import-not-at-top
  sweep = sweep_lib.load_py_config(str(REPO_ROOT / f"configs/sweeps/digits100.py{arg}"))
  assert sweep.eval["extractor"] == "digits100"
  for run, values in sweep.runs.items():
    config = sweep_lib.load_py_config(str(REPO_ROOT / sweep.base_config))
    merged = {**sweep.overrides, **values}
    for dotted in merged:
      node = config
      for part in dotted.split("."):
        assert part in node, f"run {run!r}: {dotted!r} is not a field of {sweep.base_config}"
        node = node[part]
    config_lib.validate_config(_mp_common.set_fields(config, merged))
  cells = sweep_lib.expand_cells(sweep)
  assert len({sweep_lib.cell_key(c) for c in cells}) == len(cells)
  grids = {}
  for c in cells:
    grids[c["grid"]] = grids.get(c["grid"], 0) + 1
  if arg:
    assert grids == {"table1_training_free": 1, "table1_learned": 2, "layerwise": 1}
    return
  # 3 |C| x 5 scales; 5 scales; 2 scales x 2 psi; 3 runs x 2 scales; on the second
  # training seed and on the second eval seed 2 scales and 1 cell; 4 schedules.
  assert grids == {"table1_training_free": 15, "table1_learned": 5, "psi_learned": 4,
                   "reset_p": 6, "seed_learned": 2, "seed_training_free": 1,
                   "seed_eval_learned": 2, "seed_eval_training_free": 1, "layerwise": 4}
  # The eval-seed cells repeat table1 cells (same run, mode, |C|, scale) on another seed.
  table1 = {(c["run"], c["mode"], c["num_opposite"], c["scale"]) for c in cells
            if c["grid"].startswith("table1")}
  for c in cells:
    if c["grid"].startswith("seed_eval"):
      assert c["eval_seed"] != sweep.eval["seed"]
      assert (c["run"], c["mode"], c["num_opposite"], c["scale"]) in table1
  assert {c["num_opposite"] for c in cells if c["mode"] == "training_free"} == {5, 20, 100}
  assert {sweep.runs[r]["train.label_reset_prob"] for r in sweep.runs} == {0.0, 0.1, 0.2}
  # The extra seed repeats the run the grids use, with only the seeds changed.
  seeded = [r for r in sweep.runs if sweep.runs[r].get("seed")]
  assert len(seeded) == 1
  base = {k: v for k, v in sweep.runs[seeded[0]].items() if "seed" not in k}
  assert base in [sweep.runs[c["run"]] for c in cells if c["grid"].startswith("table1")]


def test_sweep_eval_seed_grid_is_a_new_cell_and_old_keys_stay():
  """A grid's eval_seed makes its cells distinct from the same cells on the sweep's seed, and
  cells without it keep the key they had before the field existed (old results.jsonl rows
  are still found, so a rerun does not recompute them)."""
  sweep = types.SimpleNamespace(runs={"r": {}}, grids={
      "a": dict(runs=["r"], mode="learned", scales=[1.5]),
      "a2": dict(runs=["r"], mode="learned", scales=[1.5], eval_seed=1)})
  plain, seeded = sweep_lib.expand_cells(sweep)
  assert "eval_seed" not in plain and seeded["eval_seed"] == 1
  old_row = dict(grid="a", run="r", mode="learned", num_opposite=0, scale=1.5,
                 schedule=None, psi=1.0, fid=1.0)
  assert sweep_lib.cell_key(old_row) == sweep_lib.cell_key(plain)
  assert sweep_lib.cell_key({**seeded, "grid": "a"}) != sweep_lib.cell_key(plain)


def test_sweep_tables_show_digit_and_style_accuracy():
  """digits100 cells carry the digit / style halves of the class accuracy into the tables."""
  rows = [dict(grid="g", run="r", mode="learned", num_opposite=0, scale=s, schedule=None,
               psi=1.0, fid=f, class_accuracy=0.5, digit_accuracy=d, style_accuracy=0.75)
          for s, f, d in ((1.0, 3.0, 0.875), (1.5, 2.0, 0.625))]
  (name, header, table), = sweep_lib.grid_tables(rows)
  assert name == "g"
  assert header == ["scale", "fid", "class_accuracy", "digit_accuracy", "style_accuracy"]
  assert table == [["1.000", "3.000", "0.500", "0.875", "0.750"],
                   ["1.500", "2.000", "0.500", "0.625", "0.750"]]


def test_sweep_reset_p_plots_keep_modes_apart_and_draw_fig6(tmp_path, monkeypatch):
  """Reset-p grids guided two ways (learned and training-free) give one FID-vs-p curve per
  (mode, scale) and, with more than two scales, the paper's Fig. 6 layout (FID vs scale, one
  curve per mode and p); the points of a curve are its own mode's, its colour its p's (or
  scale's) in every mode."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import axes  # pylint: disable=g-import-not-at-top
  drawn, styles = [], {}
  original = axes.Axes.plot
  def plot(self, *args, **kwargs):
    drawn.append((kwargs.get("label"), [list(a) for a in args]))
    styles[kwargs.get("label")] = (kwargs.get("color"), kwargs.get("linestyle"))
    return original(self, *args, **kwargs)
  monkeypatch.setattr(axes.Axes, "plot", plot)
  fid = lambda mode, p, s: (10 if mode == "learned" else 20) + 100 * p + s
  rows = [dict(grid=g, run=f"p{p:g}", mode=mode, num_opposite=n, scale=s, schedule=None,
               psi=1.0, fid=fid(mode, p, s))
          for g, mode, n in (("reset_p", "learned", 0), ("reset_p_tf", "training_free", 10))
          for p in (0.0, 0.1, 0.5) for s in (1.0, 1.5, 2.0)]
  written = sweep_lib.write_plots(str(tmp_path), rows)
  assert {os.path.basename(w) for w in written} == {"fid_vs_p.png", "fid_vs_scale_by_p.png"}
  curves = dict(drawn)
  assert len(curves) == len(drawn) == 6 + 6
  assert curves["learned, scale 1.5"] == [[0.0, 0.1, 0.5], [fid("learned", p, 1.5)
                                                           for p in (0.0, 0.1, 0.5)]]
  assert curves["training-free |C|=10, p = 0.1"] == [
      [1.0, 1.5, 2.0], [fid("training_free", 0.1, s) for s in (1.0, 1.5, 2.0)]]
  # One colour per p (per scale) across the modes; training-free dashed.
  assert styles["learned, p = 0.1"] == ("C1", "-")
  assert styles["training-free |C|=10, p = 0.1"] == ("C1", "--")
  assert styles["training-free |C|=10, scale 2"] == ("C2", "--")


def test_sweep_end_to_end_resumes(tmp_path):
  """Trains the shrink run, evaluates 3 cells, then a rerun recomputes nothing."""
  out = tmp_path / "sweep"
  cmd = [sys.executable, "launch/sweep.py", "--sweep=configs/sweeps/digits_mini.py:shrink",
         f"--outdir={out}"]
  env = dict(os.environ, GANDANCE_CACHE=str(tmp_path / "cache"))
  first = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
  assert len(rows) == 3 and all(r["fid"] > 0 for r in rows)
  assert {r["grid"] for r in rows} == {"table1_learned", "layerwise"}
  assert "3 to run" in first.stdout
  assert (out / "results.md").exists() and (out / "results.csv").exists()
  assert (out / "fid_vs_scale.png").exists() and (out / "layerwise.png").exists()
  assert (out / "report.html").exists() and (out / "log.txt").exists()
  second = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "3 done, 0 to run" in second.stdout
  assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_sweep_fine_tune_run_starts_from_its_pre_run(tmp_path, monkeypatch):
  """'{outdir}' in a run's values names another run's workdir; that run trains first, and
  string values reach main.py without quotes."""
  sweep = sweep_lib.load_py_config(str(REPO_ROOT / "configs/sweeps/digits_finetune.py"))
  assert sweep_lib.runs_to_train(sweep, ["ft", "ft"]) == ["pre", "ft"]
  assert sweep_lib.runs_to_train(sweep, ["pre"]) == ["pre"]
  calls = []
  monkeypatch.setattr(sweep_lib.subprocess, "run", lambda cmd, **kwargs: calls.append(cmd))
  for run in sweep_lib.runs_to_train(sweep, ["ft"]):
    sweep_lib.train_run(sweep, str(tmp_path), run)
  pre, ft = calls
  assert "--config.sample.mode=training_free" in pre
  assert "--config.generator.empty_class=False" in pre
  assert f"--workdir={tmp_path}/runs/pre" in pre
  assert f"--config.train.init_from={tmp_path}/runs/pre" in ft
  assert (tmp_path / "runs" / "ft" / "TRAINING_DONE").exists()
