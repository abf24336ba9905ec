"""Checkpoints through orbax: atomic saves in the background, the latest K and the best kept,
safe resume, and one clear error when a checkpoint cannot be written."""

import contextlib
import errno
import gc
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from dl.core import distributed

log = logging.getLogger(__name__)

_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes step N into N<suffix>, renamed when complete


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written, or none in a directory restores into the requested state."""


class CheckpointWriteError(CheckpointError):
  """Writing a checkpoint failed (a full or unwritable disk, ...); earlier checkpoints are kept.

  Attributes:
    step: the step whose checkpoint was not written.
    last_good_step: the newest complete checkpoint kept on disk (None: there is none).
    original: the error orbax raised (its message is long; kept here, not chained).
  """

  def __init__(self, message: str, step: int, last_good_step: int | None, original: BaseException):
    super().__init__(message)
    self.step, self.last_good_step, self.original = step, last_good_step, original


class Checkpointer:
  """Saves and restores {"state": pytree, "data": JSON} under one directory.

  Orbax writes each step into a temporary directory and renames it when complete,
  so a crash mid-save leaves the previous checkpoints intact. A checkpoint that is
  complete on disk but unreadable (corrupted) is moved aside to `<dir>/../corrupted/`
  and the next older one is restored instead, with a warning.

  With `async_saves` (the default) `save` copies the state to host memory and returns;
  the files are written in the background while training goes on. A save that fails
  (a full disk, no permission) raises `CheckpointWriteError` once, at the next `check`,
  `save` or `wait`: its half-written directory is removed and the earlier checkpoints
  are kept. While a Checkpointer is open it also quiets the tracebacks that orbax's
  writer threads print about such a failure, since that error is raised here instead.
  """

  def __init__(
    self,
    directory: str,
    *,
    keep: int = 3,
    best_metric: str | None = None,
    best_mode: str = "max",
    async_saves: bool = True,
  ):
    self.directory = os.path.abspath(directory)
    self._options = dict(
      keep=keep, best_metric=best_metric, best_mode=best_mode, async_saves=async_saves
    )
    if distributed.is_primary():  # One process repairs the directory; the others wait.
      for step, error in _steps_with_unreadable_metadata(self.directory):
        self._move_aside(step, error)
    distributed.barrier("dl.core.checkpoint: damaged steps moved aside")
    self._pending: tuple[int, int] | None = None  # (step, bytes) of a save not yet known done
    self._quiet: _QuietOrbaxFailures | None = None  # from the first save until `close`
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    policies = [checkpoint_managers.LatestN(n=self._options["keep"])]
    best_fn, best_mode = None, self._options["best_mode"]
    if self._options["best_metric"]:
      metric = self._options["best_metric"]
      best_fn = lambda metrics: metrics[metric]  # noqa: E731
      # BestN sorts ascending and keeps the tail, so "max" is the unreversed order.
      policies.append(
        checkpoint_managers.BestN(
          get_metric_fn=best_fn,
          reverse=best_mode == "min",
          n=1,
          keep_checkpoints_without_metrics=False,  # LatestN keeps the newest ones
        )
      )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=best_fn,
      best_mode=best_mode,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=self._options["async_saves"],
      # Created in the background, a directory that cannot be made (no permission, a
      # read-only disk) would leave orbax's writer threads waiting minutes for it.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )
    return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def save(self, step: int, state: Any, data: dict, metrics: dict | None = None) -> None:
    """Saves `state` and the data position `data` as the checkpoint of `step`.

    With `async_saves` this returns once the state is copied to host memory and the
    files are written in the background (first waiting for the previous save).

    Raises:
      CheckpointWriteError: when the previous save or this one failed (see `check`).
    """
    self.wait()
    self._quiet = self._quiet or _QuietOrbaxFailures()
    self._pending = (step, _nbytes(state) + len(json.dumps(data, default=str)))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
    try:
      with _no_warning_for_steps_without_metrics(metrics):
        self._manager.save(step, args=args, metrics=metrics, force=True)
    except Exception as e:  # Orbax raises ValueError, OSError, ... for a failed write.
      self._fail(e)
    if not self._options["async_saves"]:
      self._pending = None

  def check(self) -> None:
    """Raises the failure of a background save that has ended; returns at once otherwise.

    Cheap enough to call at every event step of a training loop: it never waits for a
    save in progress, and reports each failure once.

    Raises:
      CheckpointWriteError: naming the directory, the step whose save failed, the cause
        (for a full disk: the bytes needed and free) and the newest checkpoint kept.
    """
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until pending saves are on disk.

    Raises:
      CheckpointWriteError: when a background save failed (once; see `check`).
    """
    if self._pending is None:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # The background write's own error, re-raised by orbax.
      self._fail(e)
    self._pending = None

  def close(self) -> None:
    """Waits for pending saves and releases orbax's threads.

    Never raises for a failed save (`wait` and `check` do): it runs in `finally` blocks,
    where a second error would bury the first. An unreported failure is logged instead.
    """
    try:
      self.wait()
    except CheckpointWriteError as e:
      log.error("%s", e)
    finally:
      self._manager.close()
      if self._quiet:
        self._quiet.remove()

  def _fail(self, error: BaseException) -> None:
    """Cleans up after a failed save, leaves a working manager, raises one clear error."""
    step, needed = self._pending
    self._pending = None
    log.debug("checkpoint of step %d failed", step, exc_info=error)
    with contextlib.suppress(Exception):  # a second report of the error we hold
      self._manager.close()  # joins orbax's threads
    left = self._remove_partial(step)
    _drop_tracebacks(error)  # Their frames hold orbax's abandoned write coroutines, which
    gc.collect()  # end quietly now instead of noisily at exit.
    try:
      self._manager = self._open()  # forgets the failed step, sees the kept ones
    except Exception as e:  # noqa: BLE001 - the write error is the one to report
      log.warning("could not reopen %s after a failed save: %s", self.directory, e)
    kept = max(_finished_steps(self.directory), default=None)
    message = _write_failure_message(self.directory, step, needed, kept, left, error)
    _quiet_abandoned_orbax_tasks(error)
    raise CheckpointWriteError(message, step, kept, error) from None

  def _remove_partial(self, step: int) -> list[str]:
    """Removes the temporary directory of `step`; returns what could not be removed."""
    if not distributed.is_primary() or not os.path.isdir(self.directory):
      return []
    left = []
    for name in os.listdir(self.directory):
      if name.startswith(f"{step}{_TMP_SUFFIX}"):
        path = os.path.join(self.directory, name)
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
          left.append(path)
    return left

  def latest_step(self) -> int | None:
    """The newest saved step, or None before the first save."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every step whose checkpoint is kept, oldest first."""
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The kept step best by the tracked metric (the latest where none is), None before a save."""
    return self._manager.best_step()

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """Restores `step` (default: the newest readable one) into the structure of `abstract_state`.

    Args:
      abstract_state: a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings) that
        says what to restore into.
      step: a specific step; corrupted steps are then an error, not skipped.

    Returns:
      (step, state, data position), or None when there is no checkpoint.

    Raises:
      CheckpointError: when checkpoints exist but none restores into `abstract_state`
        (for example, the config now names another model).
      CheckpointWriteError: when a save still pending fails (restore waits for it first).
    """
    self.wait()
    if step is not None:
      return step, *self._restore(step, abstract_state)
    failed = []
    for candidate in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._restore(candidate, abstract_state)
      except Exception as e:  # Orbax raises many types for unreadable files.
        failed.append((candidate, e))
        continue
      # An older step fits the same target, so the newer ones are damaged, not mismatched.
      for bad_step, error in failed:
        self._quarantine(bad_step, error)
      return candidate, *restored
    if failed:
      step, error = failed[0]
      raise CheckpointError(
        f"no checkpoint in {self.directory} restores into the expected state (newest: step "
        f"{step}, {type(error).__name__}: {str(error)[:300]}). If the model or optimizer changed, "
        "train in a new workdir; nothing was deleted."
      ) from error
    return None

  def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored["state"], restored["data"]

  def _quarantine(self, step: int, error: Exception) -> None:
    distributed.barrier(f"dl.core.checkpoint: done reading step {step}")
    if distributed.is_primary():
      self._move_aside(step, error)
    self._manager.close()
    self._manager = self._open()

  def _move_aside(self, step: int, error: Exception) -> None:
    corrupted = os.path.join(os.path.dirname(self.directory), "corrupted")
    os.makedirs(corrupted, exist_ok=True)
    dest = os.path.join(corrupted, f"{step}-{int(time.time())}")
    log.warning(
      "checkpoint at step %d is unreadable (%s: %s); moved it to %s and trying the previous one.",
      step,
      type(error).__name__,
      str(error)[:200],
      dest,
    )
    shutil.move(os.path.join(self.directory, str(step)), dest)


def _steps_with_unreadable_metadata(directory: str) -> list[tuple[int, Exception]]:
  """Finished steps whose small JSON files do not parse (orbax cannot even list those)."""
  if not os.path.isdir(directory):
    return []
  bad = []
  for name in os.listdir(directory):
    if not name.isdigit():
      continue
    for meta in ("_CHECKPOINT_METADATA", os.path.join("metrics", "metrics")):
      path = os.path.join(directory, name, meta)
      try:
        if os.path.exists(path):
          with open(path) as f:
            json.load(f)
      except (ValueError, OSError) as e:
        bad.append((int(name), e))
        break
  return bad


def _drop_tracebacks(error: BaseException | None) -> None:
  """Frees the frames that `error` and the errors it chains to keep alive."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    error.__traceback__ = None
    if error.__cause__ is not None and error.__context__ is not None:
      _drop_tracebacks(error.__context__)
    error = error.__cause__ or error.__context__


