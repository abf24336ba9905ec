"""Recommendation: leave-one-out splits, negative sampling, top-K metrics, popularity baseline.

Implicit-feedback evaluation as in the NCF paper (He et al. 2017): each user's latest
interaction is held out; it is ranked among `num_negatives` items the user never
interacted with (99 in the paper); HR@K is the share of users whose held-out item is in
the top K, NDCG@K credits it 1 / log2(rank + 2) there (rank 0 = first).

Interactions are (user, item) id pairs, 0-based; `seen_UxI` marks the pairs of a whole
data set as a dense bool matrix (fine for MovieLens-100k's 943 x 1,682).

Training on implicit feedback through `dl.fit`: `SampledNegatives` is the training data
(observed pairs plus unseen items redrawn every epoch, from (seed, epoch) alone, so a resumed
run sees the same negatives), `ranking_arrays` the validation and test data (each user's
held-out item among sampled candidates), and `implicit_objective` the loss and the
HR@10 / NDCG@10 that choose the best checkpoint:

  train = recommend.SampledNegatives(train_ids_Nx2, seen_UxI, num_negatives=4)
  task = dl.task(model=dl.models.NeuMF(...), objective=recommend.implicit_objective,
                 optimizer=optax.adam(1e-3), train=train.arrays,
                 eval=recommend.ranking_arrays(users_U, candidates_UxC))
  task = dataclasses.replace(task, train=train)   # batches from the sampler
  state, history = dl.fit(task, workdir, num_epochs=10, batch_size=1024)
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl.core import objectives

Arrays = dict[str, np.ndarray]
RANK_CUTOFF = 10  # K of the HR@K and NDCG@K that `implicit_objective` reports


def interactions(ids_Nx2: np.ndarray, num_users: int, num_items: int) -> np.ndarray:
  """(num_users, num_items) bool: which user interacted with which item."""
  seen_UxI = np.zeros((num_users, num_items), bool)
  seen_UxI[ids_Nx2[:, 0], ids_Nx2[:, 1]] = True
  return seen_UxI


def leave_one_out(users_N: np.ndarray, timestamps_N: np.ndarray) -> dict[str, np.ndarray]:
  """Holds out each user's latest interaction (the last row among equal timestamps).

  Args:
    users_N: user id of each interaction.
    timestamps_N: when it happened.

  Returns:
    {"train": row indices, "test": one row per user, sorted by user}.
  """
  rows = np.arange(len(users_N))
  order = np.lexsort((rows, timestamps_N, users_N))  # by user, then time, then row
  last = np.r_[users_N[order][1:] != users_N[order][:-1], True]
  test = order[last]
  train = np.setdiff1d(rows, test)
  return {"train": train, "test": test}


def sample_negatives(
  users_U: np.ndarray, seen_UxI: np.ndarray, num_negatives: int, *, seed: int = 0
) -> np.ndarray:
  """(U, num_negatives) distinct items each user never interacted with, drawn uniformly.

  Raises:
    ValueError: a user has fewer unseen items than `num_negatives`.
  """
  rng = np.random.default_rng(seed)
  unseen_counts = (~seen_UxI[users_U]).sum(axis=1)
  if len(users_U) and unseen_counts.min() < num_negatives:
    raise ValueError(
      f"need {num_negatives} unseen items per user; user {users_U[np.argmin(unseen_counts)]} "
      f"has only {unseen_counts.min()}."
    )
  return np.stack(
    [rng.choice(np.flatnonzero(~seen_UxI[u]), num_negatives, replace=False) for u in users_U]
  ).astype(np.int32)


def training_pairs(
  ids_Nx2: np.ndarray, seen_UxI: np.ndarray, num_negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Positives plus `num_negatives` random unseen items per positive (one epoch, shuffled).

  Negatives are drawn uniformly and redrawn while they hit a seen item.

  Returns:
    ids (N * (1 + num_negatives), 2) int32 and labels (same length,) int32, 1 = positive.
  """
  users = np.repeat(ids_Nx2[:, 0], num_negatives)
  items = rng.integers(0, seen_UxI.shape[1], len(users))
  while (bad := seen_UxI[users, items]).any():
    items[bad] = rng.integers(0, seen_UxI.shape[1], bad.sum())
  ids = np.concatenate([ids_Nx2, np.stack([users, items], axis=1)]).astype(np.int32)
  labels = np.r_[np.ones(len(ids_Nx2), np.int32), np.zeros(len(users), np.int32)]
  order = rng.permutation(len(ids))
  return ids[order], labels[order]


