"""The loop's batches, prepared one dispatch ahead: host work overlaps the running step.

While the device runs step N, a background thread draws batch N+1 from the data (a gather
from host arrays, or a grain pipeline) and puts it where the compiled step expects it
(`Placement.put_batch`: one device, pmap's device axis, or a global array over the mesh of
every process). `get_state` describes the batches the loop has taken, never those prepared
ahead, so a checkpoint resumes exactly where the loop stood.
"""

import concurrent.futures
import copy
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from dl.core.parallel import path_name


class Feed:
  """`take(k)` gives the next k batches laid out for the step, prefetching the next call's.

  Args:
    batches: the training stream (`dl.training.protocols.Batches`).
    put: `(numpy batch, fused=...) -> laid-out batch` (`Placement.put_batch`).
  """

  def __init__(self, batches: Any, put: Callable[..., Any]):
    self.batches = batches
    self.steps_per_epoch = batches.steps_per_epoch
    self._put = put
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dl-feed")
    self._ahead: tuple[int, concurrent.futures.Future] | None = None
    self._state = copy.deepcopy(batches.get_state())
    self.nonfinite: list[dict[str, int]] = []  # of the batches last taken, one per step

  def _prepare(self, k: int) -> tuple[Any, Any, list[dict[str, int]]]:
    """k batches (k > 1: stacked for fused steps) laid out, the position after them, and
    their non-finite input counts (`nonfinite_counts`)."""
    batch = self.batches.next() if k == 1 else self.batches.next(k)
    counts = nonfinite_counts(batch, k)
    # A copy: the stream moves on while the loop still holds this position.
    return self._put(batch, fused=k > 1), copy.deepcopy(self.batches.get_state()), counts

  def take(self, k: int, *, then: int | None = None) -> Any:
    """The next `k` batches for the step (one batch when k == 1, else stacked on a leading
    axis); starts preparing the `then` batches of the next call in the background."""
    if self._ahead is not None and self._ahead[0] == k:
      batch, self._state, self.nonfinite = self._ahead[1].result()
    else:
      self._drop_ahead()
      batch, self._state, self.nonfinite = self._prepare(k)
    self._ahead = None
    if then:
      self._ahead = (then, self._executor.submit(self._prepare, then))
    return batch

  def _drop_ahead(self) -> None:
    """Waits for a prefetch that will not be used and rewinds the stream before it."""
    if self._ahead is not None:
      self._ahead[1].exception()  # waits; its failure does not matter, it is discarded
      self._ahead = None
      self.batches.set_state(self._state)

  def get_state(self) -> Any:
    """The position after the batches taken so far."""
    return self._state

  def set_state(self, state: Any) -> None:
    self._drop_ahead()
    self.batches.set_state(state)
    self._state = copy.deepcopy(self.batches.get_state())

  def close(self) -> None:
    """Waits for the batch being prepared, then stops the thread and the stream's workers."""
    self._executor.shutdown(wait=True, cancel_futures=True)
    self._ahead = None
    close = getattr(self.batches, "close", None)
    if close is not None:
      close()


def nonfinite_counts(batch: Any, k: int) -> list[dict[str, int]]:
  """For each of the `k` steps of `batch` (stacked on a leading axis when k > 1), {key:
  non-finite values} of its floating arrays ({} when all are finite): so that a NaN loss can
  say whether its batch was at fault."""
  counts = [{} for _ in range(k)]
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    x = np.asarray(leaf)
    if not np.issubdtype(x.dtype, np.inexact):
      continue
    per_step = np.count_nonzero(~np.isfinite(x.reshape(k, -1) if k > 1 else x.reshape(1, -1)), 1)
    for i in np.flatnonzero(per_step):
      counts[i][path_name(path)] = int(per_step[i])
  return counts
