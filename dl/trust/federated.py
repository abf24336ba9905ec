"""Federated learning: FedAvg and FedProx over simulated clients, as a part of the one loop.

  clients = federated.dirichlet_split(task.train.arrays["label"], 20, alpha=0.1)
  fl = federated.federate(task, clients, clients_per_round=10, local_steps=10,
                          local_tx=optax.sgd(0.05, momentum=0.9), mu=0.1)
  state, history = dl.fit(fl, workdir, num_steps=100, batch_size=32, eval_every=10)

One step of `dl.fit` is one communication round (`fedavg_round`): M sampled clients each
train S local steps of `dl.train_step` from the global parameters on batches of their own
data, and the server averages the M results weighted by the clients' data sizes (McMahan et
al., 2017). All M local trainings are `jax.vmap`ped over a client axis, with the S steps
fused by `lax.scan`: one compiled call per round. The state is the global `TrainState` (the
server optimizer's state, `step` counting rounds), so the loop checkpoints it, resumes it
exactly (the round's client sample and batches are a function of (seed, round)), logs the
clients' mean training metrics per round and evaluates the global model on the task's
validation and test data. Under `parallel="data"` the client axis is split over the mesh;
under `parallel="pmap"` over the local devices.

FedProx (Li et al., 2020) adds mu/2 * ||w - w_global||^2 to each client's loss; here as its
gradient, mu * (w - w_global), by the optax transformation `proximal` in front of the local
optimizer, so the local step is `dl.train_step` unchanged.

Data is split among clients on the host: `iid_split`, or `dirichlet_split` (per class, client
shares drawn from Dirichlet(alpha); small alpha gives clients few classes).
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl import inference
from dl.core import objectives
from dl.models.adapters import Model
from dl.training import steps
from dl.training.compile import scan_steps
from dl.training.state import TrainState, create_train_state
from dl.training.task import Task

WEIGHT_KEY = "client_weight"  # the (M,) weights in a round's batch, beside the clients' data
Metrics = dict[str, Any]


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
  batch: Mapping[str, jax.Array],
  *,
  model: Model,
  local_tx: optax.GradientTransformation,
  server_tx: optax.GradientTransformation,
  objective: objectives.Objective = objectives.classification,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One round: M clients train locally (vmapped), the server averages them.

  Args:
    state: the global state; `opt_state` belongs to `server_tx`, `step` counts rounds.
    batch: the clients' data, {key: (M, S, B, ...)} (S local batches of B per client), and
      `WEIGHT_KEY`: (M,) each client's share of the average (its data size), summing to 1
      over all clients of the round.
    model: the model (`dl.Linen`, `dl.NNX`).
    local_tx: the clients' optimizer, freshly initialised from the global params each round
      (put `proximal(mu)` in front of it for FedProx).
    server_tx: applied to the pseudo-gradient `params - weighted mean of client params`;
      `optax.sgd(1.0)` is FedAvg (the server takes the mean).
    objective: the clients' per-example loss and metrics (`dl.core.objectives`).
    axis_name: under `jax.pmap`, the device axis the clients are split over: the average
      is summed over it. None under `jax.jit` (also on a mesh, where shardings decide).

  Returns:
    The new global state and {"loss", **metrics}: the clients' local training metrics,
    averaged over the S local steps and the M clients (scalars).
  """
  weights_M = batch[WEIGHT_KEY]
  data = {k: v for k, v in batch.items() if k != WEIGHT_KEY}
  local_step = functools.partial(steps.train_step, model=model, tx=local_tx, objective=objective)

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

  rngs_M = _client_rngs(jax.random.fold_in(state.rng, state.step), weights_M.shape[0], axis_name)
  params_M, model_state_M, metrics_M = jax.vmap(train_client)(rngs_M, data)
  average = functools.partial(jax.tree.map, lambda x_M: jnp.tensordot(weights_M, x_M, axes=1))
  mean_params, mean_model_state = average(params_M), average(model_state_M)
  metrics = jax.tree.map(jnp.mean, metrics_M)
  if axis_name is not None:
    mean_params, mean_model_state = jax.lax.psum((mean_params, mean_model_state), axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
  pseudo_grads = jax.tree.map(jnp.subtract, state.params, mean_params)
  updates, opt_state = server_tx.update(pseudo_grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    model_state=mean_model_state,
    opt_state=opt_state,
  )
  return new_state, metrics


def _client_rngs(key: jax.Array, num_local: int, axis_name: str | None) -> jax.Array:
  """One key per client of the round, the same whichever devices the clients are split over."""
  if axis_name is None:
    return jax.random.split(key, num_local)
  every = jax.random.split(key, num_local * jax.lax.axis_size(axis_name))
  return jax.lax.dynamic_slice_in_dim(every, jax.lax.axis_index(axis_name) * num_local, num_local)


class ClientRounds:
  """The batches of successive rounds: sampled clients, their local batches and weights.

  Round r draws from `np.random.default_rng([seed, r])`: M clients without replacement
  (sorted), then each one's S batches of B from its own data (`client_batches`). The
  position is the round alone, so `get_state`/`set_state` resume exactly. With
  `num_shards` > 1 (one per process), every process draws the same round and keeps its
  `shard_index`-th slice of the M clients (weights still normalised over all M).
  """

  def __init__(
    self,
    arrays: Mapping[str, np.ndarray],
    clients: Sequence[np.ndarray],
    *,
    clients_per_round: int,
    local_steps: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    num_shards: int = 1,
  ):
    if clients_per_round % num_shards:
      raise ValueError(
        f"clients_per_round ({clients_per_round}) must be divisible by the {num_shards} "
        "processes that split the clients of a round."
      )
    self._arrays, self._clients = arrays, clients
    self._sizes = np.array([len(c) for c in clients], np.float32)
    self._m, self._s, self._b = clients_per_round, local_steps, batch_size
    self._seed = seed
    local = clients_per_round // num_shards
    self._local = slice(shard_index * local, (shard_index + 1) * local)
    self._round = 0
    num_examples = len(next(iter(arrays.values())))
    # Rounds per pass over the data, as the loop counts epochs (eval_every=0: each epoch).
    self.steps_per_epoch = max(1, num_examples // (clients_per_round * local_steps * batch_size))

  def get_state(self) -> dict[str, int]:
    """The position: rounds drawn so far."""
    return {"round": self._round}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a position returned by `get_state`."""
    self._round = int(state["round"])

  def next(self, num_rounds: int | None = None) -> dict[str, np.ndarray]:
    """The next round's batch, or `num_rounds` of them stacked on a new leading axis."""
    if num_rounds is None:
      return self._next_one()
    rounds = [self._next_one() for _ in range(num_rounds)]
    return {k: np.stack([r[k] for r in rounds]) for k in rounds[0]}

  def _next_one(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, self._round])
    self._round += 1
    sampled_M = np.sort(rng.choice(len(self._clients), self._m, replace=False))
    batch = client_batches(self._arrays, self._clients, sampled_M, self._s, self._b, rng)
    batch[WEIGHT_KEY] = self._sizes[sampled_M] / self._sizes[sampled_M].sum()
    return {k: v[self._local] for k, v in batch.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class Federated:
  """Federated rounds of a task's model, as a `dl.training.protocols.Trainable` (see `federate`).

  Attributes:
    task: the model, objective and data; `task.train` is what the clients hold,
      `task.eval` and `task.test` evaluate the global model.
    clients: index arrays into `task.train`, one per client.
    clients_per_round: M, sampled without replacement each round.
    local_steps: S local steps per sampled client and round.
    local_tx: the clients' optimizer (with `proximal(mu)` in front for FedProx).
    server_tx: the server's optimizer on the pseudo-gradient.
    name: shown on the progress bar and the plot.
  """

  task: Task
  clients: tuple[np.ndarray, ...]
  clients_per_round: int
  local_steps: int
  local_tx: optax.GradientTransformation
  server_tx: optax.GradientTransformation
  name: str = "federated"

  @property
  def selection(self) -> tuple[str, str] | None:
    """The task's best-checkpoint metric, read on validation data."""
    return self.task.selection

  def init(self, seed: int) -> TrainState:
    """The global model and the server optimizer's state, initialised from `seed`; round 0."""
    example = self.task.train.example()
    inputs = {k: jnp.zeros(example[k].shape, example[k].dtype) for k in self.task.model.inputs}
    return create_train_state(self.task.model, self.server_tx, jax.random.PRNGKey(seed), inputs)

  def mode(self, metric: str) -> str:
    """Which direction of `metric` is better (the task's objective says)."""
    return self.task.mode(metric)

  def split_size(self, batch_size: int) -> int:
    """Meshes and pmap split the clients of a round over devices."""
    del batch_size
    return self.clients_per_round

  def examples_per_step(self, batch_size: int) -> int:
    """Examples a round trains on: every sampled client's local batches."""
    return self.clients_per_round * self.local_steps * batch_size

  def step(self, state: TrainState, batch, *, axis_name: str | None = None):
    """One round, `fedavg_round`, with this run's model, optimizers and objective bound."""
    return fedavg_round(
      state,
      batch,
      model=self.task.model,
      local_tx=self.local_tx,
      server_tx=self.server_tx,
      objective=self.task.objective,
      axis_name=axis_name,
    )

  def batches(
    self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1
  ) -> ClientRounds:
    """The rounds' batches (`ClientRounds`), local batches of `batch_size`."""
    return ClientRounds(
      self.task.train.arrays,
      self.clients,
      clients_per_round=self.clients_per_round,
      local_steps=self.local_steps,
      batch_size=batch_size,
      seed=seed,
      shard_index=shard_index,
      num_shards=num_shards,
    )

  def evaluate(
    self, state: TrainState, split: str = "eval", batch_size: int = inference.EVAL_BATCH_SIZE
  ) -> Metrics | None:
    """The global model on the task's "eval" (validation) or "test" arrays (`dl.evaluate`)."""
    return self.task.evaluate(state, split, batch_size)


def federate(
  task: Task,
  clients: Sequence[np.ndarray],
  *,
  clients_per_round: int,
  local_steps: int,
  local_tx: optax.GradientTransformation,
  mu: float = 0.0,
  server_tx: optax.GradientTransformation | None = None,
  name: str = "",
) -> Federated:
  """FedAvg (or FedProx when `mu` > 0) of `task`'s model over clients holding `task.train`.

  Train it with `dl.fit(federated, workdir, num_steps=rounds, batch_size=B, ...)`: a step is
  a round, `batch_size` is the clients' local batch, `seed` seeds the init, the client
  sampling, the batches and dropout.

  Args:
    task: the model, objective and data (`dl.task(...)` or `dl.build(config)`).
    clients: index arrays into `task.train`, e.g. from `dirichlet_split`.
    clients_per_round: M clients sampled (without replacement) each round; under
      `parallel="data"` or "pmap" a multiple of the devices, which it is split over.
    local_steps: S local steps per sampled client.
    local_tx: the clients' optimizer, e.g. `optax.sgd(0.05)`, fresh each round.
    mu: FedProx's proximal coefficient (0: FedAvg).
    server_tx: the server's optimizer on the pseudo-gradient (default: FedAvg's mean,
      `optax.sgd(1.0)`).
    name: shown on the progress bar and the plot ("": "fedavg/<task name>" or "fedprox/...").

  Raises:
    ValueError: for clients that are not index arrays into `task.train`, or counts out of
      range.
  """
  if not hasattr(task.train, "arrays"):
    raise ValueError(
      "federated clients hold index arrays into the task's training arrays: give dl.task "
      f"arrays, a TFDS name or a data source; got a data part ({type(task.train).__name__})."
    )
  num_examples = len(task.train)
  clients = tuple(np.asarray(c) for c in clients)
  bad = [i for i, c in enumerate(clients) if not _is_index_array(c, num_examples)]
  if not clients or bad:
    raise ValueError(
      f"clients must be non-empty integer index arrays into the {num_examples} training "
      f"examples; got {len(clients)} clients, bad ones at {bad[:5]}."
    )
  if not 0 < clients_per_round <= len(clients):
    raise ValueError(f"clients_per_round must be in [1, {len(clients)}]; got {clients_per_round}.")
  if local_steps < 1 or mu < 0:
    raise ValueError(f"need local_steps >= 1 and mu >= 0; got {local_steps} and {mu}.")
  if mu > 0:
    local_tx = optax.chain(proximal(mu), local_tx)
  return Federated(
    task=task,
    clients=clients,
    clients_per_round=clients_per_round,
    local_steps=local_steps,
    local_tx=local_tx,
    server_tx=server_tx or optax.sgd(1.0),
    name=name or f"{'fedprox' if mu > 0 else 'fedavg'}/{task.name}",
  )


def _is_index_array(c: np.ndarray, num_examples: int) -> bool:
  if c.ndim != 1 or not c.size or not np.issubdtype(c.dtype, np.integer):
    return False
  return 0 <= c.min() and c.max() < num_examples
