"""Training curves from metrics.jsonl: what is read, what is plotted, the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gandance_jax.train import curves


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_metrics_keeps_the_last_record_of_a_step(tmp_path):
  _write(tmp_path / "metrics.jsonl", [
      {"step": 10, "loss/G": 1.0, "loss/D": 2.0},
      {"step": 20, "loss/G": 0.9, "loss/D": float("nan")},   # non-finite: skipped
      {"step": 20, "loss/G": 0.8},                           # a resumed run logs 20 again
      {"step": 20, "fid/fid@1": 30.0, "fid/fid@1.3": 25.0},  # in-loop evaluation
      {"step": 20, "final": True, "class_accuracy": 0.9},
      {"eval": True, "step": 20, "fid/fid@1": 99.0},         # CLI evaluation: not a curve
  ])
  series = curves.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert series["loss/G"] == {10: 1.0, 20: 0.8}
  assert series["loss/D"] == {10: 2.0}
  assert series["fid/fid@1"] == {20: 30.0}
  assert series["class_accuracy"] == {20: 0.9}
  assert "final" not in series and "eval" not in series
  panels = dict(curves._panels(series))  # pylint: disable=protected-access
  assert panels["losses"] == ["loss/D", "loss/G"]
  assert panels["fid/fid"] == ["fid/fid@1", "fid/fid@1.3"]


def test_plot_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  _write(tmp_path / "metrics.jsonl",
         [{"step": s, "loss/G": float(rng.normal()), "augment_p": 0.1 * s / 100}
          for s in range(0, 100, 10)] + [{"step": 50, "fid/fid@1": 12.0}])
  out = curves.plot(str(tmp_path))
  assert out == str(tmp_path / "curves.png")
  data = (tmp_path / "curves.png").read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  assert not list(tmp_path.glob("*.tmp*"))


def test_cli_errors(tmp_path, capsys):
  assert curves.main([str(tmp_path / "nowhere")]) == 2
  assert "nowhere/metrics.jsonl does not exist" in capsys.readouterr().err
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"eval": True, "step": 1, "x": 1}) + "\n")
  assert curves.main([str(tmp_path)]) == 2
  assert "no metrics to plot yet" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError):
    curves.read_metrics(str(tmp_path / "missing.jsonl"))
