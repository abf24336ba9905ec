"""Optimizers and schedules from a `TrainConfig`, all built from optax."""

import optax

from dl.config import TrainConfig


def create_schedule(config: TrainConfig, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then the configured decay over the remaining steps."""
  lr, warmup = config.learning_rate, min(config.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  after = {
    "constant": optax.constant_schedule(lr),
    "cosine": optax.cosine_decay_schedule(lr, decay_steps),
    "linear": optax.linear_schedule(lr, 0.0, decay_steps),
  }[config.schedule]
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def create_optimizer(config: TrainConfig, num_steps: int) -> optax.GradientTransformation:
  """Returns the optax transformation: clip, optimizer, then gradient accumulation.

  Args:
    config: the training config (optimizer, learning_rate, schedule, weight_decay,
      momentum, grad_clip_norm, grad_accum_steps).
    num_steps: number of optimizer updates, for the schedule.
  """
  lr = create_schedule(config, num_steps)
  wd = config.weight_decay
  optimizer = {
    "sgd": lambda: optax.sgd(lr),
    "momentum": lambda: optax.sgd(lr, momentum=config.momentum, nesterov=True),
    "adam": lambda: optax.adam(lr),
    "adamw": lambda: optax.adamw(lr, weight_decay=wd),
    "lamb": lambda: optax.lamb(lr, weight_decay=wd),
    "lion": lambda: optax.lion(lr, weight_decay=wd),
    "rmsprop": lambda: optax.rmsprop(lr, momentum=config.momentum),
  }[config.optimizer]()
  decoupled = config.optimizer in ("adamw", "lamb", "lion")
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if wd > 0 and not decoupled:
    chain.append(optax.add_decayed_weights(wd))
  tx = optax.chain(*chain, optimizer) if chain else optimizer
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx
