"""Per-example gradients: `jax.vmap` of `jax.grad` over the batch axis."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dl import objectives
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
  apply_fn: Callable,
  state: TrainState,
  objective: objectives.Objective = objectives.classification,
) -> Callable:
  """The loss of one {"input", "label"} example under `state` (eval mode)."""

  def loss(params, example):
    variables = {"params": params, **state.model_state}
    example_1 = jax.tree.map(lambda x: jnp.asarray(x)[None], example)
    outputs = apply_fn(variables, example_1["input"], train=False)
    return objective(outputs, example_1)[0][0]

  return loss
