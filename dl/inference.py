"""Inference: evaluate a state on data, predict from raw inputs, check inputs.

Below training (the loop evaluates with `evaluate`) and below export (which checks its
artifact against `predict`). Every function takes a single model's state or an ensemble's
stacked state (a leading member axis on every leaf), which runs as one vmapped program.
"""

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from dl.core import objectives, parallel
from dl.data.batches import padded_batches
from dl.models.adapters import Model, as_model

InputSpec = Mapping[str, tuple[tuple[int, ...], np.dtype]]  # key -> (example shape, raw dtype)


def eval_step(
  state: Any,
  batch: Mapping[str, jax.Array],
  *,
  model: Model,
  objective: objectives.Objective = objectives.classification,
) -> dict[str, jax.Array]:
  """Sums of the loss and of each metric over the unmasked examples of `batch`, and "count"."""
  outputs, _ = as_model(model).apply(state.params, state.model_state, batch, train=False)
  loss_B, metrics_B = objective(outputs, batch)
  mask_B = batch.get("mask", jnp.ones(loss_B.shape, jnp.float32))
  sums = {name: jnp.sum(v * mask_B) for name, v in {"loss": loss_B, **metrics_B}.items()}
  return sums | {"count": jnp.sum(mask_B)}


def is_ensemble(state: Any) -> bool:
  """Whether `state` stacks several members on a leading axis (its step is a vector)."""
  return np.ndim(state.step) == 1


# Examples per compiled evaluation call: the default of every evaluation in dl (FitConfig's
# eval_batch_size, the trainers' `evaluate`, the slice metrics).
EVAL_BATCH_SIZE = 1000


def evaluate(
  state: Any,
  model: Any,
  arrays: Mapping[str, np.ndarray],
  batch_size: int = EVAL_BATCH_SIZE,
  objective: Any = objectives.classification,
) -> dict[str, Any]:
  """Mean loss and metrics of `state` on all of `arrays` (exact: padding is masked).

  Args:
    state: a state with `params` and `model_state` that fit `model`; an ensemble's stacked
      state is evaluated member by member in one vmapped program. On a mesh, batches are
      split over it.
    model: a `dl.Linen`/`dl.NNX` model or a Linen module.
    arrays: model-ready arrays (already preprocessed) with the keys the model and the
      objective read, e.g. {"input": (N, ...), "label": (N, ...)}; or a split read in
      batches, never held whole (anything with `len` and `padded_batches(batch_size)`, e.g.
      a `dl.data.streaming.Streaming`).
    batch_size: examples per compiled call.
    objective: the per-example loss and metrics (`dl.core.objectives`), e.g. `task.objective`.

  Returns:
    {"loss", **objective's metrics} (and what the objective's `summarize` derives, e.g.
    "rmse"): floats, or lists of one float per ensemble member.
  """
  objective = objectives.as_objective(objective)
  eval_fn = _jitted_eval_step(as_model(model), is_ensemble(state), objective)
  n = num_examples(arrays)
  totals = None
  for batch in eval_batches(arrays, min(batch_size, n), state):
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = parallel.fetch(totals)
  count = totals.pop("count")
  means = objective.summarize(
    {name: np.atleast_1d(total / count) for name, total in totals.items()}
  )
  return {name: per_member(values) for name, values in means.items()}


@functools.cache
def _jitted_eval_step(model: Model, ensemble: bool, objective: objectives.Objective):
  step = functools.partial(eval_step, model=model, objective=objective)
  return jax.jit(jax.vmap(step, in_axes=(0, None)) if ensemble else step)


def per_member(values: np.ndarray) -> float | list[float]:
  """One float for a single model, a list of floats for an ensemble."""
  values = np.atleast_1d(values)
  return float(values[0]) if values.shape == (1,) else [float(v) for v in values]


def predict(task: Any, state: Any, inputs: Any) -> np.ndarray:
  """Predictions for raw inputs, in the data's own format (e.g. uint8 pixels).

  Args:
    task: a `dl.Task` (from `dl.task(...)` or `dl.build(config)`): its model, the raw
      inputs it expects (`task.inputs`), their preprocessing and the objective's
      `predictions` (class probabilities when classifying, raw outputs otherwise).
    state: a trained state, e.g. from `dl.fit`, `dl.train` or `dl.restore`; an ensemble's
      stacked state gives one prediction per member.
    inputs: (N, *example_shape) for a model with one input; a dict {key: (N, ...)} of every
      input otherwise.

  Returns:
    (N, ...) predictions, e.g. (N, num_classes) float32 probabilities; (M, N, ...) for an
    ensemble of M members.

  Raises:
    ValueError: naming the expected shape and dtype when `inputs` do not fit.
  """
  batch = prepare_inputs(task, inputs)
  predictions = objectives.as_objective(task.objective).predictions
  fn = _jitted_apply(task.model, predictions, is_ensemble(state))
  return np.asarray(fn(state.params, state.model_state, batch))


