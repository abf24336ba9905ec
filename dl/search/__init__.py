"""Hyperparameter search whose trials train together, as one population.

dl trains K models that differ in their injected hyperparameters (`optax.inject_hyperparams`:
the learning rate and weight decay of every optimizer `dl.training.optim` builds, and the
momentum or Adam betas b1 and b2 when a search names them) as one `jax.vmap`ped program. A
search trains its trials as the K slots of such a population: one compilation, one pass over
the data per step for all of them. The algorithms are hooks of the one loop
(`dl.search.population`) that, at evaluations, stop trials and start new ones in their slots
or copy one member over another, inside the stacked state, so nothing is compiled again:

- `random_search` (and `train_trials` for a given list, e.g. a `grid`): K trials, start to end;
- `successive_halving`: ASHA: trials measured at rungs, the worst stopped and their slots
  refilled with new draws (`dl.search.asha`);
- `population_based_training`: PBT: the worst members copy the best and perturb their
  hyperparameters (`dl.search.pbt`);
- `optuna_search`: Optuna's TPE or CMA-ES, asked for K trials at a time through its
  ask-and-tell interface (`dl.search.optuna_trials`).

    space = {"learning_rate": dl.search.LogUniform(1e-3, 0.3),
             "weight_decay": dl.search.LogUniform(1e-6, 1e-2)}
    result = dl.search.successive_halving(config, space, "workdirs/asha", num_slots=8)
    result.trials[result.best]   # hyperparameters, validation metric, test metric

or, with the space in the experiment's file (a `get_search_space()` beside `get_config()`):

    python -m dl.cli.search --config experiments/search_digits_mlp.py --workdir workdirs/asha \
        --algorithm asha

Hyperparameters that change shapes (`"model.width": Choice((64, 128))`) make groups: `run`
searches each combination as its own population (one compiled program per group).

Every algorithm trains K slots for the config's number of steps: the same budget of
training steps. Trials start from the same initial state (`config.fit.seed`) and see the data in
the same order, so they differ only in their hyperparameters. The chosen trial is the best
on validation (its metric at its last evaluation); the test split is scored once, for it
alone. A search resumes from its checkpoints after any interruption, kill -9 included, and
takes the same decisions: its records travel in every checkpoint. The workdir holds the
population's checkpoints and `metrics.jsonl`, `trials.csv` and `trials.jsonl` (one row per
trial), `trials.png` (validation metric against each trial's training steps) and, for PBT,
`schedules.png` (each member's hyperparameters over time).
"""

