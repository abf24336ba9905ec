"""The training state: a pytree of arrays, nothing live."""

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dl.models.adapters import as_model


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
  model: Any,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  example: Mapping[str, jax.Array] | tuple[int, ...],
  dtype=jnp.float32,
) -> TrainState:
  """Initialises a model and optimizer into a `TrainState`.

  Args:
    model: `dl.Linen(module, ...)`, `dl.NNX(make, ...)` or a Linen module.
    tx: the optax optimizer.
    rng: a PRNG key (`jax.random.PRNGKey(seed)`).
    example: arrays shaped like the model's inputs (any batch size, e.g. 1), or, for a
      model reading "input" alone, the shape of one example (e.g. (28, 28, 1)).
    dtype: the dtype of "input" when `example` is a shape.

  Returns:
    The initial state, step 0.
  """
  model = as_model(model)
  if not isinstance(example, Mapping):
    example = {"input": jnp.zeros((1, *example), dtype)}
  init_rng, rng = jax.random.split(rng)
  params, model_state = model.init(init_rng, example)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=model_state,
    opt_state=tx.init(params),
    rng=rng,
  )
