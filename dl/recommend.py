"""Recommendation: leave-one-out splits, negative sampling, top-K metrics, popularity baseline.

Implicit-feedback evaluation as in the NCF paper (He et al. 2017): each user's latest
interaction is held out; it is ranked among `num_negatives` items the user never
interacted with (99 in the paper); HR@K is the share of users whose held-out item is in
the top K, NDCG@K credits it 1 / log2(rank + 2) there (rank 0 = first).

Interactions are (user, item) id pairs, 0-based; `seen_UxI` marks the pairs of a whole
data set as a dense bool matrix (fine for MovieLens-100k's 943 x 1,682).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


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


def implicit_objective(
  logits_Bx1: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy of "the user interacted" logits: a `dl` objective for implicit data.

  Args:
    logits_Bx1: one logit per (user, item) pair, (B, 1) or (B,).
    batch: "label" (B,) 1 for an observed pair, 0 for a sampled negative.

  Returns:
    loss_B and {"accuracy": (B,)} (the logit's sign against the label).
  """
  logits_B = logits_Bx1.reshape(logits_Bx1.shape[0])
  labels_B = batch["label"].astype(jnp.float32)
  loss_B = optax.sigmoid_binary_cross_entropy(logits_B, labels_B)
  return loss_B, {"accuracy": ((logits_B > 0) == (labels_B > 0.5)).astype(jnp.float32)}
