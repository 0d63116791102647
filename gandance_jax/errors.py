"""Errors a user can act on, and the exit codes every command-line tool shares.

Layer 0 (imports nothing of the project): every module may raise these, every CLI maps them
to an exit code through `exit_code_for`.

  code  meaning
  0     done
  1     training stopped on a non-finite loss or parameters (the message names step and loss)
  2     bad input or config (a field, a flag, a file's content): the message names it
  3     over the AOT memory budget (`gandance_jax.aot`)
  4     I/O failure (disk full, permission denied, workdir that is a file)
  143   preempted by SIGTERM after saving a checkpoint (re-run the command to resume)
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
  OK = 0
  NON_FINITE = 1
  BAD_INPUT = 2
  OVER_BUDGET = 3
  IO_FAILURE = 4
  PREEMPTED = 143


class UserError(Exception):
  """A failure the user can fix from the message alone (no traceback is printed).

  Subclasses set `exit_code`; the message must name the field, flag or file and say what
  was expected.
  """

  exit_code: ExitCode = ExitCode.BAD_INPUT


class BadInputError(UserError, ValueError):
  """A bad config value, flag or file content (exit 2)."""

  exit_code = ExitCode.BAD_INPUT


class WorkdirIOError(UserError, OSError):
  """The workdir or an output cannot be written: disk full, permission, a file in the way
  (exit 4)."""

  exit_code = ExitCode.IO_FAILURE


def exit_code_for(error: BaseException) -> ExitCode | None:
  """The exit code of a user-facing error, or None for a genuine bug (show the traceback)."""
  if isinstance(error, UserError):
    return error.exit_code
  return None
