"""Checks at the door: a split's arrays are numbers, finite and in range before a step runs.

A string column, a NaN feature or a label past the model's outputs would otherwise train
until the loss turns NaN, tens of steps later, or stop deep inside JAX naming neither the
array nor the fix. `check_split` looks at every array of a split once (vectorised: a few
passes over memory, timed in `benchmarks/door_checks.py`); `dl.task` calls it on each split
held in memory, and `CheckedBatches` on each batch of a stream as it is read.

  classes: {key: number of outputs}: integer class ids that index the model's last output
    axis (an objective says which key, e.g. `dl.core.objectives.classification`'s "label").
  ids:     {key: vocabulary size}: integer inputs that index an embedding table.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

Arrays = Mapping[str, np.ndarray]


def check_split(arrays: Arrays, what: str, *, first_row: int = 0, **limits) -> None:
  """Raises unless every array of `arrays` is numeric, finite, and within its range.

  Args:
    arrays: {key: (N, ...) array}, one split or one batch.
    what: the split as the error names it, e.g. "training data".
    first_row: the row number of `arrays`' first example (a batch's offset), for messages.
    **limits: `classes` and `ids`, as `check_ranges` takes them.

  Raises:
    TypeError: an array holds strings, objects or other values that are not numbers.
    ValueError: a floating array holds NaN or infinity, or ids lie out of their range.
  """
  check_values(arrays, what, first_row=first_row)
  check_ranges(arrays, what, first_row=first_row, **limits)


def check_values(arrays: Arrays, what: str, *, first_row: int = 0) -> None:
  """The dtype and finiteness checks of `check_split` (before preprocessing, which would
  fail on strings less clearly)."""
  for key, values in arrays.items():
    if values.dtype == bool or np.issubdtype(values.dtype, np.number):
      continue
    raise TypeError(
      f"{what}[{key!r}] holds values of dtype {values.dtype} ({_kind(values.dtype)}); dl "
      "trains on arrays of numbers. Encode text as token ids (dl.data.text.ByteTokenizer or "
      "SentencePieceTokenizer, then dl.data.text.encode_padded), categories as integer ids "
      "(e.g. np.unique(column, return_inverse=True)[1]), or drop the column."
    )
  for key, values in arrays.items():
    if np.issubdtype(values.dtype, np.inexact) and values.size:
      bad_N = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
      if bad_N.any():
        rows = np.flatnonzero(bad_N)
        count = int(np.count_nonzero(~np.isfinite(values[rows])))
        raise ValueError(
          f"{what}[{key!r}] holds {count} non-finite value(s) (NaN or inf) in {len(rows)} "
          f"example(s), the first at row {first_row + rows[0]}; training on them makes the "
          "loss NaN. Drop or impute those rows before dl.task (e.g. np.nan_to_num, or a "
          "column mean)."
        )


def check_ranges(
  arrays: Arrays,
  what: str,
  *,
  classes: Mapping[str, int] | None = None,
  ids: Mapping[str, int] | None = None,
  first_row: int = 0,
) -> None:
  """Raises a ValueError unless class ids and embedding ids lie within their sizes.

  Args:
    arrays: {key: (N, ...) array}, one split or one batch.
    what: the split as the error names it.
    classes: {key: outputs}: the key's integer values must lie in [0, outputs).
    ids: {key: size}: the key's integer values must lie in [0, size).
    first_row: the row number of `arrays`' first example, for messages.
  """
  for role, limits in (("class ids", classes or {}), ("ids", ids or {})):
    for key, size in limits.items():
      if key in arrays:
        _check_range(arrays[key], f"{what}[{key!r}]", role, int(size), first_row)


def _check_range(values: np.ndarray, name: str, role: str, size: int, first_row: int) -> None:
  if not np.issubdtype(values.dtype, np.integer) or not values.size:
    return  # float targets, soft labels: the objective checks their dtype
  low, high = values.min(), values.max()
  if 0 <= low and high < size:
    return
  bad_N = ((values < 0) | (values >= size)).reshape(len(values), -1).any(axis=1)
  row = int(np.flatnonzero(bad_N)[0])
  value = values[row].flat[np.flatnonzero((values[row] < 0) | (values[row] >= size))[0]]
  if role == "class ids":
    fix = (
      f"the model has {size} outputs, so labels must lie in [0, {size}): give the model "
      f"{high + 1} outputs (e.g. num_classes={high + 1}) or re-encode the labels as 0..{size - 1}"
    )
  else:
    fix = (
      f"the model's embedding holds {size} ids, so they must lie in [0, {size}): enlarge it "
      f"(e.g. vocab_size={high + 1}) or map unknown ids to a reserved one"
    )
  raise ValueError(
    f"{name} holds {role} from {low} to {high}; the first out of range is {value} at row "
    f"{first_row + row}. {fix[0].upper()}{fix[1:]}."
  )


def _kind(dtype: np.dtype) -> str:
  return {"U": "strings", "S": "bytes", "O": "Python objects", "M": "dates", "m": "durations"}.get(
    dtype.kind, "not numbers"
  )


class CheckedBatches:
  """A stream of batches (`dl.training.protocols.Batches`) whose every batch is checked as it is
  read (`check_split`), for data that is never held whole (streams, a user's own part)."""

  def __init__(self, batches: Any, what: str, **limits):
    self._batches, self._what, self._limits = batches, what, limits
    self.steps_per_epoch = batches.steps_per_epoch
    self._taken = 0

  def next(self, num_batches: int | None = None) -> dict[str, np.ndarray]:
    """The next batch (or `num_batches` stacked), checked."""
    batch = self._batches.next(num_batches)
    first = self._taken
    self._taken += num_batches or 1
    where = f"{self._what} (batch {first}" + (f" to {self._taken - 1})" if num_batches else ")")
    arrays = batch
    if num_batches:  # (k, B, ...) stacked batches: checked as k * B rows
      arrays = {k: np.reshape(v, (-1, *v.shape[2:])) for k, v in batch.items()}
    check_split(arrays, where, **self._limits)
    return batch

  def get_state(self) -> Any:
    """The wrapped stream's position."""
    return self._batches.get_state()

  def set_state(self, state: Any) -> None:
    """Moves the wrapped stream to `state`."""
    self._batches.set_state(state)

  def close(self) -> None:
    """Closes the wrapped stream (its threads and worker processes), if it can be closed."""
    close = getattr(self._batches, "close", None)
    if close is not None:
      close()


class CheckedSplit:
  """An evaluation split read in batches (a `dl.data.streaming.Streaming`), each batch
  checked as it is read; what `dl.evaluate` takes in place of arrays."""

  def __init__(self, split: Any, what: str, **limits):
    self.split, self._what, self._limits = split, what, limits

  def __len__(self) -> int:
    """The split's number of examples."""
    return len(self.split)

  def padded_batches(self, batch_size: int):
    """The split's examples in order, in padded batches with a "mask" (`padded_batches`)."""
    for i, batch in enumerate(self.split.padded_batches(batch_size)):
      real = {k: v[batch["mask"] > 0] for k, v in batch.items() if k != "mask"}
      check_split(real, self._what, first_row=i * batch_size, **self._limits)
      yield batch
