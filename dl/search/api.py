"""The searches: random, grid (`train_trials`), ASHA, PBT and Optuna, each one population.

Each takes a config or a task factory (`dl.search.parts`), trains its trials as the slots of
one population with the algorithm's hook, chooses a trial on validation and scores it once on
test; `run` picks the algorithm by name and splits a space with shape hyperparameters into
groups.
"""

import dataclasses
import functools
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dl.core import distributed
from dl.search import parts as parts_lib
from dl.search import report
from dl.search import space as space_lib
from dl.search.asha import SuccessiveHalving
from dl.search.optuna_trials import OptunaTrials
from dl.search.pbt import PopulationBasedTraining
from dl.search.population import Search, Slots
from dl.search.space import Choice, Space, sample
from dl.training import loop, options

ALGORITHMS = ("random", "asha", "pbt", "tpe", "cmaes")


@dataclasses.dataclass
class SearchResult:
  """What a search found.

  Attributes:
    trials: one dict per trial: "trial", its hyperparameters, "steps" (its training steps),
      "validation_<metric>" (at its last evaluation), "best_validation_<metric>", what the
      algorithm adds ("rung" and "status"; "generation" and "parent"), "chosen", and for
      the chosen trial alone "test_<metric>" (scored once).
    best: index of the trial chosen on validation.
    metric: the validation metric that chose it; `mode` says whether higher ("max") is better.
    state: the population's final state (a leading slot axis on every leaf).
    chosen_state: the chosen trial's state (no slot axis).
    task: the task the chosen trial trained (`task.evaluate(chosen_state, "test")`, exports).
    fit: how the loop ran its population (its `sweep`: the first trials' hyperparameters).
  """

  trials: list[dict[str, Any]]
  best: int
  metric: str
  mode: str
  state: Any
  chosen_state: Any
  task: Any
  fit: options.FitConfig


def random_search(
  source,
  space: Space,
  workdir: str,
  *,
  num_trials: int = 8,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
  fit: options.FitConfig | None = None,
) -> SearchResult:
  """Trains `num_trials` draws from `space` as one population and picks one on validation.

  Args:
    source: a config, what `dl.train` takes (its `fit.sweep` must be empty; the search
      sets it), or a task factory, `(hyperparameters) -> dl.Task`, called once per
      population with its shape hyperparameters ("model.*", {} when the space has none;
      `dl.search.parts`). A factory's optimizer injects the searched hyperparameters
      (`optax.inject_hyperparams`): the search writes each slot's values into its state.
    space: {hyperparameter: LogUniform | Uniform | Choice}; names from `SEARCHABLE`.
    workdir: the population's checkpoints, metrics, trial table and plot. A search resumes
      from its checkpoints, like `dl.train`.
    num_trials: trials in the population.
    seed: the search's seed (draws); the source's (a config's or FitConfig's seed) seeds
      the init and data order of all.
    metric: validation metric to choose by (default: the objective's, e.g. "accuracy").
    score_test: score the chosen trial on test (False where the caller chooses among
      several searches and scores its own choice once).
    fit: how the loop runs a factory's task (None: `dl.FitConfig()`); its `num_steps` is the
      search's budget. With a config, None: the config says it.

  Returns:
    A `SearchResult`; also written to `workdir/trials.csv`, `trials.jsonl`, `trials.png`.
  """
  trials = sample(space, num_trials, seed)
  return train_trials(
    source, trials, workdir, metric=metric, title="random search", score_test=score_test, fit=fit
  )


def train_trials(
  source,
  trials: Sequence[Mapping[str, float]],
  workdir: str,
  *,
  metric: str = "",
  title: str = "",
  score_test: bool = True,
  fit: options.FitConfig | None = None,
) -> SearchResult:
  """Trains `trials` ([{hyperparameter: value}], e.g. from `sample` or `grid`) as one
  population, chooses one on validation and scores it once on test (see `random_search`)."""
  names = sorted(trials[0]) if trials else []
  if any(sorted(t) != names for t in trials):
    raise ValueError(f"every trial needs the same hyperparameters {names}; got {list(trials)}.")

  def make(slots, metric, mode, num_steps, eval_every):
    return Search(slots, trials, metric, mode, num_steps), eval_every, num_steps

  return _search(
    source, workdir, names, len(trials), make, metric, title or "search", score_test, fit
  )


