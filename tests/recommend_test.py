"""Recommendation: leave-one-out, negatives, ranking metrics, popularity, models, the builder,
and training on negatives resampled each epoch through dl.fit, resumed exactly."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.metrics

import dl
from dl.apps import recommend
from dl.data.builders import movielens_100k
from dl.models import MatrixFactorization, NeuMF


def test_leave_one_out_holds_out_each_users_latest_interaction():
  users = np.array([0, 1, 0, 2, 1, 0, 2])
  times = np.array([5, 3, 9, 1, 3, 2, 7])
  split = recommend.leave_one_out(users, times)
  # User 0: latest at row 2; user 1: a tie at time 3, the later row (4) wins; user 2: row 6.
  np.testing.assert_array_equal(split["test"], [2, 4, 6])
  np.testing.assert_array_equal(split["train"], [0, 1, 3, 5])


def test_sample_negatives_are_distinct_and_unseen():
  ids = np.array([[0, 0], [0, 1], [1, 2], [1, 3], [1, 4]])
  seen = recommend.interactions(ids, num_users=2, num_items=8)
  negatives = recommend.sample_negatives(np.array([0, 1]), seen, 3, seed=1)
  assert negatives.shape == (2, 3)
  for user, row in zip([0, 1], negatives):
    assert len(set(row)) == 3 and not seen[user, row].any()
  np.testing.assert_array_equal(
    negatives, recommend.sample_negatives(np.array([0, 1]), seen, 3, seed=1)
  )
  with pytest.raises(ValueError, match="need 6 unseen items per user; user 1 has only 5"):
    recommend.sample_negatives(np.array([0, 1]), seen, 6)


def test_training_pairs_add_unseen_negatives():
  ids = np.array([[0, 0], [0, 1], [1, 2]], np.int32)
  seen = recommend.interactions(ids, 2, 6)
  pairs, labels = recommend.training_pairs(ids, seen, 4, np.random.default_rng(0))
  assert pairs.shape == (15, 2) and labels.sum() == 3
  assert seen[pairs[labels == 1, 0], pairs[labels == 1, 1]].all()
  assert not seen[pairs[labels == 0, 0], pairs[labels == 0, 1]].any()


def test_ranking_metrics_on_hand_made_rankings():
  # Column 0 is the held-out item; its 0-based ranks: 0, 2, 1 (a tie counts against it), 4.
  scores = np.array(
    [
      [0.9, 0.1, 0.2, 0.3, 0.0],
      [0.5, 0.6, 0.7, 0.1, 0.2],
      [0.4, 0.4, 0.1, 0.2, 0.3],
      [0, 1, 2, 3, 4],
    ]
  )
  np.testing.assert_array_equal(recommend.target_ranks(scores), [0, 2, 1, 4])
  metrics = recommend.ranking_metrics(scores, k=3)
  assert metrics["hr@3"] == pytest.approx(3 / 4)
  assert metrics["ndcg@3"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(3)) / 4)
  assert recommend.hit_rate(recommend.target_ranks(scores), k=1) == pytest.approx(1 / 4)
  # A constant scorer gets no credit.
  assert recommend.ranking_metrics(np.ones((3, 5)), k=3) == {"hr@3": 0.0, "ndcg@3": 0.0}


def test_ndcg_agrees_with_scikit_learn_without_ties():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(50, 20))
  relevance = np.zeros_like(scores)
  relevance[:, 0] = 1.0
  ours = recommend.ndcg(recommend.target_ranks(scores), k=10)
  assert ours == pytest.approx(sklearn.metrics.ndcg_score(relevance, scores, k=10))
  hr = recommend.hit_rate(recommend.target_ranks(scores), k=10)
  labels = np.zeros(50, int)
  assert hr == pytest.approx(
    sklearn.metrics.top_k_accuracy_score(labels, scores, k=10, labels=range(20))
  )


def test_popularity_counts_interactions_and_ranks_popular_items_first():
  counts = recommend.popularity(np.array([2, 2, 2, 0, 3, 3]), num_items=5)
  np.testing.assert_array_equal(counts, [1, 0, 3, 2, 0])
  candidates = np.array([[2, 0, 1, 3], [1, 2, 3, 4]])
  np.testing.assert_array_equal(recommend.target_ranks(counts[candidates]), [0, 3])


def test_implicit_objective_is_per_example_binary_cross_entropy():
  logits = jnp.array([[2.0], [-1.0], [0.5]])
  loss_B, metrics = recommend.implicit_objective(logits, {"label": jnp.array([1, 0, 0])})
  expected = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log1p(np.exp(0.5))]
  np.testing.assert_allclose(loss_B, expected, rtol=1e-5)
  np.testing.assert_array_equal(metrics["accuracy"], [1.0, 1.0, 0.0])
  assert set(metrics) == {"accuracy"}  # no candidates to rank


def test_implicit_objective_ranks_candidates_as_ranking_metrics_do():
  scores_UxC = np.random.default_rng(0).normal(size=(40, 30)).astype(np.float32)
  scores_UxC[:5, 0] = 10.0  # some held-out items ranked first
  scores_UxC[5, :] = 1.0  # a tie counts against the held-out item
  batch = recommend.ranking_arrays(np.arange(40), np.zeros((40, 30), np.int32))
  loss_B, metrics = recommend.implicit_objective(jnp.asarray(scores_UxC)[..., None], batch)
  expected = recommend.ranking_metrics(scores_UxC, k=10)
  assert float(metrics["hr@10"].mean()) == pytest.approx(expected["hr@10"])
  assert float(metrics["ndcg@10"].mean()) == pytest.approx(expected["ndcg@10"], rel=1e-6)
  assert loss_B.shape == (40,) and float(metrics["hr@10"][5]) == 0.0
  assert recommend.implicit_objective.mode(recommend.implicit_objective.select) == "max"


def test_sampled_negatives_are_redrawn_each_epoch_and_resume_exactly():
  ids = np.array([[0, 0], [0, 1], [1, 2], [1, 3], [2, 4], [2, 0]], np.int32)
  seen = recommend.interactions(ids, 3, 9)
  pairs = recommend.SampledNegatives(ids, seen, num_negatives=3)
  assert len(pairs) == 24
  stream = pairs.batches(8, seed=5)
  assert stream.steps_per_epoch == 3
  epochs = [stream.next(3) for _ in range(2)]
  for epoch in epochs:
    users, items = epoch["input"][..., 0].ravel(), epoch["input"][..., 1].ravel()
    labels = epoch["label"].ravel()
    assert labels.sum() == 6 and not seen[users[labels == 0], items[labels == 0]].any()
  assert not np.array_equal(epochs[0]["input"], epochs[1]["input"])  # redrawn
  again = pairs.batches(8, seed=5)
  again.set_state(json.loads(json.dumps({"epoch": 1, "index": 1})))
  np.testing.assert_array_equal(again.next()["input"], epochs[1]["input"][1])
  other_seed = pairs.batches(8, seed=6).next(3)
  assert not np.array_equal(other_seed["input"], epochs[0]["input"])
  shard = pairs.batches(8, seed=5, shard_index=1, num_shards=2).next()
  np.testing.assert_array_equal(shard["input"], epochs[0]["input"][0, 4:])


def _implicit_task(seed=0):
  rng = np.random.default_rng(seed)
  ids = np.stack([rng.integers(0, 6, 40), rng.integers(0, 30, 40)], 1).astype(np.int32)
  seen = recommend.interactions(ids, 6, 30)
  pairs = recommend.SampledNegatives(ids, seen, num_negatives=2)  # 120 pairs: 3 steps of 32
  candidates = recommend.candidates(ids[:6, 1], recommend.sample_negatives(ids[:6, 0], seen, 9))
  task = dl.task(
    model=MatrixFactorization(num_users=6, num_items=30, dim=4),
    objective=recommend.implicit_objective,
    optimizer=optax.adam(1e-2),
    train=pairs.arrays,
    eval=recommend.ranking_arrays(ids[:6, 0], candidates),
  )
  return dataclasses.replace(task, train=pairs)


def test_fit_on_resampled_negatives_resumes_exactly(tmp_path):
  task = _implicit_task()
  config = dl.FitConfig(batch_size=32, progress=False, tensorboard=False, log_every=1)
  full, history = dl.fit(task, str(tmp_path / "full"), config, num_steps=5)
  assert {"hr@10", "ndcg@10"} <= set(history["eval"][-1]) and task.selection == ("ndcg@10", "max")
  dl.fit(task, str(tmp_path / "resumed"), config, num_steps=2)  # stops inside epoch 0
  resumed, _ = dl.fit(task, str(tmp_path / "resumed"), config, num_steps=5)  # into epoch 1
  assert int(resumed.step) == 5
  chex.assert_trees_all_equal(full.params, resumed.params)
  chex.assert_trees_all_equal(full.opt_state, resumed.opt_state)


def _random_params(model, ids, seed=0):
  """Parameters of `model`'s shapes drawn by numpy (compiling jax.random is slow on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.01, s.shape), s.dtype), shapes)


