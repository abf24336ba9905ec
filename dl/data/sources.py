"""Training data as a part of a run: arrays in memory, or anything that becomes them.

The training loop asks its data for `batches(batch_size, seed=..., shard_index=...,
num_shards=...)`: a stream with `next(k)`, `get_state()` and `set_state()` whose position
goes into every checkpoint. A data part (`TrainData`) also says its size (`len`) and shows
one example (`example()`, for initialising the model). `InMemory` serves arrays held in host
memory; a user's own part (e.g. `dl.apps.recommend.SampledNegatives`) can stand in its place.

`as_arrays` accepts what a user has at hand: a dict of numpy arrays, a TFDS name and split
(`("digits", "train")`), or a random-access data source (`tfds.data_source(...)`, any object
with `__len__` and `__getitem__` returning dicts of arrays), decoded once.
"""

from collections.abc import Mapping
from typing import Any, Protocol

import grain
import numpy as np

from dl.data import loading
from dl.data.augment import Augment
from dl.data.batches import ShuffledBatches
from dl.data.transforms import to_batch_format

Arrays = dict[str, np.ndarray]
VALIDATION_SEED = 0


class TrainData(Protocol):
  """What `dl.task(train=...)` keeps as it is, and `dl.fit` draws batches from."""

  def __len__(self) -> int: ...

  def example(self) -> Arrays:
    """One example of every key, with a leading axis of 1 (shapes and dtypes of a batch)."""

  def batches(self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1):
    """This process's share of endless batches for the member seeded with `seed`."""


def is_train_data(data: Any) -> bool:
  """Whether `data` is a data part (`TrainData`): it has `len`, `example` and `batches`."""
  return all(callable(getattr(data, name, None)) for name in ("__len__", "example", "batches"))


class InMemory:
  """A split held as numpy arrays; batches are shuffled anew each epoch from (seed, epoch).

  `augment` transforms each batch as a pure function of (seed, epoch, example index)
  (`dl.data.augment`), exactly as the streaming path (`dl.data.streaming.Streaming`) does.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], augment: Augment | None = None):
    self.arrays = check_arrays(arrays, "training data")
    self.augment = augment

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def example(self) -> Arrays:
    """The first example of every key, with a leading axis of 1."""
    return {k: v[:1] for k, v in self.arrays.items()}

  def batches(
    self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1
  ) -> ShuffledBatches:
    """This process's share of endless shuffled batches (see `ShuffledBatches`)."""
    return ShuffledBatches(
      self.arrays,
      batch_size,
      seed,
      shard_index=shard_index,
      num_shards=num_shards,
      augment=self.augment,
    )


def check_arrays(arrays: Any, what: str) -> Arrays:
  """`arrays` as a dict of numpy arrays of one length; a ValueError says what is wrong."""
  if not isinstance(arrays, Mapping) or not arrays:
    raise ValueError(f"{what} must be a non-empty dict of arrays; got {type(arrays).__name__}.")
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
  if None in sizes.values() or len(set(sizes.values())) != 1:
    raise ValueError(
      f"{what}: every array needs the same leading (example) axis; got lengths {sizes}."
    )
  if not next(iter(sizes.values())):
    raise ValueError(f"{what} has no examples (arrays of shapes {_shapes(arrays)}).")
  return arrays


def _shapes(arrays: Arrays) -> dict[str, tuple[int, ...]]:
  return {k: v.shape for k, v in arrays.items()}


def as_arrays(
  data: Any, what: str, *, data_dir: str | None = None, group_feature: str = ""
) -> Arrays:
  """`data` (arrays, a (TFDS name, split) pair or a data source) as a dict of arrays.

  A TFDS name gives {"input", "label"} in the batch format (`to_batch_format`), and "group"
  (the ids of `group_feature`) when that is set; a data source gives every feature of its
  records that stacks into one array.
  """
  if isinstance(data, Mapping):
    return check_arrays(data, what)
  if isinstance(data, InMemory):
    return data.arrays
  if isinstance(data, tuple) and len(data) == 2 and all(isinstance(x, str) for x in data):
    name, split = data
    spec = loading.info(name, data_dir=data_dir)
    arrays = loading.load(name, split, data_dir=data_dir)
    return to_batch_format(arrays, spec.input_key, group_feature)
  if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
    if not len(data):
      raise ValueError(f"{what}: the data source is empty.")
    stacked = grain.MapDataset.source(data).batch(len(data), batch_fn=loading.stack)[0]
    return check_arrays({k: v for k, v in stacked.items() if v is not None}, what)
  raise ValueError(
    f"{what} must be a dict of numpy arrays, a (TFDS name, split) pair such as "
    f"('digits', 'train'), or a data source with __len__ and __getitem__; got "
    f"{type(data).__name__}."
  )


def split_validation(arrays: Arrays, fraction: float) -> tuple[Arrays, Arrays]:
  """(train, validation): `fraction` of the examples, chosen by a fixed seeded permutation.

  The permutation uses seed `VALIDATION_SEED` whatever the run's seed, so every run, seed and
  ensemble member on the same data holds out the same examples; both parts keep the
  original order.
  """
  held_out = held_out_mask(len(next(iter(arrays.values()))), fraction)
  return (
    {k: v[~held_out] for k, v in arrays.items()},
    {k: v[held_out] for k, v in arrays.items()},
  )


def held_out_mask(n: int, fraction: float) -> np.ndarray:
  """(n,) bool: the examples `split_validation` holds out of `n` for validation."""
  num_validation = round(n * fraction)
  if not 0 < num_validation < n:
    raise ValueError(
      f"validation_fraction {fraction} of {n} examples leaves {num_validation} for validation "
      f"and {n - num_validation} for training; both need at least one."
    )
  held_out = np.zeros(n, bool)
  held_out[np.random.default_rng(VALIDATION_SEED).permutation(n)[:num_validation]] = True
  return held_out