def successive_halving(
  source,
  space: Space,
  workdir: str,
  *,
  num_slots: int = 8,
  min_steps: int = 0,
  reduction_factor: int = 3,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
  fit: options.FitConfig | None = None,
) -> SearchResult:
  """ASHA: trials stopped at rungs by validation, their slots refilled (`dl.search.asha`).

  Args:
    source: as for `random_search`.
    space: as for `random_search`.
    workdir: as for `random_search`.
    seed: as for `random_search`.
    metric: as for `random_search`.
    score_test: as for `random_search`.
    fit: as for `random_search`.
    num_slots: trials trained at once.
    min_steps: a trial's steps at the first rung (0: about the run's steps /
      reduction_factor**3, a multiple of the config's evaluation interval).
    reduction_factor: each rung keeps the best 1 / reduction_factor of the trials.

  Returns:
    A `SearchResult` ("rung" and "status" in each trial's row).
  """

  def make(slots, metric, mode, num_steps, eval_every):
    # The first rung: about 3 rungs below the run's end, on the evaluation schedule.
    first = min_steps or max(1, round(num_steps / reduction_factor**3 / eval_every)) * eval_every
    hook = SuccessiveHalving(
      space,
      slots,
      num_slots=num_slots,
      metric=metric,
      mode=mode,
      num_steps=num_steps,
      min_steps=first,
      reduction_factor=reduction_factor,
      seed=seed,
    )
    return hook, eval_every if first % eval_every == 0 else first, num_steps

  return _search(source, workdir, sorted(space), num_slots, make, metric, "ASHA", score_test, fit)


def population_based_training(
  source,
  space: Space,
  workdir: str,
  *,
  num_slots: int = 8,
  fraction: float = 0.25,
  resample_probability: float = 0.25,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
  fit: options.FitConfig | None = None,
) -> SearchResult:
  """PBT: at each evaluation the worst members copy the best and perturb (`dl.search.pbt`).

  Args:
    source: as for `random_search`; its evaluation interval is PBT's (the
      FitConfig's eval_every, a config's `fit.eval_every`, else once per epoch).
    space: as for `random_search`.
    workdir: as for `random_search`.
    seed: as for `random_search`.
    metric: as for `random_search`.
    score_test: as for `random_search`.
    fit: as for `random_search`.
    num_slots: members of the population.
    fraction: the share of members replaced at each evaluation.
    resample_probability: the chance that a perturbed hyperparameter is drawn afresh.

  Returns:
    A `SearchResult` ("generation" and "parent" in each row; a row is one member's stretch
    of training with one set of hyperparameters); `schedules.png` in the workdir.
  """

  def make(slots, metric, mode, num_steps, eval_every):
    hook = PopulationBasedTraining(
      space,
      slots,
      num_slots=num_slots,
      metric=metric,
      mode=mode,
      num_steps=num_steps,
      fraction=fraction,
      resample_probability=resample_probability,
      seed=seed,
    )
    return hook, eval_every, num_steps

  return _search(source, workdir, sorted(space), num_slots, make, metric, "PBT", score_test, fit)


def optuna_search(
  source,
  space: Space,
  workdir: str,
  *,
  sampler: str = "tpe",
  num_slots: int = 8,
  num_rounds: int = 4,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
  fit: options.FitConfig | None = None,
) -> SearchResult:
  """Optuna's TPE or CMA-ES, `num_slots` trials asked at a time (`dl.search.optuna_trials`).

  Args:
    source: as for `random_search`.
    space: as for `random_search`.
    workdir: as for `random_search`.
    seed: as for `random_search`.
    metric: as for `random_search`.
    score_test: as for `random_search`.
    sampler: "tpe" or "cmaes".
    num_slots: trials asked for, and trained, at once.
    num_rounds: batches of trials; each trains the run's steps / num_rounds steps (its
      learning-rate schedule spans them; a factory's optimizer carries its own schedule),
      so the search trains num_slots * num_rounds trials in the budget of num_slots full runs.

  Returns:
    A `SearchResult`; the chosen trial's state is kept in `workdir/best_trials`.
  """

  def make(slots, metric, mode, num_steps, eval_every):
    trial_steps = num_steps // num_rounds
    if trial_steps == 0:
      raise ValueError(f"{num_rounds} rounds need >= {num_rounds} steps; the run has {num_steps}.")
    hook = OptunaTrials(
      space,
      slots,
      num_slots=num_slots,
      metric=metric,
      mode=mode,
      num_steps=trial_steps * num_rounds,
      trial_steps=trial_steps,
      sampler=sampler,
      seed=seed,
      workdir=workdir,
    )
    # Evaluations at the end of each round, and as often as the config asks where that fits.
    every = eval_every if trial_steps % eval_every == 0 else trial_steps
    return hook, every, trial_steps * num_rounds

  title = f"Optuna {sampler}"
  return _search(
    source, workdir, sorted(space), num_slots, make, metric, title, score_test, fit, num_rounds
  )


