"""Federated learning: FedAvg and FedProx over simulated clients, one vmapped program per round.

Each round samples M clients; each trains S local steps of `dl.train_step` from the global
parameters on batches of its own data, and the server averages the M results weighted by the
clients' data sizes (McMahan et al., 2017). All M local trainings are `jax.vmap`ped over a
client axis, with the S steps fused by `lax.scan`: one compiled call per round.

FedProx (Li et al., 2020) adds mu/2 * ||w - w_global||^2 to each client's loss; here as its
gradient, mu * (w - w_global), by the optax transformation `proximal` in front of the local
optimizer, so the local step is `dl.train_step` unchanged.

Data is split among clients on the host: `iid_split`, or `dirichlet_split` (per class, client
shares drawn from Dirichlet(alpha); small alpha gives clients few classes).
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl import objectives
from dl.training import steps
from dl.training.compile import scan_steps
from dl.data.transforms import model_input_dtype
from dl.training.state import TrainState, create_train_state
from dl.inference import evaluate
from dl.training.task import Task


def iid_split(num_examples: int, num_clients: int, *, seed: int = 0) -> list[np.ndarray]:
  """A random partition of `range(num_examples)` into `num_clients` near-equal index arrays."""
  if not 0 < num_clients <= num_examples:
    raise ValueError(f"num_clients must be in [1, {num_examples}]; got {num_clients}.")
  order = np.random.default_rng(seed).permutation(num_examples)
  return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_split(
  labels_N: np.ndarray, num_clients: int, alpha: float, *, seed: int = 0, min_size: int = 2
) -> list[np.ndarray]:
  """A non-IID partition: each class is divided among clients in Dirichlet(alpha) shares.

  Args:
    labels_N: (N,) integer class of every example of a data set.
    num_clients: number of clients.
    alpha: concentration; large is close to IID, 0.1 gives most clients one or two classes.
    seed: seeds the draws.
    min_size: shares are redrawn until every client holds at least this many examples.

  Returns:
    `num_clients` sorted index arrays into `labels_N` that partition `range(N)`.
  """
  labels_N = np.asarray(labels_N)
  if labels_N.ndim != 1 or alpha <= 0 or num_clients * min_size > len(labels_N):
    raise ValueError(
      f"need labels (N,), alpha > 0 and num_clients * min_size <= N; got labels "
      f"{labels_N.shape}, alpha {alpha}, {num_clients} clients x {min_size}."
    )
  rng = np.random.default_rng(seed)
  for _ in range(1000):
    parts = [[] for _ in range(num_clients)]
    for label in np.unique(labels_N):
      members = rng.permutation(np.flatnonzero(labels_N == label))
      shares = rng.dirichlet(np.full(num_clients, alpha))
      cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
      for part, chunk in zip(parts, np.split(members, cuts)):
        part.extend(chunk)
    if min(len(p) for p in parts) >= min_size:
      return [np.sort(np.array(p, np.int64)) for p in parts]
  raise ValueError(f"no Dirichlet({alpha}) split gave every client {min_size} examples.")


class ProximalState(NamedTuple):
  """The parameters that `proximal` pulls towards: the global ones at the round's start."""

  anchor: Any