def candidates(test_items_U: np.ndarray, negatives_UxM: np.ndarray) -> np.ndarray:
  """(U, 1 + M) items to rank per user: the held-out item in column 0, then the negatives."""
  return np.concatenate([test_items_U[:, None], negatives_UxM], axis=1).astype(np.int32)


def target_ranks(scores_UxC: np.ndarray) -> np.ndarray:
  """0-based rank of column 0 among each row's candidates; ties count against it.

  A tie is ranked pessimistically (the held-out item goes after every equal score), so a
  constant scorer gets no credit.
  """
  scores_UxC = np.asarray(scores_UxC)
  return np.sum(scores_UxC[:, 1:] >= scores_UxC[:, :1], axis=1)


def hit_rate(ranks_U: np.ndarray, k: int = 10) -> float:
  """HR@k: the share of users whose held-out item ranks in the top k."""
  return float(np.mean(np.asarray(ranks_U) < k))


def ndcg(ranks_U: np.ndarray, k: int = 10) -> float:
  """NDCG@k with one relevant item: mean of 1 / log2(rank + 2) over users, 0 beyond the top k."""
  ranks_U = np.asarray(ranks_U)
  return float(np.mean(np.where(ranks_U < k, 1.0 / np.log2(ranks_U + 2.0), 0.0)))


def ranking_metrics(scores_UxC: np.ndarray, k: int = 10) -> dict[str, float]:
  """{"hr@k", "ndcg@k"} of candidate scores whose column 0 is the held-out item."""
  ranks_U = target_ranks(scores_UxC)
  return {f"hr@{k}": hit_rate(ranks_U, k), f"ndcg@{k}": ndcg(ranks_U, k)}


def popularity(items_N: np.ndarray, num_items: int) -> np.ndarray:
  """(num_items,) interaction counts: the most-popular baseline's score of every item."""
  return np.bincount(items_N, minlength=num_items).astype(np.float32)


def ranking_arrays(users_U: np.ndarray, candidates_UxC: np.ndarray) -> Arrays:
  """Evaluation data for `implicit_objective`: one example per user, its candidates to rank.

  Args:
    users_U: user ids.
    candidates_UxC: items to rank per user, the held-out item in column 0 (`candidates`).

  Returns:
    {"input": (U, C, 2) int32 (user, item) ids, "label": (U, C) int32, 1 in column 0}.
  """
  users_UxC = np.broadcast_to(np.asarray(users_U)[:, None], candidates_UxC.shape)
  labels_UxC = np.zeros(candidates_UxC.shape, np.int32)
  labels_UxC[:, 0] = 1
  ids_UxCx2 = np.stack([users_UxC, candidates_UxC], axis=-1).astype(np.int32)
  return {"input": ids_UxCx2, "label": labels_UxC}


class SampledNegatives:
  """Implicit-feedback training data: observed pairs and unseen items drawn anew each epoch.

  A training-data part for `dl.fit` (as a `dl.Task`'s `train`): `batches` streams epochs of
  `training_pairs`, each drawn from (seed, epoch) alone, so the stream's position (epoch,
  batch index) is all a checkpoint needs to resume it exactly.

  Attributes:
    positives: (N, 2) int32 observed (user, item) pairs.
    seen: (num_users, num_items) bool, pairs never drawn as negatives.
    num_negatives: unseen items drawn per observed pair each epoch.
    arrays: {"input": the positives, "label": ones}: the example shapes and dtypes of a batch.
  """

  def __init__(self, positives_Nx2: np.ndarray, seen_UxI: np.ndarray, num_negatives: int):
    self.positives = np.asarray(positives_Nx2, np.int32)
    if self.positives.ndim != 2 or self.positives.shape[1] != 2 or not len(self.positives):
      raise ValueError(
        f"positives must be (N, 2) (user, item) ids with N >= 1; got shape {self.positives.shape}."
      )
    if num_negatives < 0:
      raise ValueError(f"num_negatives must be >= 0; got {num_negatives}.")
    self.seen = np.asarray(seen_UxI, bool)
    self.num_negatives = num_negatives
    self.arrays = {"input": self.positives, "label": np.ones(len(self.positives), np.int32)}

  def __len__(self) -> int:
    """Training examples per epoch: each positive and its negatives."""
    return len(self.positives) * (1 + self.num_negatives)

  def example(self) -> Arrays:
    """One (positive) pair: the shapes and dtypes of a batch."""
    return {k: v[:1] for k, v in self.arrays.items()}

  def epoch(self, seed: int, epoch: int) -> Arrays:
    """The shuffled pairs of one epoch: {"input": (len, 2) int32, "label": (len,) int32}."""
    rng = np.random.default_rng([seed, epoch])
    ids, labels = training_pairs(self.positives, self.seen, self.num_negatives, rng)
    return {"input": ids, "label": labels}

  def batches(
    self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1
  ) -> "EpochBatches":
    """This process's share of endless batches, epoch after epoch (see `EpochBatches`)."""
    return EpochBatches(
      self.epoch, len(self), batch_size, seed, shard_index=shard_index, num_shards=num_shards
    )