def run(
  source,
  space: Space,
  workdir: str,
  algorithm: str,
  *,
  num_slots: int = 8,
  seed: int = 0,
  score_test: bool = True,
  fit: options.FitConfig | None = None,
) -> SearchResult:
  """The search `algorithm` (one of `ALGORITHMS`) with its defaults: the command line's.

  `source` and `fit` are as for `random_search`. Hyperparameters that change shapes
  (`"model.width"`, `"model.depth"`, any `"model.*"` field, each a `Choice`) split the search
  into groups: every combination of their values is its own population (one compiled program
  each, in `workdir/group<i>`: a config's model fields set, or a factory passed them),
  searched with `algorithm` and the rest of the space. The trial best on validation over all
  groups is scored once on test; `workdir/trials.csv` and `trials.jsonl` hold every group's
  trials.
  """
  if any(name.startswith("model.") for name in space):
    return _grouped(source, space, workdir, algorithm, num_slots=num_slots, seed=seed, fit=fit)
  kwargs = {"seed": seed, "score_test": score_test, "fit": fit}
  if algorithm == "random":
    return random_search(source, space, workdir, num_trials=num_slots, **kwargs)
  if algorithm == "asha":
    return successive_halving(source, space, workdir, num_slots=num_slots, **kwargs)
  if algorithm == "pbt":
    return population_based_training(source, space, workdir, num_slots=num_slots, **kwargs)
  if algorithm in ("tpe", "cmaes"):
    return optuna_search(source, space, workdir, sampler=algorithm, num_slots=num_slots, **kwargs)
  raise ValueError(f"unknown search algorithm {algorithm!r}; expected one of {ALGORITHMS}.")


def _grouped(source, space: Space, workdir: str, algorithm: str, **kwargs) -> SearchResult:
  """`run` once per combination of the shape hyperparameters; the best scored once on test."""
  shapes = {name: dist for name, dist in space.items() if name.startswith("model.")}
  for name, dist in shapes.items():
    if not isinstance(dist, Choice):
      raise ValueError(
        f"{name!r} changes the model's shapes, so each of its values is its own compiled "
        f"program: give it as dl.search.Choice((...)); got {dist!r}."
      )
  rest = {name: dist for name, dist in space.items() if name not in shapes}
  groups = [
    dict(zip(shapes, values)) for values in itertools.product(*(d.values for d in shapes.values()))
  ]
  rows, found = [], []
  for i, group in enumerate(groups):
    group_source = parts_lib.fixed(source, group)
    group_dir = os.path.join(workdir, f"group{i}")
    found.append(run(group_source, rest, group_dir, algorithm, score_test=False, **kwargs))
    rows += [{"group": i, **group, **row, "chosen": False} for row in found[-1].trials]
  best_group = max(range(len(found)), key=lambda g: _chosen_score(found[g]))
  result = found[best_group]
  best = next(
    j for j, row in enumerate(rows) if row["group"] == best_group and row["trial"] == result.best
  )
  rows[best]["chosen"] = True
  if result.task.test is not None:
    test = result.task.evaluate(result.chosen_state, "test", result.fit.eval_batch_size)
    rows[best] |= {f"test_{k}": float(v) for k, v in test.items()}
  if distributed.is_primary():
    report.write_table(workdir, rows)
  return dataclasses.replace(result, trials=rows, best=best)


def _chosen_score(result: SearchResult) -> float:
  """The chosen trial's validation metric, higher is better."""
  value = result.trials[result.best][f"validation_{result.metric}"]
  return value if result.mode == "max" else -value


def _search(
  source,
  workdir: str,
  names,
  num_slots: int,
  make,
  metric: str,
  title: str,
  score_test: bool = True,
  fit: options.FitConfig | None = None,
  rounds: int = 1,
) -> SearchResult:
  """Builds the parts once, trains the population with the algorithm's hook, scores the chosen.

  `make(slots, metric, mode, num_steps, eval_every)` returns (the algorithm's hook, the
  evaluation interval, the steps in all); trials train in `rounds` rounds (`parts.build`).
  """
  if num_slots < 2:
    raise ValueError(f"a search trains 2 or more trials as one population; got {num_slots}.")
  space_lib.check_names(names)
  parts = parts_lib.build(source, names, fit=fit, rounds=rounds)
  task, fit_config = parts.task, parts.fit
  metric = metric or task.objective.select
  mode = task.mode(metric)
  slots = Slots(names, functools.partial(task.init, fit_config.seed))
  eval_every = fit_config.eval_every or len(task.train) // fit_config.batch_size
  hook, eval_every, num_steps = make(slots, metric, mode, fit_config.num_steps, eval_every)
  first = [hook.trials[t]["hparams"] for t in hook.slot_trial]
  fit_config = dataclasses.replace(
    fit_config,
    num_steps=num_steps,
    eval_every=eval_every,
    checkpoint_every=0,  # at each evaluation, where the hook's decisions are taken
    sweep={name: tuple(h[name] for h in first) for name in names},
  )
  # The test split is scored below, once, for the chosen trial only.
  population = dataclasses.replace(task, test=None)
  state, _ = loop.fit(population, workdir, fit_config, hooks=[*parts.hooks, hook])
  best, chosen_state = hook.chosen(state)
  rows = report.rows(hook, metric)
  if task.test is not None and score_test:
    test = task.evaluate(chosen_state, "test", fit_config.eval_batch_size)
    rows[best] |= {f"test_{k}": float(v) for k, v in test.items()}
  if distributed.is_primary():
    title = f"{title}: {num_slots} slots, one population"
    report.write(workdir, rows, best, hook, metric, title)
  return SearchResult(rows, best, metric, mode, state, chosen_state, task, fit_config)
