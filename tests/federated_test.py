"""Federated learning: splits, client rounds, FedAvg as a weighted mean, FedProx, `dl.fit` of
rounds (learning, compile modes, exact resume after a kill).

Run as a script (`python tests/federated_test.py WORKDIR`), it trains the tiny federated run
that the resume test kills.
"""

import functools
import json
import os
import sys

import chex
import jax
import kill
import numpy as np
import optax
import pytest
from tiny_config import tiny_config

import dl
from dl import models
from dl.trust import federated

MODEL = models.MLP(num_classes=3, width=8, depth=1)
RESUME_ROUNDS = 150


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


def _rounds(arrays, clients, **kwargs):
  return federated.ClientRounds(
    arrays, clients, clients_per_round=2, local_steps=3, batch_size=4, seed=7, **kwargs
  )


def test_client_rounds_weigh_clients_and_resume_and_shard_exactly():
  arrays = {"input": np.arange(60, dtype=np.float32)[:, None], "label": np.arange(60)}
  clients = [np.arange(0, 10), np.arange(10, 40), np.arange(40, 50), np.arange(50, 60)]
  stream = _rounds(arrays, clients)
  first = [stream.next() for _ in range(3)]
  assert first[0]["label"].shape == (2, 3, 4) and first[0]["client_weight"].shape == (2,)
  for batch in first:
    owners = np.searchsorted([10, 40, 50], batch["label"], side="right")  # (M, S, B)
    assert all(len(np.unique(owners[m])) == 1 for m in range(2))  # each from its own data
    sizes = np.array([len(clients[owners[m, 0, 0]]) for m in range(2)])
    np.testing.assert_allclose(batch["client_weight"], sizes / sizes.sum(), rtol=1e-6)
  assert stream.next(2)["label"].shape == (2, 2, 3, 4)  # two rounds stacked
  assert stream.get_state() == {"round": 5}
  resumed = _rounds(arrays, clients)
  resumed.set_state({"round": 5})
  chex.assert_trees_all_equal(stream.next(), resumed.next())
  resumed.set_state({"round": 1})
  chex.assert_trees_all_equal(resumed.next(), first[1])
  halves = [_rounds(arrays, clients, shard_index=i, num_shards=2).next() for i in range(2)]
  for key in first[0]:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), first[0][key])


def _batch(num_clients, local_steps, batch_size, weights, seed=0):
  rng = np.random.default_rng(seed)
  shape = (num_clients, local_steps, batch_size)
  return {
    "input": rng.normal(size=(*shape, 4)).astype(np.float32),
    "label": rng.integers(0, 3, shape).astype(np.int32),
    "client_weight": np.asarray(weights, np.float32),
  }


def test_fedavg_round_is_the_weighted_mean_of_separately_trained_clients():
  local_tx, server_tx = optax.sgd(0.1, momentum=0.9), optax.sgd(1.0)
  state = dl.create_train_state(MODEL, server_tx, jax.random.PRNGKey(0), (4,))
  batch = _batch(3, 5, 8, [0.5, 0.3, 0.2])
  round_fn = jax.jit(
    functools.partial(federated.fedavg_round, model=MODEL, local_tx=local_tx, server_tx=server_tx)
  )
  new_state, metrics = round_fn(state, batch)
  assert metrics["loss"].shape == () and int(new_state.step) == 1
  # Each client alone: dl.train_step from the global params, fresh optimizer, 5 steps.
  step = jax.jit(functools.partial(dl.train_step, model=MODEL, tx=local_tx))
  finals, losses = [], []
  for m in range(3):
    client = state.replace(opt_state=local_tx.init(state.params))
    for s in range(5):
      client, client_metrics = step(client, {k: batch[k][m, s] for k in ("input", "label")})
      losses.append(client_metrics["loss"])
    finals.append(client.params)
  expected = jax.tree.map(lambda *p: sum(w * x for w, x in zip(batch["client_weight"], p)), *finals)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)
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
  batch = _batch(1, 20, 8, [1.0])

  def drift(mu):
    local_tx = optax.chain(federated.proximal(mu), optax.sgd(0.3))
    new, _ = federated.fedavg_round(
      state, batch, model=MODEL, local_tx=local_tx, server_tx=server_tx
    )
    diffs = jax.tree.map(lambda a, b: np.sum((a - b) ** 2), new.params, state.params)
    return np.sqrt(sum(jax.tree.leaves(diffs)))

  assert drift(1.0) < 0.8 * drift(0.0)


