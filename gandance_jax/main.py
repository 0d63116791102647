"""Entry point: train, sample or evaluate a class-conditional GAN from a config file.

  python -m gandance_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m gandance_jax.main --config=configs/digits.py:shrink --workdir=/tmp/tiny \\
      --config.train.batch_size=16
  python -m gandance_jax.main --config=configs/digits.py --workdir=/tmp/digits --mode=sample
  python -m gandance_jax.main --config=configs/digits.py --workdir=/tmp/digits --mode=eval
  # GANdance on a downloaded pre-trained conditional GAN (NVIDIA's network pickle, a .pth):
  python -m gandance_jax.main --config=configs/cifar10.py --workdir=runs/nv_c10 --mode=sample \\
      --network=cifar10.pkl --config.sample.mode=training_free

Multi-process (one process per host or GPU): launchers that JAX detects (SLURM, Open MPI,
multi-host TPU) need no flags; otherwise pass --coordinator_address, --num_processes and
--process_id to every process. Re-running the same command resumes from the newest
checkpoint in --workdir (the config must match its config.json; see --allow_config_change).

Exit codes (gandance_jax/errors.py, README "Exit codes and errors"): 0 done, 1 non-finite
loss or parameters (the message names the step), 2 bad input or config (the message names
the field, flag or file), 4 I/O failure (disk full, permission, a file in the way), 143
preempted by SIGTERM after saving a checkpoint. User errors print one line; --verbose adds
the traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gandance_jax import config_lib
from gandance_jax import console  # first: quiets TensorFlow's start-up before it is imported
from gandance_jax import errors
from gandance_jax import report
from gandance_jax import sample_cli
from gandance_jax.evaluation import cli
from gandance_jax.train import loop
from gandance_jax.train import sharding


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py[:shrink].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "all"],
                  "What to do; 'all' = train, then sample, then eval (the README main job).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_string("compilation_cache_dir",
                    os.path.join(os.environ.get("GANDANCE_CACHE", "~/.cache/gandance_jax"),
                                 "xla"),
                    "Persistent XLA compilation cache ('' = off); makes restarts start fast.")
flags.DEFINE_string("checkpoint", "latest",
                    "--mode=sample/eval: 'latest', 'best' (the best in-loop snapshot of "
                    "config.best_metric) or a step number.")
flags.DEFINE_string("network", "",
                    "--mode=sample/eval: the generator to use instead of --workdir's checkpoint: "
                    "a stylegan2-ada network-snapshot .pkl, a StyleGAN2 .pth (settings from "
                    "the file, else from --config.generator.*) or a run's workdir. Outputs "
                    "still go to --workdir.")
flags.DEFINE_bool("log_all_processes", False,
                  "Log INFO from every process (default: only process 0; others warn/error).")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume although the config differs from the workdir's config.json in fields "
                  "other than loop.RESUME_SAFE_FIELDS (total_kimg, evals, intervals, ...).")
flags.DEFINE_bool("restart_from_scratch", False,
                  "When no checkpoint in --workdir can be restored, move them to "
                  "corrupt_checkpoints/ and start from step 0 (default: stop with an error).")
flags.DEFINE_bool("verbose", False, "Print the traceback of user errors too.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
  """Runs --mode; returns the exit code (a user error: one line on stderr, see errors.py)."""
  return errors.run_cli(_main, argv, verbose=FLAGS.verbose)


def _main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise errors.BadInputError(f"unexpected arguments {argv[1:]}: every option is a --flag "
                               "(e.g. --config.train.batch_size=16)")
  import jax  # pylint: disable=g-import-not-at-top

  # The terminal shows what a person reads; library logs go to <workdir>/log.txt.
  console.setup(FLAGS.workdir)
  # Multi-process start-up must come before any JAX computation.
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  if jax.process_index() > 0 and not FLAGS.log_all_processes:
    # One readable log per run: metrics, grids and files come from process 0 anyway.
    logging.set_verbosity(logging.WARNING)
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(FLAGS.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  try:
    # A config file that failed to load is a placeholder raising OSError on first use.
    config = FLAGS.config
    config.get("data")
  except OSError as e:
    raise errors.BadInputError(
        f"--config: cannot load {config_flags.get_config_filename(FLAGS['config'])!r}: "
        f"{errors.one_line(e)}") from e
  which = FLAGS.checkpoint.strip()
  if which not in ("latest", "best") and not which.isdigit():
    raise errors.BadInputError(
        f"--checkpoint = {which!r} is invalid: 'latest', 'best' or a step number")
  network = FLAGS.network.strip()
  if network and FLAGS.mode not in ("sample", "eval"):
    raise errors.BadInputError(
        f"--network = {network!r} is for --mode=sample or --mode=eval, not --mode="
        f"{FLAGS.mode} (to fine-tune from it use --config.train.init_from)")
  loop.check_workdir(FLAGS.workdir)
  hparams = config_lib.validate_config(config)
  # The report's "config vs the file's defaults": recorded only once a command is known to
  # succeed (a refused start leaves the workdir as it was; errors.py, issue 15).
  record_source = lambda: report.record_config_source(FLAGS.workdir, FLAGS["config"])
  logging.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())

  if FLAGS.mode in ("train", "all"):
    try:
      loop.train(hparams, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change,
                 restart_from_scratch=FLAGS.restart_from_scratch, on_start=record_source)
    except loop.Preempted as e:
      logging.warning("%s", e)
      return int(errors.ExitCode.PREEMPTED)
  if FLAGS.mode in ("sample", "all"):
    sample_cli.run(config, FLAGS.workdir, FLAGS.checkpoint, network=network)
  if FLAGS.mode in ("eval", "all"):
    cli.run(config, FLAGS.workdir, FLAGS.checkpoint, network=network)
  if FLAGS.mode in ("sample", "eval"):
    record_source()
  report.finish(FLAGS.workdir, FLAGS.mode)
  return 0


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag, an unknown or mistyped --config.<field> or a
  missing config file reported in one line and exit 2 (absl's own handler exits 1, the code
  of a non-finite loss)."""
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # config_flags reports an unknown field as AttributeError/KeyError and a config file
    # it cannot load as an OSError or the file's own exception, all during parsing.
    if "--verbose" in argv:
      raise
    culprit = errors.one_line(e).strip("\"'")
    if isinstance(e, (AttributeError, KeyError)):
      # Name the whole override, not only the missing key.
      flag = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
              and culprit in a.split("=")[0].split(".")]
      culprit = (f"unknown config field {flag[0] if flag else culprit!r}: overrides must name "
                 "a field of the config file (README 'Exit codes and errors')")
    sys.stderr.write(f"error: {culprit}\n")
    sys.exit(int(errors.ExitCode.BAD_INPUT))


def run() -> None:
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
  run()
