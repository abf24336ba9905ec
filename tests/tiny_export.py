"""Tiny models trained and exported once per test session, shared by the export tests: a
digits CNN from a config, and a two-input Linen model with its own loss from parts."""

import functools
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tiny_config import tiny_config

import dl
from dl.data.transforms import Preprocess
from dl.deploy import export


def cnn_config():
  """A CNN (features 4) that reaches ~90% test accuracy on digits in 300 steps."""
  return tiny_config(
    model={"name": "cnn", "features": 4, "hidden": 16},
    num_steps=300,
    learning_rate=1e-2,
    log_every=100,
    eval_every=300,
  )


@functools.cache
def exported_cnn() -> tuple:
  """(task, state, workdir, export directory) of the trained, exported CNN."""
  root = tempfile.mkdtemp(prefix="dl_export_test_")
  config = cnn_config()
  state, _ = dl.train(config, f"{root}/run")
  task = dl.build(config)
  export.export(task, state, f"{root}/export", batch_sizes=(1, 50), workdir=f"{root}/run")
  return task, state, f"{root}/run", f"{root}/export"


class TwoInputs(nn.Module):
  """A user id (embedded) and item features: one logit per (user, item) pair."""

  num_users: int = 20

  @nn.compact
  def __call__(self, user_B, item_BxF):
    user_BxE = nn.Embed(self.num_users, 8)(user_B)
    item_BxH = nn.relu(nn.Dense(8)(item_BxF))
    return nn.Dense(1)(jnp.concatenate([user_BxE, item_BxH], axis=-1))[:, 0]


def _logistic(logits_B, batch):
  """The model's own loss: logistic loss against 0/1 float labels, and accuracy."""
  labels_B = batch["label"]
  correct_B = ((logits_B > 0) == (labels_B > 0.5)).astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits_B, labels_B), {"accuracy": correct_B}


LOGISTIC = dl.core.objectives.Objective(
  _logistic, metrics=("accuracy",), predictions=jax.nn.sigmoid
)


def two_input_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
  """Raw (user int32 (n,), item float32 (n, 4)) pairs and whether the user liked the item."""
  rng = np.random.default_rng(seed)
  user = rng.integers(0, 20, n).astype(np.int32)
  item = rng.normal(5.0, 3.0, (n, 4)).astype(np.float32)
  bias_U = np.random.default_rng(99).normal(size=20)  # the same users in every split
  liked = bias_U[user] + (item - 5.0) @ np.array([1.0, -1.0, 0.5, 0.0]) > 0
  return {"user": user, "item": item, "label": liked.astype(np.float32)}


@functools.cache
def exported_two_inputs() -> tuple:
  """(task, state, workdir, export directory) of a two-input Linen model with its own loss."""
  root = tempfile.mkdtemp(prefix="dl_export_test_")
  train = two_input_arrays(600, seed=0)
  task = dl.task(
    model=dl.Linen(TwoInputs(), inputs=("user", "item"), train_arg=None),
    objective=LOGISTIC,
    optimizer=optax.adam(1e-2),
    train=train,
    test=two_input_arrays(200, seed=1),
    preprocess={"item": Preprocess.fit(train["item"])},
  )
  state, _ = dl.fit(
    task,
    f"{root}/run",
    num_steps=60,
    batch_size=32,
    log_every=30,
    eval_every=60,
    progress=False,
    tensorboard=False,
  )
  export.export(task, state, f"{root}/export", batch_sizes=(1, 7), workdir=f"{root}/run")
  return task, state, f"{root}/run", f"{root}/export"
