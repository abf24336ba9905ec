"""Training data read record by record: for splits larger than host memory.

`Streaming` wraps any random-access source (`tfds.data_source(name, split=...)` over
array_record files, or anything with `__len__` and `__getitem__`) and serves the batches
`dl.data.sources.InMemory` would serve from the same examples, in the same order:

  order of epoch e   = np.random.default_rng([seed, e]).permutation(N)  (as `ShuffledBatches`)
  global batch i     = order[i * B : (i + 1) * B]    (the incomplete last batch is dropped)
  this process reads = its `shard_index`-th slice of each global batch, and nothing else

A grain pipeline maps global batch ids to batches: read and decode this process's records,
format and preprocess them, augment them (`dl.data.augment`, seeded from (seed, epoch,
example index)), stack. Each batch is a pure function of its id, so the stream's position is
two integers, {"epoch", "index"}, which the training loop keeps in every checkpoint: a run
killed anywhere resumes bit for bit, whatever the number of worker processes (grain's
`mp_prefetch`) or reading threads. Without augmentation the batches are exactly
`InMemory`'s, so switching paths never changes results.

`in_memory_bytes` estimates what the in-memory path would hold for a split, from its TFDS
info alone; `dl.train` streams a split larger than `config.data_memory_budget_mb`.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from dl.data import loading, sources
from dl.data.augment import Augment
from dl.data.batches import next_batches, pad_batch
from dl.data.transforms import Preprocess, as_model_input, preprocessed, to_batch_format

Arrays = dict[str, np.ndarray]
_ENDLESS = 2**62  # global batch ids are never exhausted: epochs follow one another


class Streaming:
  """A training split read from a random-access source in batches, never held whole.

  Args:
    source: records as dicts of arrays, e.g. `dl.data.loading.data_source("mnist64/1m", "train")`.
    input_key: the feature that becomes the model input: records become {"input", "label"}
      as `dl.data.load` + `to_batch_format` make them. None: records are used as they are.
    indices: the records of `source` to train on (e.g. all but a validation hold-out), in
      order; None: all.
    preprocess: {key: `Preprocess`} applied to each batch, as `dl.task` applies it to arrays.
    augment: per-example and batch transforms (`dl.data.augment.Augment`), or None.
    num_workers: grain worker processes that read, decode and augment (0: in this process).
    read_threads: threads that prepare batches ahead in each process.
    prefetch: batches prepared ahead by those threads.
  """

  def __init__(
    self,
    source: Any,
    *,
    input_key: str | None = None,
    indices: Sequence[int] | None = None,
    preprocess: Mapping[str, Preprocess] | None = None,
    augment: Augment | None = None,
    num_workers: int = 0,
    read_threads: int = 1,
    prefetch: int = 2,
  ):
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
      raise TypeError(
        f"a streaming source needs __len__ and __getitem__ (e.g. tfds.data_source(...)); got "
        f"{type(source).__name__}."
      )
    if num_workers < 0 or read_threads < 1 or prefetch < 1:
      raise ValueError(
        "num_workers must be >= 0, read_threads and prefetch >= 1; got "
        f"{num_workers}, {read_threads}, {prefetch}."
      )
    self.source = source
    self.input_key = input_key
    self.indices = None if indices is None else np.asarray(indices, np.int64)
    self.preprocess = dict(preprocess or {})
    self.augment = augment
    self.num_workers, self.read_threads, self.prefetch = num_workers, read_threads, prefetch
    if not len(self):
      raise ValueError("the streaming source has no examples to train on.")

  def __len__(self) -> int:
    return len(self.source) if self.indices is None else len(self.indices)

  def with_options(self, **changes) -> "Streaming":
    """A copy with some constructor arguments changed (e.g. `preprocess`, `augment`)."""
    kwargs = {
      "input_key": self.input_key,
      "indices": self.indices,
      "preprocess": self.preprocess,
      "augment": self.augment,
      "num_workers": self.num_workers,
      "read_threads": self.read_threads,
      "prefetch": self.prefetch,
    }
    return Streaming(self.source, **(kwargs | changes))

  def read(self, ids: np.ndarray) -> Arrays:
    """The examples at positions `ids` (of the training examples), formatted and preprocessed."""
    rows = ids if self.indices is None else self.indices[ids]
    return self._format(read_records(self.source, rows))

  def example(self) -> Arrays:
    """The first example of every key, with a leading axis of 1, as a batch holds it."""
    return self.read(np.zeros(1, np.int64))

  def _format(self, stacked: Mapping[str, np.ndarray | None]) -> Arrays:
    arrays = {k: v for k, v in stacked.items() if v is not None}
    if self.input_key is not None:
      arrays = to_batch_format(arrays, self.input_key)
    return preprocessed(arrays, self.preprocess)

  def batches(
    self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1
  ) -> "StreamBatches":
    """This process's share of endless shuffled batches (the order of `ShuffledBatches`)."""
    return StreamBatches(
      _BatchReader(self, batch_size, seed, shard_index, num_shards),
      num_workers=self.num_workers,
      read_threads=self.read_threads,
      prefetch=self.prefetch,
    )

  def padded_batches(self, batch_size: int):
    """Every example in order, in batches of one shape read through a grain pipeline (the
    last padded; "mask" marks real examples), as `dl.data.batches.padded_batches` gives
    them from arrays: how `dl.evaluate` reads a validation or test split held nowhere whole."""
    n = len(self)

    def read(i):
      return pad_batch(
        self.read(np.arange(i * batch_size, min((i + 1) * batch_size, n))), batch_size
      )

    options = grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch)
    yield from grain.MapDataset.range(math.ceil(n / batch_size)).map(read).to_iter_dataset(options)