@pytest.mark.parametrize("cls", [MatrixFactorization, NeuMF])
def test_recommender_shapes(cls):
  model = cls(num_users=5, num_items=7, num_classes=1, dim=4, global_bias=3.0)
  ids = jnp.array([[0, 6], [4, 0], [2, 3]], jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)
  assert jax.eval_shape(model.apply, shapes, ids).shape == (3, 1)
  assert jax.eval_shape(model.apply, shapes, ids.astype(jnp.float32)).dtype == jnp.float32
  with pytest.raises(ValueError, match=r"ids of shape \(B, 2\) or \(B, ..., 2\); got shape \(3,\)"):
    jax.eval_shape(model.apply, shapes, ids[:, 0])
  # Each user's candidates at once: (B, C, 2) ids give (B, C, 1), the same scores as pairs.
  params = _random_params(model, ids)
  candidates_BxCx2 = jnp.stack([ids, ids[::-1]], axis=1)
  apply = jax.jit(model.apply)
  out_BxCx1 = apply(params, candidates_BxCx2)
  assert out_BxCx1.shape == (3, 2, 1)
  np.testing.assert_allclose(out_BxCx1[:, 0], apply(params, ids), rtol=1e-6)


def test_matrix_factorization_is_bias_plus_dot_product():
  model = MatrixFactorization(num_users=3, num_items=4, dim=2, global_bias=3.0)
  ids = jnp.array([[1, 2], [0, 3]])
  params = _random_params(model, ids)["params"]
  p_UxK = params["user_factors"]["embedding"]
  q_IxK = params["item_factors"]["embedding"]
  b_u = params["user_bias"]["embedding"][:, 0]
  b_i = params["item_bias"]["embedding"][:, 0]
  mu = params["global_bias"][0]
  expected = [mu + b_u[u] + b_i[i] + p_UxK[u] @ q_IxK[i] for u, i in [(1, 2), (0, 3)]]
  out = jax.jit(model.apply)({"params": params}, ids)
  np.testing.assert_allclose(out[:, 0], expected, rtol=1e-5)
  # The global bias starts at the value it is given.
  assert jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"]["global_bias"].shape == (
    1,
  )


