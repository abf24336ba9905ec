"""What one population trains: a task built once, from a config or a user's task factory.

A search takes either route to its parts:

- a config (what `dl.train` takes): `dl.build` makes the task, the config's loop fields make
  the `dl.FitConfig`, and the hooks it asks for (privacy budget, slice metrics) come along;
- a task factory, `(hyperparameters) -> dl.Task` (e.g. one that calls `dl.task` on the user's
  model, objective, optimizer and data), with a `dl.FitConfig` for how the loop runs it.

Either way the task is built once per population: its slots differ only in the
hyperparameters injected into the optimizer state (`optax.inject_hyperparams`), which the
search writes into each slot's state. A factory is called once, with the hyperparameters shared
by the whole population: the values of the shape hyperparameters (`"model.*"`) of its group
(`fixed`), {} when the space has none.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dl.core import distributed
from dl.recipes import config as config_lib
from dl.recipes import from_config
from dl.training import options, protocols
from dl.training.task import Task

TaskFactory = Callable[[dict[str, Any]], Task]


@dataclasses.dataclass(frozen=True)
class Parts:
  """One population's parts.

  Attributes:
    task: the task every slot trains (its test split kept for the chosen trial's score).
    fit: how the loop runs it; `num_steps` is the whole run's (every round of trials).
    hooks: the hooks the source asks for besides the search's own.
  """

  task: Task
  fit: options.FitConfig
  hooks: tuple[protocols.Hook, ...] = ()


def is_factory(source: Any) -> bool:
  """Whether `source` is a task factory (a callable) rather than a config."""
  return callable(source)


def fixed(source: Any, shapes: Mapping[str, Any]) -> Any:
  """`source` with the shape hyperparameters {"model.<field>": value} of one group set: a
  config with those model fields, or a factory that is passed them."""
  if is_factory(source):
    return functools.partial(_with_shapes, source, dict(shapes))
  c = config_lib.parse_config(source)
  model = {**c.model, **{name.removeprefix("model."): value for name, value in shapes.items()}}
  return dataclasses.replace(c, model=model)


def _with_shapes(factory: TaskFactory, shapes: dict[str, Any], hparams: dict[str, Any]) -> Task:
  return factory({**shapes, **hparams})


def build(
  source: Any,
  names: Sequence[str],
  *,
  fit: options.FitConfig | None = None,
  rounds: int = 1,
) -> Parts:
  """The parts of one population, the task built once.

  Args:
    source: a config (what `dl.train` takes) or a `TaskFactory` (see `fixed` for groups).
    names: the hyperparameters the search writes into each slot's optimizer state.
    fit: how the loop runs a factory's task (None: `dl.FitConfig()`); a config says it itself.
    rounds: trials train one after another in this many rounds, each 1 / rounds of the run
      (Optuna); a config's optimizer schedule is built for one round.

  Returns:
    The `Parts`.
  """
  if is_factory(source):
    return _from_factory(source, fit or options.FitConfig())
  if fit is not None:
    raise ValueError(
      "a config says how the loop runs (its fit.num_steps, fit.batch_size, ...): pass fit only "
      f"with a task factory; got a config and fit={fit!r}."
    )
  return _from_config(source, names, rounds)


def _from_factory(factory: TaskFactory, fit: options.FitConfig) -> Parts:
  """A factory's task, built once; `fit.num_steps` resolved from its epochs when 0."""
  if fit.sweep or fit.ensemble_size > 1:
    raise ValueError(
      "a search sets the population itself: leave the FitConfig's sweep and ensemble_size "
      f"unset (got {dict(fit.sweep)}, {fit.ensemble_size})."
    )
  with distributed.primary_first("dl.search: data prepared"):
    task = factory({})
  if not isinstance(task, Task):
    raise TypeError(
      f"a task factory returns a dl.Task (e.g. from dl.task(...)); got {type(task).__name__}."
    )
  num_steps = fit.total_steps(len(task.train) // fit.batch_size)
  return Parts(task, dataclasses.replace(fit, num_steps=num_steps))


def _from_config(config: Any, names: Sequence[str], rounds: int) -> Parts:
  """`dl.build` of the config with the searched names injected, once."""
  c = config_lib.parse_config(config)
  if c.fit.sweep or c.fit.ensemble_size > 1:
    raise ValueError(
      "a search sets the population itself: leave config.fit.sweep and "
      f"config.fit.ensemble_size unset (got {dict(c.fit.sweep)}, {c.fit.ensemble_size})."
    )
  injected = tuple(n for n in names if n not in ("learning_rate", "weight_decay"))
  c = dataclasses.replace(
    c, injected_hyperparams=tuple(sorted({*c.injected_hyperparams, *injected}))
  )
  c = one_round(c, rounds)
  with distributed.primary_first("dl.search: data prepared"):
    task = from_config.build(c)
  fit = from_config.fit_config(c, task)
  fit = dataclasses.replace(fit, num_steps=fit.num_steps * rounds)
  return Parts(task, fit, tuple(from_config.hooks(c, task)))


def one_round(c: config_lib.TrainConfig, rounds: int) -> config_lib.TrainConfig:
  """`c` trained for 1 / `rounds` of its run: the one place a search writes a loop field."""
  if rounds == 1:
    return c
  fit = c.fit
  if fit.num_steps:
    if fit.num_steps < rounds:
      raise ValueError(f"{rounds} rounds need >= {rounds} steps; the run has {fit.num_steps}.")
    fit = dataclasses.replace(fit, num_steps=fit.num_steps // rounds)
  else:
    fit = dataclasses.replace(fit, num_epochs=fit.num_epochs / rounds)
  return dataclasses.replace(c, fit=fit)