import csv
import dataclasses
import functools
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dl.core import distributed
from dl.recipes import config as config_lib
from dl.recipes import from_config
from dl.search import space as space_lib
from dl.search.asha import SuccessiveHalving
from dl.search.optuna_trials import OptunaTrials
from dl.search.pbt import PopulationBasedTraining
from dl.search.population import Search, Slots
from dl.search.space import SEARCHABLE, Choice, LogUniform, Space, Uniform, grid, sample
from dl.training import loop

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
  """

  trials: list[dict[str, Any]]
  best: int
  metric: str
  mode: str
  state: Any
  chosen_state: Any


def random_search(
  config,
  space: Space,
  workdir: str,
  *,
  num_trials: int = 8,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
) -> SearchResult:
  """Trains `num_trials` draws from `space` as one population and picks one on validation.

  Args:
    config: what `dl.train` takes (its `fit.sweep` must be empty; the search sets it).
    space: {hyperparameter: LogUniform | Uniform | Choice}; names from `SEARCHABLE`.
    workdir: the population's checkpoints, metrics, trial table and plot. A search resumes
      from its checkpoints, like `dl.train`.
    num_trials: trials in the population.
    seed: the search's seed (draws); `config.fit.seed` seeds the init and data order of all.
    metric: validation metric to choose by (default: the objective's, e.g. "accuracy").
    score_test: score the chosen trial on test (False where the caller chooses among
      several searches and scores its own choice once).

  Returns:
    A `SearchResult`; also written to `workdir/trials.csv`, `trials.jsonl`, `trials.png`.
  """
  trials = sample(space, num_trials, seed)
  return train_trials(
    config, trials, workdir, metric=metric, title="random search", score_test=score_test
  )


def train_trials(
  config,
  trials: Sequence[Mapping[str, float]],
  workdir: str,
  *,
  metric: str = "",
  title: str = "",
  score_test: bool = True,
) -> SearchResult:
  """Trains `trials` ([{hyperparameter: value}], e.g. from `sample` or `grid`) as one
  population, chooses one on validation and scores it once on test (see `random_search`)."""
  names = sorted(trials[0]) if trials else []
  if any(sorted(t) != names for t in trials):
    raise ValueError(f"every trial needs the same hyperparameters {names}; got {list(trials)}.")

  def make(slots, metric, mode, num_steps, eval_every):
    return Search(slots, trials, metric, mode, num_steps), eval_every, num_steps

  return _search(
    config, workdir, names, len(trials), make, metric, title or "search", score_test=score_test
  )


def successive_halving(
  config,
  space: Space,
  workdir: str,
  *,
  num_slots: int = 8,
  min_steps: int = 0,
  reduction_factor: int = 3,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
) -> SearchResult:
  """ASHA: trials stopped at rungs by validation, their slots refilled (`dl.search.asha`).

  Args:
    config: as for `random_search`.
    space: as for `random_search`.
    workdir: as for `random_search`.
    seed: as for `random_search`.
    metric: as for `random_search`.
    score_test: as for `random_search`.
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

  return _search(
    config, workdir, sorted(space), num_slots, make, metric, "ASHA", score_test=score_test
  )


def population_based_training(
  config,
  space: Space,
  workdir: str,
  *,
  num_slots: int = 8,
  fraction: float = 0.25,
  resample_probability: float = 0.25,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
) -> SearchResult:
  """PBT: at each evaluation the worst members copy the best and perturb (`dl.search.pbt`).

  Args:
    config: as for `random_search`; the config's evaluation interval is PBT's
      (config.fit.eval_every, else once per epoch).
    space: as for `random_search`.
    workdir: as for `random_search`.
    seed: as for `random_search`.
    metric: as for `random_search`.
    score_test: as for `random_search`.
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

  return _search(
    config, workdir, sorted(space), num_slots, make, metric, "PBT", score_test=score_test
  )


def optuna_search(
  config,
  space: Space,
  workdir: str,
  *,
  sampler: str = "tpe",
  num_slots: int = 8,
  num_rounds: int = 4,
  seed: int = 0,
  metric: str = "",
  score_test: bool = True,
) -> SearchResult:
  """Optuna's TPE or CMA-ES, `num_slots` trials asked at a time (`dl.search.optuna_trials`).

  Args:
    config: as for `random_search`.
    space: as for `random_search`.
    workdir: as for `random_search`.
    seed: as for `random_search`.
    metric: as for `random_search`.
    score_test: as for `random_search`.
    sampler: "tpe" or "cmaes".
    num_slots: trials asked for, and trained, at once.
    num_rounds: batches of trials; each trains the run's steps / num_rounds steps (its
      learning-rate schedule spans them), so the search trains num_slots * num_rounds
      trials in the budget of num_slots full runs.

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

  return _search(
    config,
    workdir,
    sorted(space),
    num_slots,
    make,
    metric,
    f"Optuna {sampler}",
    steps_per_trial=lambda num_steps: num_steps // num_rounds,
    score_test=score_test,
  )