def hold_out(data: Streaming, fraction: float) -> tuple[Streaming, Streaming]:
  """(train, validation) streams: `data` less the examples `sources.split_validation` would
  hold out of it as arrays (the same seeded permutation), and those examples, both in order."""
  rows = np.arange(len(data)) if data.indices is None else data.indices
  held_out = sources.held_out_mask(len(rows), fraction)
  return data.with_options(indices=rows[~held_out]), data.with_options(
    indices=rows[held_out], augment=None
  )


def read_all(data: Streaming, group_feature: str = "") -> Arrays:
  """Every example of `data` decoded into memory, formatted as its batches are (with the
  "group" ids of `group_feature` when set) but not preprocessed."""
  rows = np.arange(len(data.source)) if data.indices is None else data.indices
  records = {k: v for k, v in read_records(data.source, rows).items() if v is not None}
  if data.input_key is None:
    return records
  return to_batch_format(records, data.input_key, group_feature)


def read_records(source: Any, rows: np.ndarray) -> dict[str, np.ndarray | None]:
  """Records `rows` of `source`, each feature stacked (None where ragged); one batched read
  where the source offers it (`__getitems__`, as TFDS array_record sources do)."""
  rows = [int(r) for r in rows]
  getitems = getattr(source, "__getitems__", None)
  records = getitems(rows) if getitems else [source[r] for r in rows]
  return loading.stack(records)


class _BatchReader:
  """Global batch id -> this process's batch: a pure function, sent to grain's workers."""

  def __init__(self, data: Streaming, batch_size: int, seed: int, shard_index: int, shards: int):
    n = len(data)
    if batch_size > n:
      raise ValueError(
        f"batch_size {batch_size} is larger than the data ({n} examples); use a batch_size "
        "<= the number of training examples."
      )
    if batch_size % shards:
      raise ValueError(f"batch_size {batch_size} must be divisible by the {shards} processes.")
    local = batch_size // shards
    self.data, self.batch_size, self.seed, self.num_examples = data, batch_size, seed, n
    self.steps_per_epoch = n // batch_size
    self.local = slice(shard_index * local, (shard_index + 1) * local)
    self._orders: dict[int, np.ndarray] = {}

  def order(self, epoch: int) -> np.ndarray:
    """The epoch's permutation, the same as `ShuffledBatches`' (kept for the epoch)."""
    if epoch not in self._orders:
      self._orders = {
        epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      }
    return self._orders[epoch]

  def __call__(self, batch_id: int) -> Arrays:
    epoch, index = divmod(int(batch_id), self.steps_per_epoch)
    start = index * self.batch_size
    ids = self.order(epoch)[start : start + self.batch_size][self.local]
    batch = self.data.read(ids)
    if self.data.augment is not None:
      batch = self.data.augment(batch, ids, seed=self.seed, epoch=epoch, index=index)
    return batch