class EpochBatches:
  """Batches of epochs drawn by `make_epoch(seed, epoch)`, with a checkpointable position.

  Each epoch's incomplete last batch is dropped. With `num_shards` > 1 every process draws
  the same epoch and takes its `shard_index`-th slice of each global batch.
  """

  def __init__(
    self,
    make_epoch,
    epoch_size: int,
    batch_size: int,
    seed: int,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
  ):
    if not 0 < batch_size <= epoch_size:
      raise ValueError(
        f"batch_size must be in [1, {epoch_size}] (the examples of an epoch); got {batch_size}."
      )
    if batch_size % num_shards:
      raise ValueError(f"batch_size {batch_size} must be divisible by the {num_shards} processes.")
    self._make_epoch, self._seed = make_epoch, seed
    self.batch_size = batch_size
    self.steps_per_epoch = epoch_size // batch_size
    local = batch_size // num_shards
    self._local = slice(shard_index * local, (shard_index + 1) * local)
    self.set_state({"epoch": 0, "index": 0})

  def get_state(self) -> dict[str, int]:
    """The position: epoch and batch index within it."""
    return {"epoch": self._epoch, "index": self._index}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a position returned by `get_state` (redrawing that epoch)."""
    self._epoch, self._index = int(state["epoch"]), int(state["index"])
    self._arrays = self._make_epoch(self._seed, self._epoch)

  def next(self, num_batches: int | None = None) -> Arrays:
    """The next batch, or `num_batches` batches stacked on a new leading axis."""
    if num_batches is None:
      return self._next_one()
    batches = [self._next_one() for _ in range(num_batches)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

  def _next_one(self) -> Arrays:
    if self._index == self.steps_per_epoch:
      self.set_state({"epoch": self._epoch + 1, "index": 0})
    start = self._index * self.batch_size
    self._index += 1
    return {k: v[start : start + self.batch_size][self._local] for k, v in self._arrays.items()}


def _implicit(
  logits: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy of "the user interacted" logits, and ranking metrics of candidates."""
  labels = batch["label"].astype(jnp.float32)
  if logits.size != labels.size:
    raise ValueError(
      f"implicit_objective needs one logit per (user, item) pair, {labels.shape} (+ (1,)); "
      f"the model gave {logits.shape}."
    )
  logits = logits.reshape(labels.shape)
  per_pair = optax.sigmoid_binary_cross_entropy(logits, labels)
  correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
  b = labels.shape[0]
  loss_B = per_pair.reshape(b, -1).mean(axis=1)
  metrics = {"accuracy": correct.reshape(b, -1).mean(axis=1)}
  if labels.ndim == 2:
    metrics |= _ranking(logits, labels, RANK_CUTOFF)
  return loss_B, metrics


def _ranking(scores_BxC: jax.Array, labels_BxC: jax.Array, k: int) -> dict[str, jax.Array]:
  """HR@k and NDCG@k per row with one positive; ties count against it (as `target_ranks`)."""
  positive_B = jnp.sum(jnp.where(labels_BxC > 0.5, scores_BxC, 0.0), axis=1)
  beaten_BxC = (scores_BxC >= positive_B[:, None]) & (labels_BxC < 0.5)
  ranks_B = jnp.sum(beaten_BxC, axis=1).astype(jnp.float32)
  hit_B = (ranks_B < k).astype(jnp.float32)
  return {f"hr@{k}": hit_B, f"ndcg@{k}": hit_B / jnp.log2(ranks_B + 2.0)}


# The objective of implicit feedback: `(logits, batch) -> (loss_B, metrics)`.
#   Training pairs: logits (B, 1) or (B,), batch["label"] (B,) 1 for an observed pair, 0 for
#   a sampled negative; loss_B is the binary cross-entropy, metrics {"accuracy"}.
#   Ranking (`ranking_arrays`): logits (B, C, 1) of each user's C candidates, batch["label"]
#   (B, C) with one 1; loss_B averages the C pairs, and metrics add "hr@10" and "ndcg@10"
#   (ties against the positive), whose means over users are HR@10 and NDCG@10. NDCG@10
#   chooses the best checkpoint.
implicit_objective = objectives.Objective(
  _implicit,
  metrics=("accuracy", f"hr@{RANK_CUTOFF}", f"ndcg@{RANK_CUTOFF}"),
  select=f"ndcg@{RANK_CUTOFF}",
)