def run(
  config,
  space: Space,
  workdir: str,
  algorithm: str,
  *,
  num_slots: int = 8,
  seed: int = 0,
  score_test: bool = True,
) -> SearchResult:
  """The search `algorithm` (one of `ALGORITHMS`) with its defaults: the command line's.

  Hyperparameters that change shapes (`"model.width"`, `"model.depth"`, any `"model.*"`
  field, each a `Choice`) split the search into groups: every combination of their values is
  its own population (one compiled program each, in `workdir/group<i>`), searched with
  `algorithm` and the rest of the space. The trial best on validation over all groups is
  scored once on test; `workdir/trials.csv` and `trials.jsonl` hold every group's trials.
  """
  shapes = {name: dist for name, dist in space.items() if name.startswith("model.")}
  if shapes:
    return _grouped(config, space, workdir, algorithm, num_slots=num_slots, seed=seed)
  kwargs = {"seed": seed, "score_test": score_test}
  if algorithm == "random":
    return random_search(config, space, workdir, num_trials=num_slots, **kwargs)
  if algorithm == "asha":
    return successive_halving(config, space, workdir, num_slots=num_slots, **kwargs)
  if algorithm == "pbt":
    return population_based_training(config, space, workdir, num_slots=num_slots, **kwargs)
  if algorithm in ("tpe", "cmaes"):
    return optuna_search(config, space, workdir, sampler=algorithm, num_slots=num_slots, **kwargs)
  raise ValueError(f"unknown search algorithm {algorithm!r}; expected one of {ALGORITHMS}.")


def _grouped(config, space: Space, workdir: str, algorithm: str, **kwargs) -> SearchResult:
  """`run` once per combination of the shape hyperparameters; the best scored once on test."""
  c = config_lib.parse_config(config)
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
    model = {**c.model, **{name.removeprefix("model."): value for name, value in group.items()}}
    group_config = dataclasses.replace(c, model=model)
    result = run(
      group_config, rest, os.path.join(workdir, f"group{i}"), algorithm, score_test=False, **kwargs
    )
    found.append((group_config, result))
    rows += [{"group": i, **group, **row, "chosen": False} for row in result.trials]
  best_group = max(range(len(found)), key=lambda g: _chosen_score(found[g][1]))
  group_config, result = found[best_group]
  best = next(
    j for j, row in enumerate(rows) if row["group"] == best_group and row["trial"] == result.best
  )
  rows[best]["chosen"] = True
  built = from_config.build(group_config)
  if built.test is not None:
    test = built.evaluate(result.chosen_state, "test", group_config.fit.eval_batch_size)
    rows[best] |= {f"test_{k}": float(v) for k, v in test.items()}
  if distributed.is_primary():
    _write_table(workdir, rows)
  return SearchResult(rows, best, result.metric, result.mode, result.state, result.chosen_state)


def _chosen_score(result: SearchResult) -> float:
  """The chosen trial's validation metric, higher is better."""
  value = result.trials[result.best][f"validation_{result.metric}"]
  return value if result.mode == "max" else -value


def _search(
  config,
  workdir: str,
  names,
  num_slots: int,
  make,
  metric: str,
  title: str,
  steps_per_trial=None,
  score_test: bool = True,
):
  """Builds the parts, trains the population with the algorithm's hook, scores the chosen.

  `steps_per_trial(num_steps)`, when given, is the length of every trial: the optimizer's
  schedule is built for it.
  """
  c = config_lib.parse_config(config)
  if c.fit.sweep or c.fit.ensemble_size > 1:
    raise ValueError(
      "a search sets the population itself: leave config.fit.sweep and "
      f"config.fit.ensemble_size unset (got {dict(c.fit.sweep)}, {c.fit.ensemble_size})."
    )
  if num_slots < 2:
    raise ValueError(f"a search trains 2 or more trials as one population; got {num_slots}.")
  space_lib.check_names(names)
  injected = tuple(n for n in names if n not in ("learning_rate", "weight_decay"))
  c = dataclasses.replace(
    c, injected_hyperparams=tuple(sorted({*c.injected_hyperparams, *injected}))
  )
  with distributed.primary_first("dl.search: data prepared"):
    built = from_config.build(c)
  fit_config = from_config.fit_config(c, built)
  if steps_per_trial:
    trial_steps = steps_per_trial(fit_config.num_steps)
    trial_fit = dataclasses.replace(c.fit, num_steps=max(trial_steps, 1))
    built = from_config.build(dataclasses.replace(c, fit=trial_fit))
  metric = metric or built.objective.select
  mode = built.mode(metric)
  slots = Slots(names, functools.partial(built.init, fit_config.seed))
  eval_every = fit_config.eval_every or len(built.train) // fit_config.batch_size
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
  population = dataclasses.replace(built, test=None)
  hooks = [*from_config.hooks(c, built), hook]
  state, _ = loop.fit(population, workdir, fit_config, hooks=hooks)
  best, chosen_state = hook.chosen(state)
  rows = _rows(hook, metric)
  if built.test is not None and score_test:
    test = built.evaluate(chosen_state, "test", fit_config.eval_batch_size)
    rows[best] |= {f"test_{k}": float(v) for k, v in test.items()}
  if distributed.is_primary():
    _write(workdir, rows, best, hook, metric, f"{title}: {num_slots} slots, one population")
  return SearchResult(rows, best, metric, mode, state, chosen_state)