class StreamBatches:
  """Endless batches from a grain pipeline; the position is {"epoch", "index"} (a `Batches`)."""

  def __init__(self, reader: _BatchReader, *, num_workers: int, read_threads: int, prefetch: int):
    self._reader = reader
    self._options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
    self._workers = num_workers
    self.steps_per_epoch = reader.steps_per_epoch
    self._next_id = 0
    self._iterator = None  # started on the first batch asked for, at the position then

  def get_state(self) -> dict[str, int]:
    """The position: epoch and batch index within it."""
    epoch, index = divmod(self._next_id, self.steps_per_epoch)
    return {"epoch": epoch, "index": index}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a position returned by `get_state` (or by `ShuffledBatches.get_state`)."""
    self._next_id = int(state["epoch"]) * self.steps_per_epoch + int(state["index"])
    self.close()

  def next(self, num_batches: int | None = None) -> Arrays:
    """The next batch, or `num_batches` batches stacked on a new leading axis."""
    return next_batches(self._next_one, num_batches)

  def _next_one(self) -> Arrays:
    if self._iterator is None:
      self._iterator = self._start(self._next_id)
    batch = next(self._iterator)
    self._next_id += 1
    return batch

  def _start(self, first_id: int):
    dataset = grain.MapDataset.range(first_id, first_id + _ENDLESS).map(self._reader)
    stream = dataset.to_iter_dataset(self._options)
    if self._workers:
      if not flags.FLAGS.is_parsed():  # grain's mp_prefetch reads absl flags: their defaults
        flags.FLAGS.mark_as_parsed()
      stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    return iter(stream)

  def close(self) -> None:
    """Stops the pipeline's threads and worker processes (a later batch restarts them)."""
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None


def in_memory_bytes(name: str, split: str, *, data_dir: str | None = None) -> int:
  """What the in-memory path would hold for a split: its model inputs and labels, from the
  data set's TFDS info (shapes x dtypes x examples; nothing is read)."""
  spec = loading.info(name, data_dir=data_dir)
  builder_info = loading.builder_info(name, data_dir=data_dir)
  label = builder_info.features["label"]
  label_elements = math.prod(d or 1 for d in getattr(label, "shape", ()) or ())
  input_elements = math.prod(d or 1 for d in spec.input_shape)
  input_bytes = np.dtype(as_model_input(np.zeros(0, spec.input_dtype)).dtype).itemsize
  per_example = input_elements * input_bytes + label_elements * 4
  return builder_info.splits[split].num_examples * per_example


def fit_preprocess(data: Streaming, normalize: bool = True, *, chunk: int = 4096) -> Preprocess:
  """`Preprocess.fit` of a streamed split's inputs, read in chunks, never held whole.

  Scaling uint8 pixels and casting ids need no statistics: the same `Preprocess` as the
  in-memory path's. Float inputs are standardised with a mean and standard deviation summed
  chunk by chunk in float64 (equal to the in-memory statistics up to float rounding).
  """
  raw = data.with_options(preprocess={}, augment=None)
  first = raw.example()["input"]
  if not normalize or not np.issubdtype(first.dtype, np.floating):
    return Preprocess.fit(first, normalize)
  total = total_sq = 0.0
  for start in range(0, len(raw), chunk):
    x = raw.read(np.arange(start, min(start + chunk, len(raw))))["input"].astype(np.float64)
    total, total_sq = total + x.sum(axis=0), total_sq + np.square(x).sum(axis=0)
  mean = total / len(raw)
  std = np.sqrt(np.maximum(total_sq / len(raw) - np.square(mean), 0.0))
  return Preprocess("standardize", {"mean": mean, "std": np.where(std > 0, std, 1.0)})