def _nbytes(state: Any) -> int:
  """Bytes of the arrays in `state` (what a checkpoint of it takes on disk, uncompressed)."""
  return sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))


# What the OS said, as an OSError's errno or in the text of tensorstore's errors.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_STRERROR = {
  errno.ENOSPC: "No space left on device",
  errno.EACCES: "Permission denied",
  errno.EROFS: "Read-only file system",
  errno.EDQUOT: "Disk quota exceeded",
  errno.EPERM: "Operation not permitted",
}


def _os_cause(error: BaseException) -> tuple[int | None, str | None]:
  """(errno, path) of the OS error under `error`, or (None, None) when it was not one."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno, error.filename
    text = str(error)
    code = _OS_ERROR_CODE.search(text)
    number = (
      int(code.group(1))
      if code
      else next((n for n, words in _STRERROR.items() if words in text), None)
    )
    if number is not None:
      path = _QUOTED_PATH.search(text)
      return number, path and path.group(1)
    error = error.__cause__ or error.__context__
  return None, None


def _size(num_bytes: float) -> str:
  for unit in ("bytes", "kB", "MB", "GB", "TB"):
    if num_bytes < 1000 or unit == "TB":
      return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1000
  raise AssertionError("unreachable")


def _free_bytes(directory: str) -> int:
  while not os.path.exists(directory):
    directory = os.path.dirname(directory)
  return shutil.disk_usage(directory).free


def _finished_steps(directory: str) -> list[int]:
  """Steps whose checkpoint is complete on disk (orbax renames a step's directory when it is)."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return [int(name) for name in names if name.isdigit()]


def _write_failure_message(
  directory: str, step: int, needed: int, kept: int | None, left: list[str], error: BaseException
) -> str:
  """One paragraph: where, which step, why (the space needed and free, or the path refused),
  what is kept and what to do."""
  number, path = _os_cause(error)
  if number in (errno.ENOSPC, errno.EDQUOT):
    what = "the disk is full" if number == errno.ENOSPC else "the disk quota is exceeded"
    why = (
      f"{what}: it needs about {_size(needed)} (the size of the state) and "
      f"{_size(_free_bytes(directory))} is free there"
    )
    fix = "free some space (or move the workdir to a larger disk)"
  elif number in (errno.EACCES, errno.EPERM, errno.EROFS):
    why = f"{_STRERROR[number].lower()} on {path or directory}"
    fix = f"make {directory} writable (or train in another workdir)"
  else:
    why = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    fix = "fix the cause"
  if left:  # never restored: orbax lists only renamed, complete steps, and removes these
    partial = f"Its half-written files ({', '.join(left)}) go at the next start."
  else:
    partial = "Nothing half-written is left."
  if kept is None:
    then = f"There is no earlier checkpoint: {fix}, then rerun (it starts from step 0)."
  else:
    then = f"The last good checkpoint, step {kept}, is kept: {fix}, then rerun to resume from it."
  return f"could not write the checkpoint of step {step} to {directory}: {why}. {partial} {then}"


@contextlib.contextmanager
def _no_warning_for_steps_without_metrics(metrics: dict | None):
  """Orbax warns at every save without metrics when it tracks a best one; the loop saves
  those between evaluations on purpose (they are kept only as the latest)."""
  logger = logging.getLogger("absl")

  def drop(record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in str(record.msg)

  if metrics is None:
    logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


_REPORTED_OS_ERRORS: set[int] = set()  # errnos of write failures `Checkpointer` has raised


def _quiet_abandoned_orbax_tasks(error: BaseException) -> None:
  """After a reported write failure, asyncio's "... exception was never retrieved" about
  orbax's abandoned write tasks and the futures gathering them (printed whenever they are
  collected, up to exit) says again what `CheckpointWriteError` said: demoted to DEBUG, for
  the rest of the process, when it names orbax's code or the same OS error."""
  number, _ = _os_cause(error)
  if number is not None:
    _REPORTED_OS_ERRORS.add(number)
  logger = logging.getLogger("asyncio")
  if _demote_abandoned_orbax_task not in logger.filters:
    logger.addFilter(_demote_abandoned_orbax_task)


def _demote_abandoned_orbax_task(record: logging.LogRecord) -> bool:
  text = str(record.msg)
  error = record.exc_info[1] if record.exc_info else None
  if (
    record.levelno >= logging.ERROR
    and "exception was never retrieved" in text.split("\n", 1)[0]
    and (
      f"orbax{os.sep}checkpoint" in text  # a task's coroutine, "defined at <its file>"
      or (error is not None and _os_cause(error)[0] in _REPORTED_OS_ERRORS)
    )
  ):
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger("asyncio").isEnabledFor(logging.DEBUG)
  return True


class _QuietOrbaxFailures:
  """Quiets what orbax's threads print about a failed write, which `Checkpointer` raises itself.

  Two kinds of noise: orbax logs each failed thread's traceback at ERROR (turned into
  DEBUG records here, shown only where debug logging is on), and tensorstore's writes that
  finish after the first failed one call back into an event loop that orbax has closed
  ("Event loop is closed", through `sys.unraisablehook`). A Checkpointer installs this at its
  first save and removes it at `close`.
  """

  _MESSAGES = (
    "raised an exception",  # _SignalingThread.run()
    "Failed to run",  # handler commit operations in the background save thread
    "Save Finalize thread",
    "Checkpointer failed",
  )

  def __init__(self):
    self._logger = logging.getLogger("absl")
    self._logger.addFilter(self._demote)
    self._previous_hook = sys.unraisablehook
    self._active = True
    sys.unraisablehook = self._unraisable

  def _demote(self, record: logging.LogRecord) -> bool:
    if (
      self._active
      and record.levelno >= logging.ERROR
      and f"orbax{os.sep}checkpoint" in record.pathname
      and any(m in str(record.msg) for m in self._MESSAGES)
    ):
      record.levelno, record.levelname = logging.DEBUG, "DEBUG"
      return self._logger.isEnabledFor(logging.DEBUG)
    return True

  def _unraisable(self, unraisable) -> None:
    closed_loop = isinstance(unraisable.exc_value, RuntimeError) and (
      str(unraisable.exc_value) == "Event loop is closed"
    )
    if not (self._active and closed_loop):
      self._previous_hook(unraisable)

  def remove(self) -> None:
    self._active = False
    self._logger.removeFilter(self._demote)
    if sys.unraisablehook == self._unraisable:  # else a later one wraps ours: it stays, inert
      sys.unraisablehook = self._previous_hook
