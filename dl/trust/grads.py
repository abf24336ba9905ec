"""Per-example gradients: `jax.vmap` of `jax.grad` over the batch axis."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dl.core import objectives
from dl.models.adapters import as_model
from dl.training.state import TrainState


def per_example_grads(
  loss_fn: Callable[[Any, dict[str, jax.Array]], jax.Array], params: Any, batch: dict[str, Any]
) -> Any:
  """Gradients of `loss_fn(params, example)` for every example of `batch`.

  Args:
    loss_fn: loss of ONE example (its arrays without the batch axis), a scalar.
    params: the parameters to differentiate.
    batch: arrays with a leading batch axis B.

  Returns:
    A pytree like `params` whose leaves have a leading axis B.
  """
  return jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, batch)


def example_loss(
  model: Any,
  state: TrainState,
  objective: objectives.Objective = objectives.classification,
) -> Callable:
  """The loss of one example (the model's inputs and what `objective` reads) under `state`,
  in eval mode; `model` is a `dl.Linen`/`dl.NNX` model or a Linen module."""
  model = as_model(model)

  def loss(params, example):
    example_1 = jax.tree.map(lambda x: jnp.asarray(x)[None], example)
    outputs, _ = model.apply(params, state.model_state, example_1, train=False)
    return objective(outputs, example_1)[0][0]

  return loss
