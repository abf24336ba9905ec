"""Poisson subsampling: the batches DP-SGD's accounting assumes.

At every logical step each training example is included independently with probability q
(`sampling_rate`), so the number drawn is Binomial(N, q). The compiled step needs one shape,
so a batch is padded to `max_batch_size` and its "mask" marks the real examples (the DP step
gives padded ones exactly zero gradient). When more than `max_batch_size` are drawn, a
uniformly random subset of `max_batch_size` of them is kept: the truncated Poisson sampling
that `dp_accounting.TruncatedSubsampledGaussianDpEvent` accounts for (arXiv:2508.15089), so
the reported epsilon covers it. `max_batch_size` is chosen so that this rarely happens
(`max_batch_size`, `overflow_probability`).

Draws are a pure function of (seed, step): the position saved in a checkpoint is one integer,
and a resumed run sees the same batches.
"""

import math
from collections.abc import Mapping

import numpy as np

from dl.data.batches import next_batches
from dl.data.sources import Arrays, check_arrays

_STREAM = 0x5D9  # Keeps these draws apart from the shuffled batches' (seed, epoch) streams.


def overflow_probability(num_examples: int, sampling_rate: float, max_batch_size: int) -> float:
  """P(Binomial(num_examples, sampling_rate) > max_batch_size): one step's chance to truncate."""
  from scipy import stats  # Here: scipy.stats adds ~0.5 s to `import dl`.

  return float(stats.binom.sf(max_batch_size, num_examples, sampling_rate))


def max_batch_size(
  num_examples: int,
  sampling_rate: float,
  steps: int,
  *,
  run_overflow: float = 0.01,
  multiple: int = 8,
) -> int:
  """The smallest padded batch, a multiple of `multiple`, that any of `steps` Poisson draws
  exceeds with probability at most `run_overflow` (union bound over the steps)."""
  if not 0 < sampling_rate <= 1:
    raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate}.")
  from scipy import stats

  per_step = run_overflow / max(steps, 1)
  size = int(stats.binom.isf(per_step, num_examples, sampling_rate))
  while size < num_examples and overflow_probability(num_examples, sampling_rate, size) > per_step:
    size += 1
  return min(
    math.ceil(max(size, 1) / multiple) * multiple, math.ceil(num_examples / multiple) * multiple
  )


class PoissonBatches:
  """Endless Poisson-sampled batches of one padded shape, with a checkpointable position.

  With `accum_steps` k > 1, one logical batch is drawn (rate q) and handed out as k
  micro-batches of `max_batch_size / k` rows. With `num_shards` > 1 (one per process), every
  process draws the same batch and returns its `shard_index`-th slice of each micro-batch.

  Attributes:
    steps_per_epoch: micro-steps in which N examples are expected to be drawn (for the loop's
      "once per epoch" events).
  """

  def __init__(
    self,
    arrays: Mapping[str, np.ndarray],
    *,
    sampling_rate: float,
    max_batch_size: int,
    seed: int,
    accum_steps: int = 1,
    shard_index: int = 0,
    num_shards: int = 1,
  ):
    self._arrays = check_arrays(arrays, "training data")
    if "mask" in self._arrays:
      raise ValueError("Poisson-sampled batches add their own 'mask'; the data has one already.")
    self._n = len(next(iter(self._arrays.values())))
    if not 0 < sampling_rate <= 1:
      raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate}.")
    if max_batch_size % (accum_steps * num_shards):
      raise ValueError(
        f"max_batch_size ({max_batch_size}) must be divisible by accum_steps ({accum_steps}) "
        f"times the {num_shards} processes."
      )
    self.sampling_rate, self.max_batch_size, self.accum_steps = (
      sampling_rate,
      max_batch_size,
      accum_steps,
    )
    self._seed, self._shard, self._num_shards = seed, shard_index, num_shards
    self.steps_per_epoch = max(1, round(accum_steps / sampling_rate))
    self._micro_step = 0
    self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

  def draw(self, logical_step: int) -> np.ndarray:
    """The indices of the examples in logical batch `logical_step` (truncated if need be)."""
    rng = np.random.default_rng([_STREAM, self._seed, logical_step])
    chosen = np.flatnonzero(rng.random(self._n) < self.sampling_rate)
    if len(chosen) > self.max_batch_size:
      chosen = np.sort(rng.choice(chosen, self.max_batch_size, replace=False))
    return chosen

  def get_state(self) -> dict[str, int]:
    """The position: micro-steps handed out so far."""
    return {"step": self._micro_step}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to the position `get_state` returned."""
    self._micro_step = int(state["step"])

  def next(self, num_batches: int | None = None) -> dict[str, np.ndarray]:
    """The next micro-batch, or `num_batches` of them stacked on a new leading axis."""
    return next_batches(self._next_one, num_batches)

  def _next_one(self) -> dict[str, np.ndarray]:
    logical, part = divmod(self._micro_step, self.accum_steps)
    if self._cached is None or self._cached[0] != logical:
      chosen = self.draw(logical)
      index = np.zeros(self.max_batch_size, np.int64)
      index[: len(chosen)] = chosen
      self._cached = (logical, index, np.arange(self.max_batch_size) < len(chosen))
    _, index, real = self._cached
    micro = self.max_batch_size // self.accum_steps
    local = micro // self._num_shards
    start = part * micro + self._shard * local
    rows = slice(start, start + local)
    self._micro_step += 1
    batch = {k: v[index[rows]] for k, v in self._arrays.items()}
    batch["mask"] = real[rows].astype(np.float32)
    return batch


class PoissonData:
  """Training data for DP-SGD, sampled as its accountant assumes (a `dl.task` data part).

  `dl.fit(..., batch_size=B)` sets the sampling rate q = B * accum_steps / N: B is the
  expected micro-batch size, the DP step's denominator (`expected_batch_size=B`).

  Args:
    arrays: the training examples, {key: (N, ...)}.
    max_batch_size: rows of a padded logical batch (see `max_batch_size`).
    accum_steps: micro-batches per logical batch (the optimizer's `optax.MultiSteps`).
  """

  def __init__(
    self, arrays: Mapping[str, np.ndarray], *, max_batch_size: int, accum_steps: int = 1
  ):
    self.arrays: Arrays = check_arrays(arrays, "training data")
    self.max_batch_size, self.accum_steps = max_batch_size, accum_steps

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def example(self) -> Arrays:
    """One example of every array, (1, ...): the shapes and dtypes a model is initialised with."""
    return {k: v[:1] for k, v in self.arrays.items()}

  def sampling_rate(self, batch_size: int) -> float:
    """q for an expected micro-batch of `batch_size`."""
    rate = batch_size * self.accum_steps / len(self)
    if not 0 < rate <= 1:
      raise ValueError(
        f"batch_size ({batch_size}) x accum_steps ({self.accum_steps}) must be at most the "
        f"{len(self)} training examples for Poisson sampling."
      )
    return rate

  def batches(
    self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1
  ) -> PoissonBatches:
    """Poisson-sampled micro-batches of expected size `batch_size`; shard `shard_index`'s rows."""
    return PoissonBatches(
      self.arrays,
      sampling_rate=self.sampling_rate(batch_size),
      max_batch_size=self.max_batch_size,
      seed=seed,
      accum_steps=self.accum_steps,
      shard_index=shard_index,
      num_shards=num_shards,
    )