_HIDDEN = ("hparams", "curve", "system_attrs", "value", "validation", "best_validation")


def _rows(hook: Search, metric: str) -> list[dict[str, Any]]:
  """One row per trial: hyperparameters, steps, validation metric, the algorithm's fields."""
  return [
    {"trial": t["trial"], **t["hparams"], "steps": t["steps"]}
    | {f"validation_{metric}": t["validation"], f"best_validation_{metric}": t["best_validation"]}
    | {k: v for k, v in t.items() if k not in _HIDDEN and k not in ("trial", "steps")}
    for t in hook.trials
  ]


def _write(workdir: str, rows, best: int, hook: Search, metric: str, title: str) -> None:
  _write_table(workdir, [{**row, "chosen": i == best} for i, row in enumerate(rows)])
  _plot_trials(hook, best, metric, title, os.path.join(workdir, "trials.png"))
  if isinstance(hook, PopulationBasedTraining):
    _plot_schedules(hook, os.path.join(workdir, "schedules.png"))


def _write_table(workdir: str, rows: list[dict[str, Any]]) -> None:
  """`trials.jsonl` and `trials.csv`: one row per trial."""
  with open(os.path.join(workdir, "trials.jsonl"), "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(os.path.join(workdir, "trials.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _plot_trials(hook: Search, best: int, metric: str, title: str, path: str) -> None:
  """Validation `metric` against each trial's own training steps; the chosen one bold."""
  fig = Figure(figsize=(7, 4.5))  # a bare Figure: headless, the user's backend left alone
  ax = fig.subplots()
  many = len(hook.trials) > 12
  for trial in hook.trials:
    if not trial["curve"]:
      continue
    steps, values = np.array([c[1] for c in trial["curve"]]), [c[2] for c in trial["curve"]]
    chosen = trial["trial"] == best
    label = ", ".join(f"{k}={v:.3g}" for k, v in trial["hparams"].items())
    ax.plot(
      steps,
      values,
      "o-" if chosen else "-",
      color="black" if chosen else None,
      linewidth=2.5 if chosen else 1.0,
      alpha=1.0 if chosen else 0.5,
      label=f"{label} (chosen)" if chosen else (None if many else label),
    )
  ax.set_xlabel("training steps of the trial")
  ax.set_ylabel(f"validation {metric}")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _plot_schedules(hook: PopulationBasedTraining, path: str) -> None:
  """Each PBT member's hyperparameters over the run's steps, one panel per hyperparameter."""
  names = list(hook.slots.names)
  fig = Figure(figsize=(7, 2.6 * len(names)))
  axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
  for slot, points in hook.schedules().items():
    steps = [p[0] for p in points] + [hook.num_steps]
    for ax, name in zip(axes, names):
      values = [p[1][name] for p in points]
      ax.step(steps, values + values[-1:], where="post", label=f"member {slot}")
  for ax, name in zip(axes, names):
    ax.set_ylabel(name)
    if isinstance(hook.space[name], LogUniform):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0].set_title("PBT: each member's hyperparameters over time")
  axes[0].legend(fontsize=7, ncol=4)
  axes[-1].set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


__all__ = [
  "ALGORITHMS",
  "SEARCHABLE",
  "Choice",
  "LogUniform",
  "OptunaTrials",
  "PopulationBasedTraining",
  "Search",
  "SearchResult",
  "Slots",
  "Space",
  "SuccessiveHalving",
  "Uniform",
  "grid",
  "optuna_search",
  "population_based_training",
  "random_search",
  "run",
  "sample",
  "successive_halving",
  "train_trials",
]
