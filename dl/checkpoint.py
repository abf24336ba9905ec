"""Checkpoints through orbax: atomic saves, the latest K and the best kept, safe resume."""

import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from dl import distributed

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No checkpoint in a directory can be restored into the requested state."""


class Checkpointer:
  """Saves and restores {"state": pytree, "data": JSON} under one directory.

  Orbax writes each step into a temporary directory and renames it when complete,
  so a crash mid-save leaves the previous checkpoints intact. A checkpoint that is
  complete on disk but unreadable (corrupted) is moved aside to `<dir>/../corrupted/`
  and the next older one is restored instead, with a warning.
  """

  def __init__(
    self, directory: str, *, keep: int = 3, best_metric: str | None = None, best_mode: str = "max"
  ):
    self.directory = os.path.abspath(directory)
    self._options = dict(keep=keep, best_metric=best_metric, best_mode=best_mode)
    if distributed.is_primary():  # One process repairs the directory; the others wait.
      for step, error in _steps_with_unreadable_metadata(self.directory):
        self._move_aside(step, error)
    distributed.barrier("dl.checkpoint: damaged steps moved aside")
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
    )
    return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def save(self, step: int, state: Any, data: dict, metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` and the data position `data` at `step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
    self._manager.save(step, args=args, metrics=metrics, force=True)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
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
    """
    self._manager.wait_until_finished()
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
    distributed.barrier(f"dl.checkpoint: done reading step {step}")
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

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


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
