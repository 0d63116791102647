"""Bad invocations against a trained digits:shrink workdir (issue 15): each exits non-zero
with the documented code, prints no traceback, names the culprit, and leaves the workdir as it
was (every file's hash; the state still loads).

Cases that fail while flags are parsed, or need another device count, run `python -m
gandance_jax.main` (the real top-level handler, ~3 s of start-up each); the others call
`main.main` in this process (the same handler, `errors.run_cli`, without the interpreter and
JAX start-up).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
from typing import Any

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from gandance_jax import checkpoint
from gandance_jax.evaluation import digits_classifier, fid
from tests import _mp_common as common


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
  return common.shared_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def trained(shared, tmp_path_factory):
  """A copy of the tiny 24-step reference run (shared with the checkpoint tests) and the
  bad input files of the cases."""
  workdir = tmp_path_factory.mktemp("bad_invocations") / "run"
  shutil.copytree(common.reference_run(shared), workdir)
  files = workdir.parent / "inputs"
  files.mkdir()
  good = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
  np.savez(files / "good.npz", arr_0=good, arr_1=np.arange(6) % 10)
  full = (files / "good.npz").read_bytes()
  (files / "truncated.npz").write_bytes(full[:len(full) // 2])
  (files / "random.npz").write_bytes(np.random.default_rng(1).bytes(4096))
  np.savez(files / "nchw.npz", arr_0=good.transpose(0, 3, 1, 2).repeat(3, 1))
  np.savez(files / "zero.npz", arr_0=good[:0], arr_1=np.zeros(0, np.int64))
  mu, sigma = fid.feature_statistics(np.random.default_rng(2).standard_normal((50, 4)))
  fid.FIDStatistics(mu, sigma, "tf1", "x").save(files / "stats.npz")
  np.savez(files / "not_psd.npz", mu=mu, sigma=-np.eye(4))
  (files / "folder" / "0").mkdir(parents=True)
  (files / "folder" / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
  return workdir, files


def _hashes(workdir: pathlib.Path) -> dict[str, str]:
  # Every file but log.txt: the library log is append-only and records each invocation,
  # the refused ones included (console.py); nothing else may change.
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob("*")) if p.is_file() and p.name != "log.txt"}


def _subprocess(workdir, *extra: str, config: str = "configs/digits.py:shrink",
                num_devices: int = 1) -> tuple[int, str]:
  cmd = common.main_command(workdir, workdir.parent / "xla", *extra, config=config)
  result = subprocess.run(cmd, cwd=common.REPO, env=common.subprocess_env(num_devices),
                          capture_output=True, text=True, timeout=300, check=False)
  return result.returncode, result.stderr


def _in_process(workdir, capsys, mode: str, checkpoint_flag: str = "latest",
                **overrides: Any) -> tuple[int, str]:
  from gandance_jax import main  # pylint: disable=g-import-not-at-top
  config = common.tiny_config(**overrides)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["main", f"--config={common.REPO / 'configs' / 'digits.py'}:shrink",
                 f"--workdir={workdir}"])
  capsys.readouterr()
  with flagsaver.flagsaver(config=config, workdir=str(workdir), mode=mode, network="",
                           checkpoint=checkpoint_flag, compilation_cache_dir=""):
    code = main.main(["main"])
  return code, capsys.readouterr().err


# name -> (how, arguments, exit code, what stderr must name). `{w}` is the workdir, `{f}` the
# folder of input files.
CASES = {
    "unknown_config_field": ("sub", ["--config.train.nosuch=1"], 2, "--config.train.nosuch"),
    "missing_config_file": ("sub", ["config=configs/nosuch.py"], 2, "configs/nosuch.py"),
    "batch_not_divisible_by_devices": ("sub", ["devices=3"], 2,
                                       "batch_size = 8 .*number of devices.*3"),
    "workdir_is_a_file": ("main", dict(mode="train", workdir="{w}/config.json"), 4,
                          "config.json.* is a file"),
    "channel_max_changed_on_resume": ("main", dict(mode="train", generator__channel_max=4), 2,
                                      "generator.channel_max: 8 -> 4"),
    "nan_eval_scale": ("main", dict(mode="train",
                                    evals__class_accuracy__guidance_scales=(float("nan"),)),
                       2, "evals.class_accuracy.guidance_scales"),
    "checkpoint_999": ("main", dict(mode="sample", checkpoint_flag="999"), 2,
                       "no checkpoint at step 999 in .*checkpoints"),
    "checkpoint_best_without_snapshot": ("main", dict(mode="sample", checkpoint_flag="best"),
                                         2, "no best snapshot in .*best_checkpoint"),
    "eval_truncated_npz": ("main", dict(mode="eval", eval_samples="{f}/truncated.npz"), 2,
                           "truncated.npz is not a readable .npz"),
    "eval_random_bytes": ("main", dict(mode="eval", eval_samples="{f}/random.npz"), 2,
                          "random.npz is not a readable .npz"),
    "eval_nchw": ("main", dict(mode="eval", eval_samples="{f}/nchw.npz"), 2,
                  "nchw.npz: 'arr_0' must be NHWC .*NCHW"),
    "eval_zero_images": ("main", dict(mode="eval", eval_samples="{f}/zero.npz"), 2,
                         "zero.npz: 'arr_0' holds no images"),
    "eval_unreadable_png": ("main", dict(mode="eval", eval_samples="{f}/folder"), 2,
                            "cannot read image .*broken.png"),
    "corrupt_cached_reference": ("main", dict(mode="eval", eval_samples="{f}/good.npz"), 2,
                                 "reference.*deleting them is safe"),
    "reference_not_psd": ("fid", ["fid", "{f}/not_psd.npz", "{f}/stats.npz",
                                  "--convention", "tf1"], 2,
                          "not_psd.npz: sigma is not positive semi-definite"),
}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_bad_invocation(trained, capsys, name):
  workdir, files = trained
  how, args, want_code, culprit = CASES[name]
  fill = lambda s: s.format(w=workdir, f=files) if isinstance(s, str) else s
  cache = workdir / "reference"
  if name == "corrupt_cached_reference":
    # The reference statistics the digits FID of --mode=eval caches (evaluators/common.py).
    cache.mkdir()
    stem = f"digits_digits_cnn_r8_v{digits_classifier.VERSION}"
    (cache / f"{stem}.npz").write_bytes(b"PK\x03\x04 corrupt")
    np.save(cache / f"{stem}_features.npy", np.zeros((4, 3)))
  before = _hashes(workdir)
  try:
    if how == "sub":
      extra = [fill(a) for a in args if "=" in a and a.startswith("--")]
      opts = dict(a.split("=", 1) for a in args if not a.startswith("--"))
      kwargs = {}
      if "config" in opts:
        kwargs["config"] = opts["config"]
      target = fill(opts.get("workdir", "{w}"))
      code, err = _subprocess(pathlib.Path(target), *extra,
                              num_devices=int(opts.get("devices", 1)), **kwargs)
    elif how == "main":
      kw = {k: fill(v) for k, v in args.items()}
      code, err = _in_process(kw.pop("workdir", workdir), capsys, kw.pop("mode"),
                              kw.pop("checkpoint_flag", "latest"), **kw)
    else:
      code = fid.main([fill(a) for a in args])
      err = capsys.readouterr().err
    assert code == want_code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    error_lines = [line for line in err.splitlines() if "error: " in line]
    assert len(error_lines) == 1, err[-3000:]
    assert re.search(culprit, error_lines[0]), error_lines[0]
    assert _hashes(workdir) == before
  finally:
    shutil.rmtree(cache, ignore_errors=True)


def test_workdir_still_loads_after_the_bad_invocations(trained):
  # Runs after the cases on the same worker (pytest keeps file order within a module).
  workdir, _ = trained
  _, _, config, step = checkpoint.load_generator(str(workdir))
  assert step == common.NUM_STEPS and config.generator.channel_max == 8
  assert not (workdir / checkpoint.CORRUPT_DIR).exists()
  assert os.path.exists(workdir / checkpoint.CONFIG_FILE)