@functools.cache
def _task():
  return dl.build(tiny_config(batch_size=16))


def _federated(num_clients=8, **kwargs):
  task = _task()
  clients = federated.dirichlet_split(task.train.arrays["label"], num_clients, 0.5, seed=0)
  kwargs = {"clients_per_round": 4, "local_steps": 10, "mu": 0.01} | kwargs
  return federated.federate(task, clients, local_tx=optax.sgd(0.05, momentum=0.9), **kwargs)


def test_federate_names_what_does_not_fit():
  task, one_step = _task(), {"local_steps": 1, "local_tx": optax.sgd(0.1)}
  with pytest.raises(ValueError, match=r"clients_per_round must be in \[1, 2\]; got 3"):
    federated.federate(task, [np.arange(5), np.arange(5, 9)], clients_per_round=3, **one_step)
  with pytest.raises(ValueError, match=r"index arrays into the 1293 training examples.*at \[1\]"):
    federated.federate(task, [np.arange(5), np.array([5, 5000])], clients_per_round=1, **one_step)


def test_fit_learns_digits_from_non_iid_clients_and_scores_the_test_once(tmp_path):
  fl = _federated()
  state, history = dl.fit(
    fl,
    str(tmp_path),
    num_steps=8,
    batch_size=16,
    eval_every=3,
    log_every=4,
    steps_per_dispatch=2,
    progress=False,
    tensorboard=False,
  )
  assert fl.name == "fedprox/mlp/digits" and int(state.step) == 8
  assert [r["step"] for r in history["eval"]] == [3, 6, 8]
  assert [r["step"] for r in history["train"]] == [3, 4, 6, 8]
  assert history["eval"][-1]["accuracy"] > 0.6  # chance: 0.1
  assert history["eval"][-1]["loss"] < history["eval"][0]["loss"]
  assert history["train"][-1]["loss"] < history["train"][0]["loss"]  # clients' mean local loss
  assert len(history["test"]) == 1 and history["test"][0]["accuracy"] > 0.6


def test_clients_split_over_devices_train_as_on_one(tmp_path):
  fl = _federated(num_clients=16, clients_per_round=8, local_steps=2)
  run = functools.partial(dl.fit, fl, num_steps=2, batch_size=8, progress=False, tensorboard=False)
  one, _ = run(str(tmp_path / "jit"))
  for parallel in ("data", "pmap"):  # 8 clients over 8 devices: a mesh, then pmap's psum
    split, _ = run(str(tmp_path / parallel), parallel=parallel)
    chex.assert_trees_all_close(one.params, split.params, rtol=1e-5, atol=1e-6)


def _resume_federated():
  return _federated(clients_per_round=2, local_steps=2)


def _resume_run(workdir):
  """The run the resume test kills: tiny rounds, a checkpoint every 5."""
  return dl.fit(
    _resume_federated(),
    workdir,
    num_steps=RESUME_ROUNDS,
    batch_size=8,
    eval_every=50,
    checkpoint_every=5,
    log_every=5,
    progress=False,
    tensorboard=False,
  )


def test_exact_resume_after_process_kill(tmp_path):
  """SIGKILL after a checkpoint, resume, and end bit-identical to an uninterrupted run."""
  script = [sys.executable, os.path.abspath(__file__), str(tmp_path / "killed")]
  resume = functools.partial(_resume_run, str(tmp_path / "killed"))  # the script's own call
  assert kill.kill_then_rerun(script, tmp_path / "killed", 10, resume=resume) < RESUME_ROUNDS
  records = map(json.loads, (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines())
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps.count(5) == 1  # resumed at a checkpoint >= 10, not started over
  full, _ = _resume_run(str(tmp_path / "full"))
  resumed = dl.training.loop.restore(_resume_federated(), str(tmp_path / "killed"))
  assert int(resumed.step) == RESUME_ROUNDS
  chex.assert_trees_all_equal(jax.device_get(full), resumed)


if __name__ == "__main__":
  _resume_run(sys.argv[1])