def outputs(state: Any, model: Any, batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """The model's raw outputs (eval mode) on model-ready inputs, e.g. logits.

  Args:
    state: a trained state; an ensemble's stacked state gives one output per member.
    model: a `dl.Linen`/`dl.NNX` model or a Linen module.
    batch: the model's inputs, already preprocessed, e.g. `{"input": task.test["input"]}`.

  Returns:
    (N, ...) outputs; (M, N, ...) for an ensemble of M members.
  """
  model = as_model(model)
  fn = _jitted_apply(model, _identity, is_ensemble(state))
  return np.asarray(fn(state.params, state.model_state, {k: batch[k] for k in model.inputs}))


def _identity(x):
  return x


def prepare_inputs(task: Any, inputs: Any) -> dict[str, np.ndarray]:
  """Checks raw `inputs` against `task.inputs` and applies the task's preprocessing."""
  spec = task.inputs
  if not isinstance(inputs, Mapping):
    if len(spec) != 1:
      raise ValueError(
        f"this model takes inputs {sorted(spec)}: pass a dict of arrays; got "
        f"{type(inputs).__name__}."
      )
    inputs = {next(iter(spec)): inputs}
  check_inputs(inputs, spec)
  return {
    k: task.preprocess[k](v) if k in task.preprocess else np.asarray(v) for k, v in inputs.items()
  }


@functools.cache
def _jitted_apply(model: Model, transform, ensemble: bool):
  """jit of `transform(model outputs)` in eval mode, vmapped over members for ensembles."""

  def run(params, model_state, batch):
    outputs, _ = model.apply(params, model_state, batch, train=False)
    return transform(outputs)

  return jax.jit(jax.vmap(run, in_axes=(0, 0, None)) if ensemble else run)


def check_inputs(inputs: Mapping[str, Any], spec: InputSpec, name: str = "this model") -> None:
  """Raises a ValueError naming the expected keys, shapes and dtypes when `inputs` differ."""
  if set(inputs) != set(spec):
    raise ValueError(f"inputs for {name} must have keys {sorted(spec)}; got {sorted(inputs)}.")
  sizes = set()
  for key, (shape, dtype) in spec.items():
    x = np.asarray(inputs[key])
    label = f"inputs[{key!r}]" if len(spec) > 1 else "inputs"
    expected = f"(batch, {', '.join(map(str, shape))})" if shape else "(batch,)"
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
      raise ValueError(f"{label} for {name} must have shape {expected}; got {x.shape}.")
    if x.dtype != np.dtype(dtype):
      raise ValueError(
        f"{label} for {name} must have dtype {np.dtype(dtype)} (as stored in the data set); "
        f"got {x.dtype}."
      )
    sizes.add(len(x))
  if len(sizes) > 1:
    raise ValueError(f"inputs for {name} must all hold the same number of examples; got {sizes}.")


def num_examples(arrays: Any) -> int:
  """The examples of a split: arrays {key: (N, ...)}, or a split read in batches."""
  return len(next(iter(arrays.values()))) if isinstance(arrays, Mapping) else len(arrays)


def _host_batches(arrays: Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  if isinstance(arrays, Mapping):
    return padded_batches(arrays, batch_size)
  return arrays.padded_batches(batch_size)  # a stream: read batch by batch


def eval_batches(
  arrays: Mapping[str, np.ndarray], batch_size: int, state: Any
) -> Iterator[dict[str, Any]]:
  """`padded_batches` of `arrays`, each where a jitted evaluation of `state` expects it.

  A state on a ("data", "fsdp") mesh gets batches split over the mesh's devices (the batch
  size rounded up to a multiple of their number); every process must hold all of `arrays`.
  Any other state gets the host arrays.
  """
  mesh = _mesh_of(state)
  if mesh is None:
    yield from _host_batches(arrays, batch_size)
    return
  sharding = parallel.batch_sharding(mesh)
  for batch in _host_batches(arrays, -(-batch_size // mesh.size) * mesh.size):
    yield jax.device_put(batch, sharding)


def _mesh_of(tree: Any) -> Mesh | None:
  """The ("data", "fsdp") mesh that `tree`'s arrays live on, if they live on one."""
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.axis_names == parallel.AXES:
      return sharding.mesh
  return None
