"""Quiets what orbax prints about a failed checkpoint write, which `Checkpointer` raises itself.

Orbax cannot be asked to be quiet: its writer threads report a failure with absl's
`logging.exception`, unconditionally and at ERROR (orbax 0.12 has no option or logger of its
own for it), and the write coroutines it abandons report again through asyncio and
`sys.unraisablehook`. So a `Checkpointer` installs `QuietOrbaxFailures` only while a save may
still fail (from `save` until it is known to have succeeded; after a failure, until `close`),
and removing it leaves the process's loggers and hook as they were.
"""

import gc
import logging
import os
import sys

from dl.core import write_failure

# What orbax logs (absl, ERROR, with a traceback) about one failed write, in each thread it used.
_ORBAX_MESSAGES = (
  "raised an exception",  # _SignalingThread.run()
  "Failed to run",  # handler commit operations in the background save thread
  "Save Finalize thread",
  "Checkpointer failed",
)


class QuietOrbaxFailures:
  """While installed, turns orbax's reports of a failed write into DEBUG records (shown only
  where debug logging is on) and drops tensorstore's "Event loop is closed"."""

  def __init__(self):
    self.after_failure = False  # a failure was raised: its late reports may come until `close`
    self._active = False
    self._errno: int | None = None  # the OS error of the failure raised, repeated by asyncio
    self._previous_hook = None  # the hook ours passes other reports to, while ours is set

  def install(self) -> None:
    """Attaches the filters and the hook; does nothing while they are attached."""
    if self._active:
      return
    self._active = True
    # Each thread orbax used logs the failure's traceback through absl, at ERROR.
    logging.getLogger("absl").addFilter(self._demote_orbax_log)
    # Orbax's abandoned write tasks say it again when they are collected.
    logging.getLogger("asyncio").addFilter(self._demote_abandoned_task)
    # Tensorstore's late writes call back into orbax's closed loop: "Event loop is closed".
    if self._previous_hook is None:  # else ours is still in a later hook's chain, inert
      self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable

  def remove(self) -> None:
    """Detaches the filters and restores the hook found at `install`."""
    if not self._active:
      return
    self._active, self.after_failure, self._errno = False, False, None
    logging.getLogger("absl").removeFilter(self._demote_orbax_log)
    logging.getLogger("asyncio").removeFilter(self._demote_abandoned_task)
    if sys.unraisablehook == self._unraisable:  # else a later hook wraps ours: it stays, inert
      sys.unraisablehook, self._previous_hook = self._previous_hook, None

  def failed(self, error: BaseException) -> None:
    """Ends orbax's abandoned write coroutines now, quietly, after `error` (the one to raise)."""
    self.after_failure, self._errno = True, write_failure.os_cause(error)[0]
    _drop_tracebacks(error)  # Their frames hold those coroutines, which would otherwise end
    gc.collect()  # noisily at exit ("sys.meta_path is None"), after this is removed.

  def _demote_orbax_log(self, record: logging.LogRecord) -> bool:
    if (
      record.levelno >= logging.ERROR
      and f"orbax{os.sep}checkpoint" in record.pathname
      and any(m in str(record.msg) for m in _ORBAX_MESSAGES)
    ):
      return _demote(record)
    return True

  def _demote_abandoned_task(self, record: logging.LogRecord) -> bool:
    """asyncio's "... exception was never retrieved" about orbax's write tasks and the futures
    gathering them, printed whenever they are collected, says again what was raised."""
    text = str(record.msg)
    error = record.exc_info[1] if record.exc_info else None
    if (
      record.levelno >= logging.ERROR
      and "exception was never retrieved" in text.split("\n", 1)[0]
      and (
        f"orbax{os.sep}checkpoint" in text  # a task's coroutine, "defined at <its file>"
        or (
          error is not None
          and self._errno is not None
          and write_failure.os_cause(error)[0] == self._errno
        )
      )
    ):
      return _demote(record)
    return True

  def _unraisable(self, unraisable) -> None:
    """Drops what tensorstore's writes that end after the first failed one raise, calling back
    into the event loop orbax closed; passes on everything else."""
    closed_loop = isinstance(unraisable.exc_value, RuntimeError) and (
      str(unraisable.exc_value) == "Event loop is closed"
    )
    if not (self._active and closed_loop):
      self._previous_hook(unraisable)


def _demote(record: logging.LogRecord) -> bool:
  """Makes `record` a DEBUG one; keeps it only where its logger shows DEBUG."""
  record.levelno, record.levelname = logging.DEBUG, "DEBUG"
  return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _drop_tracebacks(error: BaseException | None) -> None:
  """Frees the frames that `error` and the errors it chains to keep alive."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    error.__traceback__ = None
    if error.__cause__ is not None and error.__context__ is not None:
      _drop_tracebacks(error.__context__)
    error = error.__cause__ or error.__context__
