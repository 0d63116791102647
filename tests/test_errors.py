"""Errors a user can act on (issue 15), tested function by function in this process: the
shared handler and exit codes, the config comparison on resume, restores that fail without
moving good checkpoints, failed async saves, FID statistics and sample-file checks.

The same failures through `python -m gandance_jax.main` against a trained workdir are in
tests/test_bad_invocations.py.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import checkpoint, config_lib, errors
from gandance_jax.evaluation import cli, fid
from gandance_jax.train import loop
from tests import _mp_common as common

# Orbax's async restore of a mismatched shape leaves un-awaited coroutines, reported when
# garbage-collected (in whichever test runs then).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# ----------------------------------------------------------------------------- the handler


def _run(fn, capsys, **kwargs) -> tuple[int, str]:
  code = errors.run_cli(fn, **kwargs)
  return code, capsys.readouterr().err


def _raise(e):
  def fn():
    raise e
  return fn


def test_run_cli_maps_each_kind_to_its_exit_code(capsys):
  assert errors.run_cli(lambda: None) == 0 and errors.run_cli(lambda: 3) == 3
  code, err = _run(_raise(config_lib.ConfigError("config.train.g_lr = -1 is invalid")), capsys)
  assert code == 2 and err == "error: config.train.g_lr = -1 is invalid\n"
  code, err = _run(_raise(loop.NonFiniteLossError("non-finite loss/D = nan at step 5")),
                   capsys)
  assert code == 1 and "step 5" in err
  # The standard library's I/O failures name the path and exit 4.
  for number in (errno.ENOSPC, errno.EACCES, errno.ENOTDIR, errno.EEXIST):
    code, err = _run(_raise(OSError(number, os.strerror(number), "/w/x.npz")), capsys)
    assert code == 4 and "'/w/x.npz'" in err and os.strerror(number) in err
  assert _run(_raise(checkpoint.SaveFailedError("disk full")), capsys)[0] == 4
  assert _run(_raise(checkpoint.MissingCheckpointError("no checkpoint")), capsys)[0] == 2
  # A genuine bug keeps its traceback (propagates); --verbose prints one for user errors.
  with pytest.raises(ZeroDivisionError):
    errors.run_cli(lambda: 1 / 0)
  with pytest.raises(FileNotFoundError):   # ENOENT is not an I/O failure of the workdir
    errors.run_cli(_raise(FileNotFoundError(errno.ENOENT, "gone", "/x")))
  code, err = _run(_raise(errors.BadInputError("bad")), capsys, verbose=True)
  assert code == 2 and "Traceback" in err and err.endswith("error: bad\n")


def test_error_classes_keep_their_builtin_bases():
  # Existing callers catch ValueError / FileNotFoundError / FloatingPointError.
  assert issubclass(config_lib.ConfigError, ValueError)
  assert issubclass(checkpoint.MissingCheckpointError, FileNotFoundError)
  assert issubclass(loop.NonFiniteLossError, FloatingPointError)
  assert errors.exit_code_for(checkpoint.CorruptCheckpointError("x")) == 2


# ----------------------------------------------------------------------------- item 1, 2


def _fake_workdir(tmp_path, config: dict[str, Any]) -> str:
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "5").mkdir(parents=True)
  (workdir / "config.json").write_text(checkpoint.config_to_json(config))
  return str(workdir)


def test_config_diff_lists_dotted_fields():
  old = {"generator": {"channel_max": 16, "z_dim": 8}, "sample": {"scales": (1.0, 1.3)},
         "seed": 0}
  new = {"generator": {"channel_max": 8, "z_dim": 8}, "sample": {"scales": [1.0, 1.3]},
         "seed": 0, "extra": 1}
  assert checkpoint.config_diff(old, new) == [
      ("extra", checkpoint.MISSING, 1), ("generator.channel_max", 16, 8)]


def test_changed_config_on_resume_is_refused_unless_safe_or_allowed(tmp_path):
  config = common.tiny_hparams().config
  workdir = _fake_workdir(tmp_path, config)
  before = (tmp_path / "w" / "config.json").read_bytes()
  changed = json.loads(checkpoint.config_to_json(config))
  changed["generator"]["channel_max"] = 4
  with pytest.raises(loop.ConfigChangedError,
                     match=r"generator.channel_max: 8 -> 4.*new --workdir.*allow_config_change"):
    loop.check_config_change(workdir, changed)
  assert loop.check_config_change(workdir, changed, allow_config_change=True) == [
      ("generator.channel_max", 8, 4)]
  safe = json.loads(checkpoint.config_to_json(config))
  safe["train"]["total_kimg"] = 1.0
  safe["evals"]["class_accuracy"]["num_samples"] = 7
  safe["log_every_steps"] = 3
  assert [d[0] for d in loop.check_config_change(workdir, safe)] == [
      "evals.class_accuracy.num_samples", "log_every_steps", "train.total_kimg"]
  assert (tmp_path / "w" / "config.json").read_bytes() == before   # read only
  # No checkpoint yet: a failed first start may be retried with another config.
  os.rmdir(os.path.join(workdir, "checkpoints", "5"))
  assert loop.check_config_change(workdir, changed) == []


def test_failed_start_writes_nothing(tmp_path):
  # Invalid batch split: refused before the workdir (or config.json) is created or changed.
  hp = common.tiny_hparams(train__batch_size=6)
  with pytest.raises(errors.BadInputError, match="train.batch_size = 6"):
    loop.train(hp, str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()
  workdir = _fake_workdir(tmp_path, {"seed": 1})
  before = (tmp_path / "w" / "config.json").read_bytes()
  with pytest.raises(errors.BadInputError):
    loop.train(hp, workdir)
  assert (tmp_path / "w" / "config.json").read_bytes() == before
  # A file in the way of the workdir: an I/O error (exit 4) naming it.
  (tmp_path / "file").write_text("x")
  with pytest.raises(errors.WorkdirIOError, match="is a file") as info:
    loop.check_workdir(str(tmp_path / "file" / "run"))
  assert errors.classify(info.value) == errors.ExitCode.IO_FAILURE


@flax.struct.dataclass
class _State:
  g_ema_params: Any
  g_buffers: Any
  w: Any


def _state(n: int, value: float) -> _State:
  return _State(g_ema_params={"a": jnp.full((n,), value)}, g_buffers={"b": jnp.zeros((2,))},
                w=jnp.full((n,), value))


def _abstract(n: int) -> _State:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(n, 0.0))


def test_restore_of_another_shape_moves_nothing(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(_state(3, 1.0), 1, {})
  ckpt.save(_state(3, 2.0), 2, {})
  ckpt.wait()
  # Another shape (a changed network config) fails every checkpoint: none is corrupt.
  with pytest.raises(checkpoint.CorruptCheckpointError,
                     match=r"steps \[2, 1\]; nothing was moved.*--restart_from_scratch"):
    ckpt.restore_latest(_abstract(4))
  assert ckpt.all_steps() == [1, 2] and not (tmp_path / checkpoint.CORRUPT_DIR).exists()
  state, step = ckpt.restore_latest(_abstract(3))
  assert step == 2 and float(state.w[0]) == 2.0
  # Asked to restart: the unreadable ones are moved aside, a fresh start follows.
  assert ckpt.restore_latest(_abstract(4), restart_if_unreadable=True) is None
  assert ckpt.all_steps() == [] and len(os.listdir(tmp_path / checkpoint.CORRUPT_DIR)) == 2
  ckpt.close()


# ----------------------------------------------------------------------------- item 6


def test_failed_async_save_stops_the_next_save(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(_state(3, 1.0), 1, {})
  ckpt.wait()
  ckpt.save(_state(3, 2.0), 2, {})
  ckpt.manager.wait_until_finished()    # let the real write end, then report a failure
  tmp = tmp_path / checkpoint.CHECKPOINT_DIR / "2.orbax-checkpoint-tmp-123"
  tmp.mkdir()

  def full_disk():
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(ckpt.manager, "check_for_errors", full_disk)
  with pytest.raises(checkpoint.SaveFailedError,
                     match=r"step 2 in .*checkpoints failed .*No space left") as info:
    ckpt.save(_state(3, 3.0), 3, {})
  assert errors.classify(info.value) == errors.ExitCode.IO_FAILURE
  assert not tmp.exists()                              # temporaries cleaned
  assert 1 in ckpt.all_steps() and 3 not in ckpt.all_steps()   # no later save started
  monkeypatch.undo()
  ckpt.close()


# ----------------------------------------------------------------------------- item 4, 5


def _cov(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  x = np.random.default_rng(seed).standard_normal((n, d))
  return fid.feature_statistics(x)


def test_statistics_checks(tmp_path):
  # Real covariances pass, rank-deficient (N < D) and float32-stored ones included.
  mu, sigma = _cov(200, 16)
  fid.check_statistics(mu, sigma, "ok.npz")
  mu, sigma = _cov(5, 64)                      # rank 4: 60 eigenvalues are rounding noise
  fid.check_statistics(mu, sigma, "ok.npz", num_samples=5)
  fid.check_statistics(mu, sigma.astype(np.float32), "ok.npz", stored_dtype=np.float32)
  d = 16
  mu, sigma = _cov(200, d)
  bad = {"not positive semi-definite": (mu, -np.eye(d)),
         "mu holds 1 NaN": (np.where(np.arange(d) == 3, np.nan, mu), sigma),
         "not symmetric": (mu, sigma + np.triu(np.full((d, d), 1e-3), 1)),
         "mu \\[D\\] and sigma": (mu[:-1], sigma)}
  for message, (m, s) in bad.items():
    with pytest.raises(errors.BadInputError, match=f"ref.npz: .*{message}"):
      fid.check_statistics(m, s, "ref.npz")
  # Through the file reader: the silent wrong FID of issue 15 (sigma = -I) is refused.
  path = tmp_path / "ref.npz"
  np.savez(path, mu=mu, sigma=-np.eye(d))
  with pytest.raises(errors.BadInputError, match=f"{path}: sigma is not positive"):
    fid.load_statistics(path, convention="tf1")


def _write(path, data: bytes):
  path.write_bytes(data)
  return path


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
  """The bad sample files of issue 15 (name -> (path, what the message must say))."""
  root = tmp_path_factory.mktemp("samples")
  good = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
  np.savez(root / "good.npz", arr_0=good, arr_1=np.arange(6) % 10)
  full = (root / "good.npz").read_bytes()
  files = {
      "truncated": (_write(root / "truncated.npz", full[:len(full) // 2]), "not a readable"),
      "empty": (_write(root / "empty.npz", b""), "empty \\(0 bytes\\)"),
      "random": (_write(root / "random.npz", np.random.default_rng(1).bytes(4096)),
                 "not a readable"),
      "npy": (root / "x.npy", "single .npy array"),
      "nchw": (root / "nchw.npz", "NCHW"),
      "single": (root / "single.npz", "single image"),
      "float255": (root / "float.npz", "uint8 .*floats in \\[0, 255\\]"),
      "zero": (root / "zero.npz", "holds no images"),
      "labels": (root / "labels.npz", "out of range \\[0, 12\\]"),
  }
  np.save(root / "x.npy", good)
  np.savez(root / "nchw.npz", arr_0=good.transpose(0, 3, 1, 2).repeat(3, 1))
  np.savez(root / "single.npz", arr_0=good[0])
  np.savez(root / "float.npz", arr_0=good.astype(np.float32))
  np.savez(root / "zero.npz", arr_0=good[:0])
  np.savez(root / "labels.npz", arr_0=good, arr_1=np.array([0, 1, 2, 3, 4, 12]))
  return root, files


@pytest.mark.parametrize("name", ["truncated", "empty", "random", "npy", "nchw", "single",
                                  "float255", "zero", "labels"])
def test_sample_file_errors_name_the_file(sample_files, name):
  _, files = sample_files
  path, message = files[name]
  with pytest.raises(errors.BadInputError, match=f"{path}.*{message}"):
    cli._load_images(str(path), num_classes=10)  # pylint: disable=protected-access


def test_good_sample_file_loads(sample_files):
  root, _ = sample_files
  images, labels = cli._load_images(str(root / "good.npz"), num_classes=10)  # pylint: disable=protected-access
  assert images.shape == (6, 8, 8, 1) and list(labels) == [0, 1, 2, 3, 4, 5]


def test_corrupt_cached_reference_says_deleting_is_safe(tmp_path):
  ref = tmp_path / "reference"
  ref.mkdir()
  stats, feats = ref / "digits_x.npz", ref / "digits_x_features.npy"
  _write(stats, b"PK\x03\x04 not a zip")
  np.save(feats, np.zeros((4, 3)))
  with pytest.raises(errors.BadInputError, match=f"{stats}.*deleting them is safe"):
    fid.load_cached_reference(str(stats), str(feats))
  mu, sigma = _cov(20, 3)
  fid.FIDStatistics(mu, sigma, "digits_r8", "x").save(stats)
  _write(feats, b"\x93NUMPY truncated")
  with pytest.raises(errors.BadInputError, match=f"{feats} is unreadable.*safe"):
    fid.load_cached_reference(str(stats), str(feats))
  np.save(feats, np.zeros((4, 3)))
  got, f = fid.load_cached_reference(str(stats), str(feats))
  assert got.dim == 3 and f.shape == (4, 3)


# ----------------------------------------------------------------------------- item 7, 8


def test_eval_and_sample_scales_are_validated_at_start():
  for override, field in ((dict(evals__class_accuracy__guidance_scales=(float("nan"),)),
                           "evals.class_accuracy.guidance_scales\\[0\\] = nan"),
                          (dict(evals__class_accuracy__num_samples=0),
                           "evals.class_accuracy.num_samples = 0"),
                          (dict(sample__npz_scales=(-1.0,)), "sample.npz_scales\\[0\\] = -1.0"),
                          (dict(sample__layer_scales="4:-1"), "sample.layer_scales")):
    with pytest.raises(config_lib.ConfigError, match=field):
      common.tiny_hparams(**override)


def test_non_finite_parameters_name_the_network():
  state = _State(g_ema_params={"a": jnp.ones(2)}, g_buffers={}, w=jnp.ones(2))

  @flax.struct.dataclass
  class Full:
    g_params: Any
    d_params: Any
    g_ema_params: Any
    step: Any

  ok = {"w": jnp.ones((2, 2))}
  bad = {"w": jnp.array([[1.0, np.nan], [0.0, 1.0]])}
  parts = loop._non_finite_parts  # pylint: disable=protected-access
  assert parts(Full(g_params=ok, d_params=bad, g_ema_params=ok, step=jnp.int32(3))) == "D"
  assert parts(Full(g_params=bad, d_params=ok, g_ema_params=bad, step=jnp.int32(3))) == (
      "G, G EMA")
  assert parts(state) == "the state"


def test_stale_partial_sample_files_are_removed(tmp_path):
  from gandance_jax import sample_cli  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  dead = subprocess.Popen(["true"])
  dead.wait()   # its pid now names no process (a killed sampler's file)
  stale = tmp_path / f"samples_40_learned_s1.3.npz.tmp{dead.pid}"
  live = tmp_path / f"samples_40_learned_s1.5.npz.tmp{os.getpid()}"
  other = tmp_path / "notes.tmp12"
  for p in (stale, live, other):
    p.write_bytes(b"partial")
  assert sample_cli.remove_stale_temporaries(str(tmp_path)) == [str(stale)]
  assert not stale.exists() and live.exists() and other.exists()


def test_metrics_interval_survives_a_mid_interval_checkpoint(tmp_path):
  """A checkpoint (SIGTERM, or the schedule) inside a log interval keeps the interval's rows
  in its metadata: the resumed run writes the records of an uninterrupted run."""
  class Writer:
    def write_scalars(self, step, scalars):
      pass

  rows = {s: {"loss/G": jnp.float32(0.1 * s + 1 / 3), "loss/D": jnp.float32(s * s)}
          for s in range(6)}

  def records(path):
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_sec"}
            for line in open(path)]

  whole = loop.MetricsLogger(Writer(), str(tmp_path / "a.jsonl"), 8, 0)
  for s in range(6):
    whole.buffer.add(s, rows[s])
    if (s + 1) % 3 == 0:
      whole.log(s + 1)
  # Interrupted after step 4 (a checkpoint there: `Saver.save` checks, does not write).
  first = loop.MetricsLogger(Writer(), str(tmp_path / "b.jsonl"), 8, 0)
  for s in range(4):
    first.buffer.add(s, rows[s])
    if (s + 1) % 3 == 0:
      first.log(s + 1)
  first.check()
  saved = json.loads(json.dumps([[s, v] for s, v in first.rows]))   # through the meta JSON
  resumed = loop.MetricsLogger(Writer(), str(tmp_path / "b.jsonl"), 8, 4, saved)
  for s in range(4, 6):
    resumed.buffer.add(s, rows[s])
  resumed.log(6)
  assert records(tmp_path / "b.jsonl") == records(tmp_path / "a.jsonl")
  assert [r["step"] for r in records(tmp_path / "a.jsonl")] == [3, 6]
