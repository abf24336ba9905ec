"""The pure train step. How it is compiled is chosen where it is called (`dl.training.compile`).

A batch is a dict of arrays with one leading (example) axis: the keys the model reads
(`model.inputs`, e.g. "input") and whatever the objective reads (e.g. "label"), whose
meaning the objective gives (`dl.core.objectives`).
"""

from collections.abc import Mapping
from typing import Any

import jax
import optax

from dl.core import objectives
from dl.models.adapters import Model, as_model
from dl.training.state import TrainState


def check_batch(batch: Mapping[str, Any], keys: tuple[str, ...] = ()) -> None:
  """Raises a ValueError unless `batch` is a dict holding `keys`, all arrays of one length."""
  if not isinstance(batch, Mapping):
    raise ValueError(f"a batch must be a dict of arrays; got {type(batch).__name__}.")
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(
      f"the model reads batch keys {list(keys)}; got {sorted(batch)} (missing {missing}). "
      "Name the keys that feed the model with dl.Linen(module, inputs=(...))."
    )
  sizes = {k: (v.shape[0] if v.ndim else None) for k, v in batch.items()}
  if None in sizes.values() or len(set(sizes.values())) != 1:
    raise ValueError(
      f"every array of a batch must have the same leading (batch) axis; got shapes "
      f"{ {k: v.shape for k, v in batch.items()} }."
    )


def train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  *,
  model: Model,
  tx: optax.GradientTransformation,
  objective: objectives.Objective = objectives.classification,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on one batch.

  Args:
    state: the current state.
    batch: the model's inputs and what `objective` reads, e.g. {"input", "label"}.
    model: `init`/`apply` of the model (`dl.Linen`, `dl.NNX`; a Linen module reads "input").
    tx: the optimizer `state.opt_state` belongs to.
    objective: `(outputs, batch) -> (loss_B, metrics)`, per example (`dl.core.objectives`).
    axis_name: under `jax.pmap` (or `shard_map`), the device axis: gradients, metrics and
      batch statistics are averaged over it, and each device draws its own dropout mask.
      None under `jax.jit`, where shardings decide the collectives.

  Returns:
    The new state and {"loss", **objective's metrics}: batch means before the update.
  """
  model = as_model(model)
  check_batch(batch, model.inputs)
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

  def loss_fn(params):
    outputs, model_state = model.apply(
      params, state.model_state, batch, train=True, rng=dropout_rng
    )
    loss_B, metrics = objective(outputs, batch)
    return loss_B.mean(), (metrics, model_state)

  (loss, (metrics_B, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, **{k: v.mean() for k, v in metrics_B.items()}}
  if axis_name is not None:
    grads, metrics, model_state = jax.lax.pmean((grads, metrics, model_state), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    model_state=model_state,
    opt_state=opt_state,
  )
  return new_state, metrics
