"""Batches from arrays held in memory, with a checkpointable position.

Small data sets are decoded once (see `dl.data.load`) and then batched here: no
per-record Python in the training loop.
"""

from collections.abc import Iterator, Mapping

import numpy as np

from dl.data.augment import Augment


class ShuffledBatches:
  """Endless shuffled batches over epochs; drops each epoch's incomplete last batch.

  The order is a pure function of (seed, epoch), so `get_state`/`set_state`
  (two integers) restore the exact position after a restart. With `num_shards` > 1
  (one shard per process), every process walks the same global order and returns only
  its `shard_index`-th slice of each global batch. `augment` (`dl.data.augment.Augment`)
  transforms each batch as a pure function of (seed, epoch, example index).
  """

  def __init__(
    self,
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    augment: Augment | None = None,
  ):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"all arrays must have the same length; got {sizes}")
    self._arrays = dict(arrays)
    self._num_examples = next(iter(sizes.values()))
    if batch_size > self._num_examples:
      raise ValueError(
        f"batch_size {batch_size} is larger than the data ({self._num_examples} "
        "examples); use a batch_size <= the number of training examples."
      )
    self.batch_size = batch_size
    self.steps_per_epoch = self._num_examples // batch_size
    self._seed = seed
    self._augment = augment
    if batch_size % num_shards:
      raise ValueError(f"batch_size {batch_size} must be divisible by the {num_shards} processes.")
    local = batch_size // num_shards
    self._local = slice(shard_index * local, (shard_index + 1) * local)
    self._epoch, self._index = 0, 0
    self._order = self._permutation(0)

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._seed, epoch]).permutation(self._num_examples)

  def get_state(self) -> dict[str, int]:
    """The position: epoch and batch index within it."""
    return {"epoch": self._epoch, "index": self._index}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a position returned by `get_state`."""
    self._epoch, self._index = int(state["epoch"]), int(state["index"])
    self._order = self._permutation(self._epoch)

  def next(self, num_batches: int | None = None) -> dict[str, np.ndarray]:
    """The next batch, or `num_batches` batches stacked on a new leading axis."""
    return next_batches(self._next_one, num_batches)

  def _next_one(self) -> dict[str, np.ndarray]:
    if self._index == self.steps_per_epoch:
      self.set_state({"epoch": self._epoch + 1, "index": 0})
    start = self._index * self.batch_size
    idx = self._order[start : start + self.batch_size][self._local]
    batch = {k: v[idx] for k, v in self._arrays.items()}
    if self._augment is not None:
      batch = self._augment(batch, idx, seed=self._seed, epoch=self._epoch, index=self._index)
    self._index += 1
    return batch

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    while True:
      yield self._next_one()


def next_batches(next_one, num_batches: int | None) -> dict[str, np.ndarray]:
  """`next_one()`, or `num_batches` of its batches stacked on a new leading axis."""
  if num_batches is None:
    return next_one()
  batches = [next_one() for _ in range(num_batches)]
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def padded_batches(
  arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """All examples in order, in batches of one shape; the last is padded, "mask" marks real ones."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    yield pad_batch({k: v[start : start + batch_size] for k, v in arrays.items()}, batch_size)


def pad_batch(arrays: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """`arrays` (at most `batch_size` examples) padded with zeros to `batch_size`; "mask" is 1
  for the real examples."""
  real = len(next(iter(arrays.values())))
  batch = {k: _pad(v, batch_size) for k, v in arrays.items()}
  batch["mask"] = (np.arange(batch_size) < real).astype(np.float32)
  return batch


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return (
    np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)]) if len(x) < size else x
  )


class MemberBatches:
  """One stream per ensemble member (`ShuffledBatches`, `StreamBatches`), stacked on a member
  axis after any steps axis.

  `next()` gives (members, B, ...); `next(k)` gives (k, members, B, ...), the layout a
  `lax.scan` over steps of a `jax.vmap` over members expects.
  """

  def __init__(self, members: list[ShuffledBatches]):
    self._members = members
    self.steps_per_epoch = members[0].steps_per_epoch

  def next(self, num_batches: int | None = None) -> dict[str, np.ndarray]:
    """The next batch of every member, stacked (axis 1 when `num_batches` is given)."""
    batches = [m.next(num_batches) for m in self._members]
    axis = 0 if num_batches is None else 1
    return {k: np.stack([b[k] for b in batches], axis=axis) for k in batches[0]}

  def get_state(self) -> dict[str, list[dict[str, int]]]:
    return {"members": [m.get_state() for m in self._members]}

  def set_state(self, state) -> None:
    for member, member_state in zip(self._members, state["members"], strict=True):
      member.set_state(member_state)

  def close(self) -> None:
    """Stops what the members' streams run in the background (worker processes, threads)."""
    for member in self._members:
      getattr(member, "close", lambda: None)()
