"""Federated learning: splits, client batches, FedAvg as a weighted mean, FedProx, end to end."""

import functools

import chex
import jax
import numpy as np
import optax
import pytest
from tiny_config import tiny_config

import dl
from dl import federated, models

MODEL = models.MLP(num_classes=3, width=8, depth=1)


def _labels(n=600, classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, classes, n)


def _assert_partition(clients, n):
  everything = np.concatenate(clients)
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))


def _classes_per_client(clients, labels, share=0.05):
  """Mean number of classes that make up more than `share` of a client's data."""
  counts = [np.bincount(labels[c], minlength=10) / len(c) for c in clients]
  return np.mean([np.sum(c > share) for c in counts])


def test_iid_split_is_a_balanced_partition():
  clients = federated.iid_split(103, 10, seed=1)
  _assert_partition(clients, 103)
  assert {len(c) for c in clients} == {10, 11}
  with pytest.raises(ValueError, match=r"num_clients must be in \[1, 5\]; got 6"):
    federated.iid_split(5, 6)


def test_dirichlet_split_partitions_and_skews_with_small_alpha():
  labels = _labels()
  skewed = federated.dirichlet_split(labels, 20, 0.1, seed=0, min_size=5)
  mild = federated.dirichlet_split(labels, 20, 100.0, seed=0, min_size=5)
  for clients in (skewed, mild):
    _assert_partition(clients, len(labels))
    assert min(len(c) for c in clients) >= 5
  assert _classes_per_client(skewed, labels) < 4.0 < 9.0 < _classes_per_client(mild, labels)
  # Any labelled data set: two classes (breast_cancer-like).
  _assert_partition(federated.dirichlet_split(_labels(100, classes=2), 4, 0.5), 100)


def test_client_batches_come_from_each_clients_own_data():
  arrays = {"input": np.arange(50, dtype=np.float32)[:, None], "label": np.arange(50)}
  clients = [np.arange(0, 3), np.arange(3, 30), np.arange(30, 50)]
  batches = federated.client_batches(
    arrays, clients, np.array([0, 2]), 4, 5, np.random.default_rng(0)
  )
  assert batches["input"].shape == (2, 4, 5, 1) and batches["label"].shape == (2, 4, 5)
  assert set(batches["label"][0].ravel()) == {0, 1, 2}  # 3 examples, repeated over 20 slots
  assert set(batches["label"][1].ravel()) <= set(range(30, 50))
  assert len(set(batches["label"][1].ravel())) == 20  # one full pass, no repeats


def _batches(num_clients, local_steps, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  shape = (num_clients, local_steps, batch_size)
  return {
    "input": rng.normal(size=(*shape, 4)).astype(np.float32),
    "label": rng.integers(0, 3, shape).astype(np.int32),
  }


def test_fedavg_round_is_the_weighted_mean_of_separately_trained_clients():
  local_tx, server_tx = optax.sgd(0.1, momentum=0.9), optax.sgd(1.0)
  state = dl.create_train_state(MODEL, server_tx, jax.random.PRNGKey(0), (4,))
  batches, weights = _batches(3, 5, 8), np.array([0.5, 0.3, 0.2], np.float32)
  round_fn = jax.jit(
    functools.partial(
      federated.fedavg_round, apply_fn=MODEL.apply, local_tx=local_tx, server_tx=server_tx
    )
  )
  new_state, metrics = round_fn(state, batches, weights)
  assert metrics["loss"].shape == (3,) and int(new_state.step) == 1
  # Each client alone: dl.train_step from the global params, fresh optimizer, 5 steps.
  step = jax.jit(functools.partial(dl.train_step, apply_fn=MODEL.apply, tx=local_tx))
  finals = []
  for m in range(3):
    client = state.replace(opt_state=local_tx.init(state.params))
    for s in range(5):
      client, _ = step(client, jax.tree.map(lambda x, m=m, s=s: x[m, s], batches))
    finals.append(client.params)
  expected = jax.tree.map(lambda *p: sum(w * x for w, x in zip(weights, p)), *finals)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(finals[0]["Dense_0"]["bias"], finals[1]["Dense_0"]["bias"])


def test_proximal_adds_mu_times_the_distance_to_the_anchor():
  anchor = {"w": np.array([1.0, -2.0], np.float32)}
  params = {"w": np.array([3.0, 0.0], np.float32)}
  tx = federated.proximal(0.5)
  updates, _ = tx.update({"w": np.ones(2, np.float32)}, tx.init(anchor), params)
  np.testing.assert_allclose(updates["w"], [2.0, 2.0])


def test_fedprox_keeps_clients_closer_to_the_global_model():
  server_tx = optax.sgd(1.0)
  state = dl.create_train_state(MODEL, server_tx, jax.random.PRNGKey(0), (4,))
  batches, weights = _batches(1, 20, 8), np.ones(1, np.float32)

  def drift(mu):
    local_tx = optax.chain(federated.proximal(mu), optax.sgd(0.3))
    new, _ = federated.fedavg_round(
      state, batches, weights, apply_fn=MODEL.apply, local_tx=local_tx, server_tx=server_tx
    )
    diffs = jax.tree.map(lambda a, b: np.sum((a - b) ** 2), new.params, state.params)
    return np.sqrt(sum(jax.tree.leaves(diffs)))

  assert drift(1.0) < 0.8 * drift(0.0)


def test_fedavg_learns_digits_from_non_iid_clients():
  task = dl.build(tiny_config(batch_size=16))
  clients = federated.dirichlet_split(task.train["label"], 8, 0.5, seed=0)
  state, history = federated.train_federated(
    task,
    clients,
    rounds=8,
    clients_per_round=4,
    local_steps=10,
    local_tx=optax.sgd(0.05, momentum=0.9),
    mu=0.01,
    eval_every=3,
  )
  assert [r["round"] for r in history] == [3, 6, 8]
  assert int(state.step) == 8
  assert history[-1]["accuracy"] > 0.6  # chance: 0.1
  assert history[-1]["loss"] < history[0]["loss"]