def test_read_ratings_from_the_recbole_wheel():
  table = movielens_100k.read_ratings()
  assert table["features"].shape == (100_000, 2) and table["features"].dtype == np.int32
  assert table["features"].min() == 0
  np.testing.assert_array_equal(
    table["features"].max(axis=0), [movielens_100k.NUM_USERS - 1, movielens_100k.NUM_ITEMS - 1]
  )
  assert set(np.unique(table["label"])) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_builder_on_a_small_table(monkeypatch, tmp_path):
  rng = np.random.default_rng(0)
  table = {
    "features": rng.integers(0, 5, (20, 2)).astype(np.int32),
    "label": rng.integers(1, 6, 20).astype(np.float32),
    "timestamp": rng.integers(0, 10**9, 20),
  }
  monkeypatch.setattr(movielens_100k, "read_ratings", lambda dataset: table)
  train = dl.data.load("movielens_100k", "train", data_dir=str(tmp_path))
  test = dl.data.load("movielens_100k", "test", data_dir=str(tmp_path))
  assert len(train["label"]) == 16 and len(test["label"]) == 4
  assert train["features"].dtype == np.int32 and train["features"].shape == (16, 2)
  rows = {tuple(r) for r in table["features"].tolist()}
  assert {tuple(r) for r in test["features"].tolist()} <= rows


def test_missing_recbole_names_the_install_command(monkeypatch):
  import importlib.metadata

  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", missing)
  with pytest.raises(dl.data.DataPackageMissingError, match="pip install --no-deps recbole==1.2.1"):
    movielens_100k.read_ratings()
