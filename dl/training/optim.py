"""Optimizers and learning-rate schedules by name, all built from optax.

`OPTIMIZERS` and `SCHEDULES` are the names a config may use; adding one is adding an entry
here. The peak learning rate and the weight decay are injected hyperparameters: they live in
the optimizer state as arrays (`optax.inject_hyperparams`), so one compiled step serves
models with different values, e.g. a `jax.vmap` sweep (see `set_hyperparams`).

Any optax `GradientTransformation` works with `dl.fit`; these are what configs name.
"""

import inspect
from collections.abc import Sequence

import jax.numpy as jnp
import optax


def _sgd(learning_rate, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate))


def _momentum(learning_rate, weight_decay, momentum=0.9):
  sgd = optax.sgd(learning_rate, momentum=momentum, nesterov=True)
  return optax.chain(optax.add_decayed_weights(weight_decay), sgd)


def _adam(learning_rate, weight_decay, b1=0.9, b2=0.999):
  adam = optax.adam(learning_rate, b1=b1, b2=b2)
  return optax.chain(optax.add_decayed_weights(weight_decay), adam)


def _rmsprop(learning_rate, weight_decay, momentum=0.9):
  rmsprop = optax.rmsprop(learning_rate, momentum=momentum)
  return optax.chain(optax.add_decayed_weights(weight_decay), rmsprop)


def _adamw(learning_rate, weight_decay, b1=0.9, b2=0.999):
  return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def _lamb(learning_rate, weight_decay, b1=0.9, b2=0.999):
  return optax.lamb(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def _lion(learning_rate, weight_decay, b1=0.9, b2=0.99):
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


# name -> (learning_rate, weight_decay, [momentum | b1, b2]) -> optax.GradientTransformation.
# Weight decay is L2 added to the gradients (sgd, momentum, adam, rmsprop) or decoupled (the rest).
OPTIMIZERS = {
  "sgd": _sgd,
  "momentum": _momentum,
  "adam": _adam,
  "rmsprop": _rmsprop,
  "adamw": _adamw,
  "lamb": _lamb,
  "lion": _lion,
}


def hyperparams_of(name: str) -> tuple[str, ...]:
  """The hyperparameters of optimizer `name` beyond the learning rate and weight decay."""
  return tuple(inspect.signature(OPTIMIZERS[name]).parameters)[2:]


# name -> decay_steps -> schedule from 1.0 (multiplies the peak learning rate)
SCHEDULES = {
  "constant": lambda decay_steps: optax.constant_schedule(1.0),
  "cosine": lambda decay_steps: optax.cosine_decay_schedule(1.0, decay_steps),
  "linear": lambda decay_steps: optax.linear_schedule(1.0, 0.0, decay_steps),
}


def schedule_shape(schedule: str, num_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """The schedule divided by the peak learning rate: warmup 0 -> 1, then the decay."""
  warmup = min(warmup_steps, num_steps)
  after = SCHEDULES[schedule](max(num_steps - warmup, 1))
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), after], [warmup])


def create_optimizer(
  name: str,
  *,
  learning_rate: float,
  num_steps: int,
  schedule: str = "cosine",
  warmup_steps: int = 0,
  weight_decay: float = 0.0,
  momentum: float = 0.9,
  grad_clip_norm: float = 0.0,
  grad_accum_steps: int = 1,
  injected: Sequence[str] = (),
) -> optax.GradientTransformation:
  """Clip, the optimizer `name`, its schedule, then gradient accumulation, from optax.

  Args:
    name: one of `OPTIMIZERS`.
    learning_rate: the peak learning rate.
    num_steps: number of optimizer updates, for the schedule.
    schedule: one of `SCHEDULES`, after `warmup_steps` of linear warmup from 0.
    weight_decay: decoupled (adamw, lamb, lion) or L2 added to gradients (the others).
    momentum: of "momentum" and "rmsprop".
    grad_clip_norm: clip gradients to this global norm first (0: no clipping).
    grad_accum_steps: average this many micro-batches per update (`optax.MultiSteps`).
    injected: hyperparameters of the optimizer that live in its state as arrays too, beside
      the learning rate and weight decay (which always do): "momentum" (momentum, rmsprop)
      or "b1", "b2" (the Adam family, lion), starting at `momentum` or optax's defaults.
      A search or a sweep can then give each member its own value.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of: {', '.join(OPTIMIZERS)}.")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; expected one of: {', '.join(SCHEDULES)}.")
  extra = {
    n: momentum if n == "momentum" else p.default
    for n, p in inspect.signature(OPTIMIZERS[name]).parameters.items()
    if n not in ("learning_rate", "weight_decay")
  }
  unknown = set(injected) - set(extra)
  if unknown:
    raise ValueError(
      f"optimizer {name!r} has no hyperparameter {', '.join(sorted(unknown))} to inject; "
      f"it has learning_rate, weight_decay{''.join(', ' + n for n in extra)}."
    )
  optimizer = optax.inject_hyperparams(
    OPTIMIZERS[name], static_args=tuple(n for n in extra if n not in injected)
  )(learning_rate=learning_rate, weight_decay=weight_decay, **extra)
  chain = [optimizer, optax.scale_by_schedule(schedule_shape(schedule, num_steps, warmup_steps))]
  if grad_clip_norm > 0:
    chain.insert(0, optax.clip_by_global_norm(grad_clip_norm))
  tx = optax.chain(*chain)
  if grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps)
  return tx


def set_hyperparams(tree, **values):
  """Returns `tree` (an optimizer state, or a whole training state) with the injected
  hyperparameters `values` replaced wherever they occur, e.g. `learning_rate=0.1`.

  Values keep the dtype of the ones they replace. With a leading member axis on `values`
  (and on `tree`), each vmapped member trains with its own value.

  Raises:
    ValueError: when `tree` has no injected hyperparameter of that name.
  """
  typed = {}
  for name, value in values.items():
    found = optax.tree_utils.tree_get_all_with_path(tree, name)
    if not found:
      raise ValueError(
        f"the optimizer has no hyperparameter {name!r} to set; build it with "
        f"optax.inject_hyperparams (e.g. optax.inject_hyperparams(optax.adamw)("
        f"learning_rate=1e-3)) to sweep or search over {name!r}."
      )
    typed[name] = jnp.asarray(value, jnp.result_type(found[0][1]))
  return optax.tree_utils.tree_set(tree, **typed)


def get_hyperparam(tree, name: str):
  """The current value of an injected hyperparameter (e.g. "learning_rate")."""
  return optax.tree_utils.tree_get(tree, name)
