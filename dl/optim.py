"""Optimizers and schedules from a `TrainConfig`, all built from optax.

The peak learning rate and the weight decay are injected hyperparameters: they live in the
optimizer state as arrays (`optax.inject_hyperparams`), so one compiled step serves models
with different values, e.g. a `jax.vmap` sweep (see `set_hyperparams`).
"""

import jax.numpy as jnp
import optax

from dl.config import TrainConfig

_DECOUPLED = ("adamw", "lamb", "lion")


def schedule_shape(config: TrainConfig, num_steps: int) -> optax.Schedule:
  """The schedule divided by the peak learning rate: warmup 0 -> 1, then the decay."""
  warmup = min(config.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  after = {
    "constant": optax.constant_schedule(1.0),
    "cosine": optax.cosine_decay_schedule(1.0, decay_steps),
    "linear": optax.linear_schedule(1.0, 0.0, decay_steps),
  }[config.schedule]
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), after], [warmup])


def create_schedule(config: TrainConfig, num_steps: int) -> optax.Schedule:
  """The learning rate at each optimizer update."""
  shape = schedule_shape(config, num_steps)
  return lambda count: config.learning_rate * shape(count)


def _base_optimizer(name: str, momentum: float):
  """optax optimizer factory taking (learning_rate, weight_decay)."""

  def make(learning_rate, weight_decay):
    if name in _DECOUPLED:
      return getattr(optax, name)(learning_rate, weight_decay=weight_decay)
    opt = {
      "sgd": lambda: optax.sgd(learning_rate),
      "momentum": lambda: optax.sgd(learning_rate, momentum=momentum, nesterov=True),
      "adam": lambda: optax.adam(learning_rate),
      "rmsprop": lambda: optax.rmsprop(learning_rate, momentum=momentum),
    }[name]()
    return optax.chain(optax.add_decayed_weights(weight_decay), opt)

  return make


def create_optimizer(config: TrainConfig, num_steps: int) -> optax.GradientTransformation:
  """Returns the optax transformation: clip, optimizer, schedule, then gradient accumulation.

  Args:
    config: the training config (optimizer, learning_rate, schedule, warmup_steps,
      weight_decay, momentum, grad_clip_norm, grad_accum_steps).
    num_steps: number of optimizer updates, for the schedule.
  """
  optimizer = optax.inject_hyperparams(_base_optimizer(config.optimizer, config.momentum))(
    learning_rate=config.learning_rate, weight_decay=config.weight_decay
  )
  chain = [optimizer, optax.scale_by_schedule(schedule_shape(config, num_steps))]
  if config.grad_clip_norm > 0:
    chain.insert(0, optax.clip_by_global_norm(config.grad_clip_norm))
  tx = optax.chain(*chain)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx


def set_hyperparams(opt_state: optax.OptState, **values) -> optax.OptState:
  """Returns `opt_state` with injected hyperparameters replaced, e.g. `learning_rate=0.1`.

  Values keep the dtype of the ones they replace. With a leading member axis on `values`
  (and on `opt_state`), each vmapped member trains with its own value.
  """
  typed = {
    name: jnp.asarray(value, jnp.result_type(get_hyperparam(opt_state, name)))
    for name, value in values.items()
  }
  return optax.tree_utils.tree_set(opt_state, **typed)


def get_hyperparam(opt_state: optax.OptState, name: str):
  """The current value of an injected hyperparameter (e.g. "learning_rate")."""
  return optax.tree_utils.tree_get(opt_state, name)