def proximal(mu: float) -> optax.GradientTransformation:
  """Adds mu * (params - anchor) to the gradients; `init(params)` stores params as anchor.

  In front of a client's optimizer, initialised from the global parameters each round, this is
  FedProx's proximal term mu/2 * ||w - w_global||^2 added to the local loss.
  """

  def init_fn(params):
    return ProximalState(anchor=params)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("proximal needs params: call tx.update(grads, state, params).")
    updates = jax.tree.map(lambda g, w, a: g + mu * (w - a), updates, params, state.anchor)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def client_batches(
  arrays: Mapping[str, np.ndarray],
  clients: Sequence[np.ndarray],
  sampled_M: np.ndarray,
  local_steps: int,
  batch_size: int,
  rng: np.random.Generator,
) -> dict[str, np.ndarray]:
  """Each sampled client's next `local_steps` batches from its own data, stacked.

  A client walks shuffled passes over its examples (repeating them when it holds fewer than
  `local_steps * batch_size`).

  Returns:
    {key: (M, S, B, ...)} for M sampled clients, S = `local_steps`, B = `batch_size`.
  """
  needed = local_steps * batch_size
  gathered = []
  for client in sampled_M:
    own = clients[client]
    passes = [rng.permutation(own) for _ in range(-(-needed // len(own)))]
    idx = np.concatenate(passes)[:needed].reshape(local_steps, batch_size)
    gathered.append({k: v[idx] for k, v in arrays.items()})
  return {k: np.stack([g[k] for g in gathered]) for k in gathered[0]}


def fedavg_round(
  state: TrainState,
  batches: dict[str, jax.Array],
  weights_M: jax.Array,
  *,
  apply_fn: Any,
  local_tx: optax.GradientTransformation,
  server_tx: optax.GradientTransformation,
  objective: objectives.Objective = objectives.classification,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One round: M clients train locally (vmapped), the server averages them.

  Args:
    state: the global state; `opt_state` belongs to `server_tx`, `step` counts rounds.
    batches: {"input": (M, S, B, ...), "label": (M, S, B)}: S local batches per client.
    weights_M: (M,) each client's share of the average (its data size), summing to 1.
    apply_fn: the model's `apply`.
    local_tx: the clients' optimizer, freshly initialised from the global params each round
      (put `proximal(mu)` in front of it for FedProx).
    server_tx: applied to the pseudo-gradient `params - mean of client params`;
      `optax.sgd(1.0)` is FedAvg (the server takes the mean).
    objective: the clients' per-example loss and metrics (`dl.objectives`).

  Returns:
    The new global state and {"loss", **metrics}: clients' local training metrics, (M,).
  """
  local_step = functools.partial(
    steps.train_step, apply_fn=apply_fn, tx=local_tx, objective=objective
  )

  def train_client(rng, client_batches_S):
    client = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=state.params,
      model_state=state.model_state,
      opt_state=local_tx.init(state.params),
      rng=rng,
    )
    client, metrics_S = scan_steps(local_step)(client, client_batches_S)
    return client.params, client.model_state, jax.tree.map(jnp.mean, metrics_S)

  num_clients = weights_M.shape[0]
  rngs_M = jax.random.split(jax.random.fold_in(state.rng, state.step), num_clients)
  params_M, model_state_M, metrics_M = jax.vmap(train_client)(rngs_M, batches)
  average = functools.partial(jax.tree.map, lambda x_M: jnp.tensordot(weights_M, x_M, axes=1))
  pseudo_grads = jax.tree.map(jnp.subtract, state.params, average(params_M))
  updates, opt_state = server_tx.update(pseudo_grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    model_state=average(model_state_M),
    opt_state=opt_state,
  )
  return new_state, metrics_M


def train_federated(
  task: Task,
  clients: Sequence[np.ndarray],
  *,
  rounds: int,
  clients_per_round: int,
  local_steps: int,
  local_tx: optax.GradientTransformation,
  mu: float = 0.0,
  server_tx: optax.GradientTransformation | None = None,
  seed: int = 0,
  eval_every: int = 1,
) -> tuple[TrainState, list[dict[str, float]]]:
  """FedAvg (or FedProx when `mu` > 0) of `task`'s model over clients holding `task.train`.

  Args:
    task: from `dl.build(config)`: model, preprocessed train/eval arrays, `batch_size`.
    clients: index arrays into `task.train`, e.g. from `dirichlet_split`.
    rounds: communication rounds.
    clients_per_round: M clients sampled (without replacement) each round.
    local_steps: S local steps of batch `task.config.batch_size` per sampled client.
    local_tx: the clients' optimizer, e.g. `optax.sgd(0.05)`.
    mu: FedProx's proximal coefficient (0: FedAvg).
    server_tx: the server's optimizer on the pseudo-gradient (default: FedAvg's mean).
    seed: seeds the init, client sampling, batches and dropout.
    eval_every: evaluate on `task.eval` every this many rounds (and after the last).

  Returns:
    The global state and one record per evaluation: {"round", "loss", "accuracy",
    "client_loss"} (test loss and accuracy; clients' mean local training loss).
  """
  if not 0 < clients_per_round <= len(clients):
    raise ValueError(f"clients_per_round must be in [1, {len(clients)}]; got {clients_per_round}.")
  server_tx = server_tx or optax.sgd(1.0)
  if mu > 0:
    local_tx = optax.chain(proximal(mu), local_tx)
  state = create_train_state(
    task.model,
    server_tx,
    jax.random.PRNGKey(seed),
    task.spec.input_shape,
    model_input_dtype(task.spec.input_dtype),
  )
  round_fn = jax.jit(
    functools.partial(
      fedavg_round,
      apply_fn=task.model.apply,
      local_tx=local_tx,
      server_tx=server_tx,
      objective=task.objective,
    ),
    donate_argnums=0,
  )
  sizes = np.array([len(c) for c in clients], np.float32)
  rng = np.random.default_rng(seed)
  history = []
  for r in range(1, rounds + 1):
    sampled_M = np.sort(rng.choice(len(clients), clients_per_round, replace=False))
    batches = client_batches(
      task.train, clients, sampled_M, local_steps, task.config.batch_size, rng
    )
    state, metrics = round_fn(state, batches, sizes[sampled_M] / sizes[sampled_M].sum())
    if r % eval_every == 0 or r == rounds:
      record = evaluate(
        state, task.model, task.eval, task.config.eval_batch_size, objective=task.objective
      )
      history.append({"round": r, **record, "client_loss": float(np.mean(metrics["loss"]))})
  return state, history
