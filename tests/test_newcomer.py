"""What a newcomer sees: the quiet terminal (console.py), the run report (report.py) opened in
a real headless browser, grids that show every class with their labels drawn in."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile

import numpy as np
import pytest

from gandance_jax import console
from gandance_jax import images
from gandance_jax import report
from gandance_jax.train import curves
from tests import _mp_common
from tests.conftest import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
SCALES = (1.0, 1.1, 1.2, 1.3)


# ----------------------------------------------------------------------------- grids


def test_grid_classes_all_up_to_the_limit_then_an_even_spread():
  assert images.grid_classes(10) == list(range(10))
  assert images.grid_classes(16) == list(range(16))
  spread = images.grid_classes(100)
  assert len(spread) == images.MAX_GRID_CLASSES and spread[0] == 0 and spread[-1] == 99
  assert np.all(np.diff(spread) >= 6)  # 99 / 15 = 6.6 apart, rounded
  assert images.classes_caption(range(10), 10) == "all 10 classes"
  assert images.classes_caption(spread, 100).startswith("16 of 100 classes, spread evenly: 0, 7")


def test_render_text_draws_the_built_in_glyphs():
  one = images.render_text("1")
  assert one.shape == (5, 3) and one[:, 1].all()  # the stem of '1'
  assert images.render_text("10", scale=2).shape == (10, 14)
  with pytest.raises(ValueError, match=r"no glyph for \['q'\]"):
    images.render_text("q1")


def test_class_grid_labels_rows_with_class_ids_and_states_them(tmp_path):
  per_class, h = 2, 16
  labels = np.repeat(np.arange(10), per_class)
  x = np.zeros((labels.size, h, h, 1), np.float32)  # mid grey
  path = images.class_rows_grid(str(tmp_path / "g.png"), x, labels, per_class, num_classes=10,
                                upscale=1)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    grid = np.asarray(im)
    caption = im.text["Description"]
  assert "all 10 classes" in caption
  # Width of the widest label ('0'..'9': 3 px) plus a 2 px margin either side.
  left = 3 + 4
  assert grid.shape == (10 * (h + 1) - 1, left + per_class * (h + 1) - 1)
  for row in range(10):  # each row's id is drawn, centred on the row, in the margin
    top = row * (h + 1) + (h - 5) // 2
    drawn = grid[top:top + 5, 2:5] < 128
    np.testing.assert_array_equal(drawn, images.render_text(str(row)))


# ----------------------------------------------------------------------------- console


def test_verbose_flags_restore_the_full_terminal_log():
  assert not console.verbose_argv(["--config=x", "--verbosity=0"])
  assert console.verbose_argv(["--verbosity=1"])
  assert console.verbose_argv(["--alsologtostderr"])
  assert not console.verbose_argv([])


def test_setup_sends_library_info_to_log_txt_only(tmp_path):
  path = console.setup(str(tmp_path), verbose=False)
  try:
    handler = console.terminal_handler()

    def record(level, pathname):
      return logging.LogRecord("absl", level, pathname, 1, "m", None, None)

    library = "/site-packages/orbax/checkpoint/x.py"
    ours = f"{os.sep}repo{os.sep}gandance_jax{os.sep}train{os.sep}loop.py"
    assert not handler.filter(record(logging.INFO, library))
    assert not handler.filter(record(logging.WARNING, library))
    assert handler.filter(record(logging.ERROR, library))
    assert not handler.filter(record(logging.INFO, ours))
    assert handler.filter(record(logging.WARNING, ours))
    logging.getLogger("orbax").info("Saving checkpoint at step %d", 7)
  finally:
    console.teardown()
  assert path == str(tmp_path / "log.txt")
  assert "Saving checkpoint at step 7" in (tmp_path / "log.txt").read_text()
  assert handler.filter(record(logging.INFO, library))  # teardown removed the filter


def test_progress_lines_show_losses_and_rate_a_few_times(capsys):
  progress = console.Progress(total=95, mode="lines", enabled=True)
  for step in range(1, 96):
    progress.update(step)
    progress.metrics(step, {"loss/G": 0.5, "loss/D": 1.25, "loss/D_reg": 0.1, "kimg": 1.0})
  progress.close()
  lines = capsys.readouterr().out.splitlines()
  # One line every ceil(95 / PROGRESS_LINES) steps, and one at the end.
  every = -(-95 // console.PROGRESS_LINES)
  assert len(lines) == 95 // every + (95 % every > 0) <= console.PROGRESS_LINES
  assert lines[0].startswith(f"step {every}/95") and lines[-1].startswith("step 95/95 100%")
  assert "loss/G 0.500" in lines[0] and "loss/D 1.250" in lines[0] and "it/s" in lines[0]
  assert "D_reg" not in lines[0]


def test_metrics_table_has_one_row_per_scale():
  metrics = {f"fid/fid@{s:g}": 10 + s for s in SCALES}
  metrics["ca/class_accuracy@1"] = 0.5
  lines = console.metrics_table(metrics)
  assert len(lines) == 1 + len(SCALES)
  assert lines[0].split() == ["scale", "fid", "class_accuracy"]
  assert lines[1].split() == ["1", "11", "0.5"] and lines[2].split() == ["1.1", "11.1", "-"]


# ----------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def synthetic_workdir(tmp_path_factory) -> str:
  """A run's files as the trainer, sampler and evaluator write them, without training."""
  workdir = str(tmp_path_factory.mktemp("report") / "run")
  sample_dir = os.path.join(workdir, "samples", "step_20")
  os.makedirs(sample_dir)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (10 * len(SCALES), 16, 16, 1)).astype(np.float32)
  images.save_grid(os.path.join(sample_dir, "grid_learned.png"), x, 10, len(SCALES),
                   row_labels=[str(c) for c in range(10)],
                   col_labels=[f"{s:g}" for s in SCALES], caption="rows: all 10 classes")
  images.save_grid(os.path.join(sample_dir, "interp_learned_s1.3.png"), x[:8], 1, 8)
  images.class_rows_grid(os.path.join(workdir, "grid_final.png"), x[:20],
                         np.repeat(np.arange(10), 2), 2)
  records = [{"step": s, "loss/G": 1.0 / s, "loss/D": 1.0} for s in (5, 10, 15, 20)]
  records += [{"step": s, "class_accuracy/class_accuracy@1": 0.1 * s / 5} for s in (10, 20)]
  # FID lowest at 1.2, class accuracy highest at 1.3.
  records.append({"eval": True, "step": 20, **{f"fid/fid@{s:g}": 30 + 100 * (s - 1.2) ** 2
                                               for s in SCALES},
                  **{f"fid/class_accuracy@{s:g}": s - 1 for s in SCALES}})
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"seed": 0, "train": {"batch_size": 8, "total_kimg": 0.16}, "new": 1}, f)
  report.save_config_source(workdir, "configs/digits.py:shrink",
                            {"seed": 0, "train": {"batch_size": 16, "total_kimg": 0.16}})
  curves.plot(workdir)
  return workdir


