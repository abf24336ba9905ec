"""Checkpoints through orbax: atomic saves in the background, the latest K and the best kept,
safe resume, and one clear error when a checkpoint cannot be written."""

import contextlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from dl.core import distributed, orbax_quiet, write_failure

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
  are kept. While a save may still fail it also quiets the tracebacks that orbax's
  writer threads print about such a failure, since that error is raised here instead
  (see `dl.core.orbax_quiet`); the process's loggers and hooks are left as they were.
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
    self._quiet = orbax_quiet.QuietOrbaxFailures()  # installed while a save may still fail
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
    self._quiet.install()
    self._pending = (step, _nbytes(state) + len(json.dumps(data, default=str)))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
    try:
      with _no_warning_for_steps_without_metrics(metrics):  # orbax has no switch for it
        self._manager.save(step, args=args, metrics=metrics, force=True)
    except Exception as e:  # Orbax raises ValueError, OSError, ... for a failed write.
      self._fail(e)
    if not self._options["async_saves"]:
      self._succeeded()

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
    self._succeeded()

  def _succeeded(self) -> None:
    """Forgets the save just finished; quiets orbax no longer, unless a failure may still echo."""
    self._pending = None
    if not self._quiet.after_failure:
      self._quiet.remove()

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
      self._quiet.remove()

  def _fail(self, error: BaseException) -> None:
    """Cleans up after a failed save, leaves a working manager, raises one clear error."""
    step, needed = self._pending
    self._pending = None
    log.debug("checkpoint of step %d failed", step, exc_info=error)
    with contextlib.suppress(Exception):  # a second report of the error we hold
      self._manager.close()  # joins orbax's threads
    left = self._remove_partial(step)
    self._quiet.failed(error)
    try:
      self._manager = self._open()  # forgets the failed step, sees the kept ones
    except Exception as e:  # noqa: BLE001 - the write error is the one to report
      log.warning("could not reopen %s after a failed save: %s", self.directory, e)
    kept = max(_finished_steps(self.directory), default=None)
    message = write_failure.describe(self.directory, step, needed, kept, left, error)
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


def _nbytes(state: Any) -> int:
  """Bytes of the arrays in `state` (what a checkpoint of it takes on disk, uncompressed)."""
  return sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))


def _finished_steps(directory: str) -> list[int]:
  """Steps whose checkpoint is complete on disk (orbax renames a step's directory when it is)."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return [int(name) for name in names if name.isdigit()]


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
