"""The training state: a pytree of arrays, nothing live."""

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dl.models.adapters import Model


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: number of train steps taken (int32 scalar).
    params: the model's trainable parameters.
    model_state: the model's other variables, e.g. {"batch_stats": ...} for BatchNorm;
      {} when there are none.
    opt_state: the optax optimizer state.
    rng: base PRNG key; step `s` uses `fold_in(rng, s)`, so randomness does not
      depend on how steps are grouped into dispatches.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: optax.OptState
  rng: jax.Array


def create_train_state(
  model: Model,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  example_batch: Mapping[str, jax.Array],
) -> TrainState:
  """Initialises a model and optimizer into a `TrainState`.

  Args:
    model: `dl.Linen(module, ...)` or `dl.NNX(make, ...)`.
    tx: the optax optimizer.
    rng: a PRNG key (`jax.random.PRNGKey(seed)`).
    example_batch: arrays shaped like the model's inputs (any batch size, e.g. 1).

  Returns:
    The initial state, step 0.
  """
  init_rng, rng = jax.random.split(rng)
  params, model_state = model.init(init_rng, example_batch)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=model_state,
    opt_state=tx.init(params),
    rng=rng,
  )
