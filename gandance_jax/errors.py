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
import errno
import sys
import traceback
from typing import Any, Callable


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


# errno values that mean "the workdir or an output cannot be written" (exit 4), whatever
# raised them: a full disk, no permission, a file where a directory should be, and back.
IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                       errno.EEXIST, errno.ENOTDIR, errno.EISDIR})


def classify(error: BaseException) -> ExitCode | None:
  """`exit_code_for`, plus the OSErrors of `IO_ERRNOS` (exit 4) that the standard library
  raises for an unwritable workdir; None for everything else (a genuine bug)."""
  code = exit_code_for(error)
  if code is not None:
    return code
  if isinstance(error, OSError) and error.errno in IO_ERRNOS:
    return ExitCode.IO_FAILURE
  return None


def one_line(error: BaseException) -> str:
  """The message of a user error as one line; an OSError names its file(s)."""
  if isinstance(error, OSError) and not isinstance(error, UserError) and error.strerror:
    files = " -> ".join(repr(f) for f in (error.filename, error.filename2) if f is not None)
    text = f"{error.strerror}: {files}" if files else error.strerror
  else:
    text = str(error) or type(error).__name__
  return " ".join(text.split())


def run_cli(fn: Callable[..., int | None], *args: Any, verbose: bool = False,
            prog: str = "") -> int:
  """Calls `fn(*args)` and turns a user error into one line on stderr and its exit code.

  Genuine bugs (anything `classify` does not know) propagate with their traceback;
  `verbose` prints the traceback of user errors too. Returns `fn`'s code (None = 0).
  """
  try:
    return int(fn(*args) or 0)
  except Exception as e:  # pylint: disable=broad-except
    code = classify(e)
    if code is None:
      raise
    if verbose:
      traceback.print_exc()
    sys.stderr.write(f"{prog + ': ' if prog else ''}error: {one_line(e)}\n")
    sys.stderr.flush()
    return int(code)