def test_report_marks_the_best_scale_and_the_changed_config(synthetic_workdir):
  workdir = synthetic_workdir
  page = open(report.write_report(workdir), encoding="utf-8").read()
  rows = re.findall(r'<tr class="scale-row( best-row)?" data-scale="([0-9.]+)">', page)
  assert [s for _, s in rows] == [f"{s:g}" for s in SCALES]
  assert [s for best, s in rows if best] == ["1.2"]  # the lowest FID
  assert "(step 20)" in page
  assert page.count("<img ") == 4 and "http" not in page.split("<script>")[0].lower()
  config_file, diff = report.config_diff(workdir)
  assert config_file == "configs/digits.py:shrink"
  assert diff == [("new", "(not in the file)", 1), ("train.batch_size", 16, 8)]
  step, metrics = curves.latest_scale_metrics(os.path.join(workdir, "metrics.jsonl"))
  panels = dict(curves.scale_panels(metrics))
  assert step == 20 and sorted(panels["fid/fid"]) == list(SCALES)


def test_report_cli(tmp_path, capsys, synthetic_workdir):
  assert report.main([str(tmp_path / "nowhere")]) == 2
  assert "is not a directory" in capsys.readouterr().err
  workdir = synthetic_workdir
  assert report.main([workdir]) == 0
  assert os.path.exists(os.path.join(workdir, "report.html"))


