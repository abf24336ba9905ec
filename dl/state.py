"""The training state: a pytree of arrays, nothing live."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: number of train steps taken (int32 scalar).
    params: the model's trainable parameters.
    model_state: the model's other variable collections, e.g. {"batch_stats": ...}
      for BatchNorm; {} when there are none.
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
  model: nn.Module,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  input_shape: tuple[int, ...],
  input_dtype=jnp.float32,
) -> TrainState:
  """Initialises a model and optimizer into a `TrainState`.

  Args:
    model: a Flax module called as `model(x, train=...)`.
    tx: the optax optimizer.
    rng: a PRNG key (`jax.random.PRNGKey(seed)`).
    input_shape: shape of one example, without the batch axis.
    input_dtype: dtype of the inputs.

  Returns:
    The initial state, step 0.
  """
  init_rng, rng = jax.random.split(rng)
  x = jnp.zeros((1, *input_shape), input_dtype)
  variables = model.init({"params": init_rng, "dropout": init_rng}, x, train=False)
  model_state, params = flax.core.pop(variables, "params")
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=dict(model_state),
    opt_state=tx.init(params),
    rng=rng,
  )
