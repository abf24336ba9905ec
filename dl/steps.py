"""The pure train and eval steps. How they are compiled is chosen where they are called.

A batch is a dict: "input" (B, ...) and "label" (B, ...), whose meaning the objective
(`dl.objectives`) gives: class ids for classification, float targets for regression, next
tokens for language models. Eval batches may carry "mask" (B,) to ignore padding.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dl import objectives
from dl.state import TrainState

ApplyFn = Callable[..., Any]


def check_batch(batch: dict[str, jax.Array]) -> None:
  """Raises a ValueError unless `batch` is {"input": (B, ...), "label": (B, ...)}."""
  if not isinstance(batch, dict) or not {"input", "label"} <= set(batch):
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"a batch must be a dict with keys 'input' and 'label'; got {keys}.")
  x, y = batch["input"], batch["label"]
  if y.ndim < 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
    raise ValueError(
      f"batch['input'] must be (B, ...) and batch['label'] (B, ...) with the same B; got "
      f"shapes {x.shape} and {y.shape}."
    )


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  apply_fn: ApplyFn,
  tx: optax.GradientTransformation,
  objective: objectives.Objective = objectives.classification,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on one batch.

  Args:
    state: the current state.
    batch: {"input": (B, ...), "label": (B, ...)}, as `objective` expects.
    apply_fn: the model's `apply`.
    tx: the optimizer `state.opt_state` belongs to.
    objective: `(outputs, batch) -> (loss_B, metrics)`, per example (`dl.objectives`).
    axis_name: under `jax.pmap` (or `shard_map`), the device axis: gradients, metrics and
      batch statistics are averaged over it, and each device draws its own dropout mask.
      None under `jax.jit`, where shardings decide the collectives.

  Returns:
    The new state and {"loss", **objective's metrics}: batch means before the update.
  """
  check_batch(batch)
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
  mutable = list(state.model_state)

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    out = apply_fn(
      variables, batch["input"], train=True, rngs={"dropout": dropout_rng}, mutable=mutable or False
    )
    outputs, model_state = out if mutable else (out, state.model_state)
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
    model_state=dict(model_state),
    opt_state=opt_state,
  )
  return new_state, metrics


def eval_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  apply_fn: ApplyFn,
  objective: objectives.Objective = objectives.classification,
) -> dict[str, jax.Array]:
  """Sums of the loss and of each metric over the unmasked examples of `batch`, and "count"."""
  outputs = apply_fn({"params": state.params, **state.model_state}, batch["input"], train=False)
  loss_B, metrics_B = objective(outputs, batch)
  mask_B = batch.get("mask", jnp.ones(loss_B.shape, jnp.float32))
  sums = {name: jnp.sum(v * mask_B) for name, v in {"loss": loss_B, **metrics_B}.items()}
  return sums | {"count": jnp.sum(mask_B)}