def test_closing_summary_names_the_files_and_the_next_commands(synthetic_workdir, capsys):
  report.finish(synthetic_workdir, "all",
                ["--config=configs/digits.py", f"--workdir={synthetic_workdir}", "--mode=all"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f"done (all). In {synthetic_workdir}:"
  assert lines[1].split()[0] == "report.html"  # the report first
  listed = [line.split()[0] for line in lines[1:-2]]
  assert {"samples/step_20/grid_learned.png", "samples/step_20/interp_learned_s1.3.png",
          "curves.png", "grid_final.png", "log.txt"} <= set(listed)
  assert lines[-1].strip() == ("python -m gandance_jax.main --config=configs/digits.py "
                               f"--workdir={synthetic_workdir} --mode=sample")


def test_report_opens_in_a_headless_browser_with_every_image(synthetic_workdir):
  if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; .ci/run installs it "
                "when it runs as root with apt)")
  workdir = synthetic_workdir
  page = report.write_report(workdir)
  with tempfile.TemporaryDirectory() as profile:
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
         f"file://{page}"], capture_output=True, text=True, timeout=120, check=False).stdout
  status = re.search(r'id="image-status"[^>]*', dom)
  assert status, f"no #image-status in the rendered page: {dom[:500]!r}"
  loaded = int(re.search(r'data-loaded="(\d+)"', status.group(0)).group(1))
  total = int(re.search(r'data-total="(\d+)"', status.group(0)).group(1))
  assert total == 4 and loaded == total
  assert len(re.findall(r'class="scale-row', dom)) == len(SCALES)


# ----------------------------------------------------------------------------- the main job


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):  # ~1-4 min on 2 cores: only the slow test uses it
  """One `--mode=all` run of the tiny digits config, its terminal output not a TTY."""
  workdir = tmp_path_factory.mktemp("newcomer") / "run"
  cache = tmp_path_factory.mktemp("newcomer_cache")
  proc = _mp_common.run_main(workdir, cache, "--mode=all", timeout=600, full_log=False)
  return workdir, proc


@pytest.mark.slow
def test_main_job_terminal_fits_one_screen(main_job):
  workdir, proc = main_job
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = (proc.stdout + proc.stderr).splitlines()
  assert len(lines) <= 40, "\n".join(lines)
  text = "\n".join(lines)
  for wanted in ("gandance_jax: training digits", "workdir", "it/s", "evaluation of step",
                 "report.html", "--mode=sample"):
    assert wanted in text, f"{wanted!r} missing from the terminal output:\n{text}"
  assert "orbax" not in text.lower() and "CheckpointManager" not in text
  log = (workdir / "log.txt").read_text()
  assert "checkpoint" in log.lower()  # the library lines went to the log instead
  assert (workdir / "report.html").exists() and (workdir / "config_source.json").exists()


def test_sweep_report_has_one_table_per_grid_and_the_plots(tmp_path):
  from launch import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  rows = [dict(grid="table1_learned", run="p0.1", mode="learned", num_opposite=0, scale=s,
               schedule=None, psi=1.0, step=10, fid=30 - s, classifier_score=s)
          for s in (1.0, 1.3)]
  rows.append(dict(rows[0], grid="layerwise", scale=None, schedule="coarse"))
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  try:
    sweep_file = REPO_ROOT / "configs" / "sweeps" / "digits_mini.py"
    assert sweep_lib.main([f"--sweep={sweep_file}", f"--outdir={tmp_path}",
                           "--report_only"]) == 0
  finally:
    console.teardown()
  page = (tmp_path / "report.html").read_text()
  assert page.count("<table>") == 2 and "table1_learned" in page and "layerwise" in page
  # fid_vs_scale, classifier_vs_scale and layerwise plots, embedded.
  assert page.count('<img src="data:image/png;base64,') == 3


def test_metrics_table_leaves_out_a_column_that_repeats_another():
  # The end-of-training classifier evaluator at scale 1 measures the same samples as the FID
  # evaluator's classifier metrics at scale 1: one column, under the bare metric name.
  metrics = {"class_accuracy/class_accuracy@1": 0.9, "fid/fid@1": 12.0, "fid/fid@1.3": 18.0,
             "fid/class_accuracy@1": 0.9, "fid/class_accuracy@1.3": 0.95}
  scales, columns, table = console.metrics_by_scale(metrics)
  assert scales == [1.0, 1.3] and columns == ["fid", "class_accuracy"]
  assert table[1.3] == {"fid": 18.0, "class_accuracy": 0.95}
  metrics["class_accuracy/class_accuracy@1"] = 0.8  # different values: both kept, qualified
  assert console.metrics_by_scale(metrics)[1] == [
      "class_accuracy/class_accuracy", "fid", "fid/class_accuracy"]
