"""Hyperparameter search whose trials train together, as one population.

dl trains K models that differ in their injected hyperparameters (`optax.inject_hyperparams`:
the learning rate and the weight decay of every optimizer `dl.training.optim` builds) as one
`jax.vmap`ped program (`FitConfig.sweep`). A search draws K trials from a space and trains
them as such a population: one compilation, one pass over the data per step for all trials.

    space = {"learning_rate": dl.search.LogUniform(1e-3, 0.3),
             "weight_decay": dl.search.LogUniform(1e-6, 1e-2)}
    result = dl.search.random_search(config, space, "workdirs/search", num_trials=8)
    result.trials[result.best]   # hyperparameters, validation metric, test metric

or, with the space in the experiment's file (a `get_search_space()` beside `get_config()`):

    python -m dl.search --config experiments/search_digits_mlp.py --workdir workdirs/search

Trials share the init seed and the data order of `config.seed`, so they differ only in
their hyperparameters. The best trial is chosen on validation data (its metric at the last
step); the test split is scored once, for that trial alone. The workdir holds the population's
checkpoints and `metrics.jsonl` (one value per trial), `trials.csv` and `trials.jsonl` (one
row per trial) and `trials.png` (validation metric against training steps, every trial).

`grid` lays out today's grid as trials for `train_trials`, trained the same way. Random search
and grids are what is here; successive halving, population-based training and Optuna's
samplers are to come.
"""

import csv
import dataclasses
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from dl import config as config_lib
from dl import distributed, from_config
from dl.training import loop

# Hyperparameters that live in the state as arrays: every optimizer dl builds injects these.
SEARCHABLE = ("learning_rate", "weight_decay")


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """Values whose logarithm is uniform on [log(low), log(high)] (rates, decays)."""

  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low < self.high:
      raise ValueError(f"LogUniform needs 0 < low < high; got low={self.low}, high={self.high}.")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))


@dataclasses.dataclass(frozen=True)
class Uniform:
  """Values uniform on [low, high]."""

  low: float
  high: float

  def __post_init__(self):
    if not self.low < self.high:
      raise ValueError(f"Uniform needs low < high; got low={self.low}, high={self.high}.")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(self.low, self.high, n)


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `values`, each equally likely."""

  values: Sequence[float]

  def __post_init__(self):
    if not self.values:
      raise ValueError("Choice needs at least one value.")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.asarray(self.values, np.float64)[rng.integers(0, len(self.values), n)]


Space = Mapping[str, LogUniform | Uniform | Choice]


def sample(space: Space, num_trials: int, seed: int = 0) -> list[dict[str, float]]:
  """`num_trials` draws from `space`, the same for the same seed: [{name: value}, ...]."""
  _check_space(space)
  rng = np.random.default_rng(seed)
  columns = {name: space[name].sample(rng, num_trials) for name in sorted(space)}
  return [{name: float(v[i]) for name, v in columns.items()} for i in range(num_trials)]


@dataclasses.dataclass
class SearchResult:
  """What a search found.

  Attributes:
    trials: one dict per trial: "trial", its hyperparameters, "steps", "validation_<metric>"
      (at the last step), "best_validation_<metric>" (over evaluations), and for the chosen
      trial alone "test_<metric>" (scored once).
    best: index of the trial chosen on validation.
    metric: the validation metric that chose it; `mode` says whether higher ("max") is better.
    state: the population's final state (a leading trial axis on every leaf).
  """

  trials: list[dict[str, Any]]
  best: int
  metric: str
  mode: str
  state: Any


def random_search(
  config,
  space: Space,
  workdir: str,
  *,
  num_trials: int = 8,
  seed: int = 0,
  metric: str = "",
) -> SearchResult:
  """Trains `num_trials` draws from `space` as one population and picks one on validation.

  Args:
    config: what `dl.train` takes (its `sweep_*` fields must be empty; the search sets them).
    space: {hyperparameter: LogUniform | Uniform | Choice}; names from `SEARCHABLE`.
    workdir: the population's checkpoints, metrics, trial table and plot. A search resumes
      from its checkpoints, like `dl.train`.
    num_trials: trials in the population.
    seed: the search's seed (draws); `config.seed` seeds the init and data order of all.
    metric: validation metric to choose by (default: the objective's, e.g. "accuracy").

  Returns:
    A `SearchResult`; also written to `workdir/trials.csv`, `trials.jsonl`, `trials.png`.
  """
  trials = sample(space, num_trials, seed)
  return train_trials(config, trials, workdir, metric=metric, title="random search")


def grid(values: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
  """Every combination of `values` ({hyperparameter: values}), as trials for `train_trials`."""
  _check_names(values)
  names = sorted(values)
  return [
    dict(zip(names, map(float, combo))) for combo in itertools.product(*map(values.get, names))
  ]


def train_trials(
  config, trials: Sequence[Mapping[str, float]], workdir: str, *, metric: str = "", title: str = ""
) -> SearchResult:
  """Trains `trials` ([{hyperparameter: value}], e.g. from `sample` or `grid`) as one
  population, chooses one on validation and scores it once on test (see `random_search`)."""
  c = config_lib.parse(config)
  if c.sweep_learning_rate or c.sweep_weight_decay or c.ensemble_size > 1:
    raise ValueError(
      "a search sets the population itself: leave sweep_learning_rate, "
      f"sweep_weight_decay and ensemble_size unset (got {c.sweep_learning_rate}, "
      f"{c.sweep_weight_decay}, {c.ensemble_size})."
    )
  if len(trials) < 2:
    raise ValueError(f"a search trains 2 or more trials as one population; got {len(trials)}.")
  names = sorted(trials[0])
  _check_names(names)
  if any(sorted(t) != names for t in trials):
    raise ValueError(f"every trial needs the same hyperparameters {names}; got {list(trials)}.")
  with distributed.primary_first("dl.search: data prepared"):
    built = from_config.build(config)
  fit_config = dataclasses.replace(
    from_config.fit_config(config, built),
    sweep={name: tuple(t[name] for t in trials) for name in names},
  )
  # The test split is scored below, once, for the chosen trial only.
  population = dataclasses.replace(built, test=None)
  state, history = loop.fit(population, workdir, fit_config, hooks=from_config.hooks(config, built))
  metric = metric or built.objective.select
  mode = built.mode(metric)
  table = _table(trials, history, metric, mode, fit_config.num_steps)
  scores = [t[f"validation_{metric}"] for t in table]
  best = int(np.nanargmax(scores) if mode == "max" else np.nanargmin(scores))
  if built.test is not None:
    chosen = jax.tree.map(lambda x: x[best], state)
    test = built.evaluate(chosen, "test", fit_config.eval_batch_size)
    table[best] |= {f"test_{k}": float(v) for k, v in test.items()}
  if distributed.is_primary():
    title = f"{title or 'search'}: {len(table)} trials trained as one population"
    _write(workdir, table, best, history, metric, title)
  return SearchResult(table, best, metric, mode, state)


def _check_names(names) -> None:
  if not names:
    raise ValueError(f"the search space is empty; give one or more of {', '.join(SEARCHABLE)}.")
  for name in names:
    if name not in SEARCHABLE:
      raise ValueError(
        f"cannot search over {name!r}: the searchable hyperparameters are "
        f"{', '.join(SEARCHABLE)} (they live in the optimizer state as arrays)."
      )


def _check_space(space: Space) -> None:
  _check_names(space)
  for name, dist in space.items():
    if not isinstance(dist, LogUniform | Uniform | Choice):
      raise ValueError(
        f"the space's {name!r} is {dist!r}; expected dl.search.LogUniform, Uniform or Choice."
      )


def _table(drawn, history, metric: str, mode: str, steps: int) -> list[dict[str, Any]]:
  """One row per trial from the population's eval records (one value per trial)."""
  evals = [r for r in history["eval"] if metric in r]
  if not evals:
    raise ValueError(
      f"no validation records with {metric!r}: the search chooses on validation data; "
      "give the data a validation split (or validation_fraction) and an eval metric."
    )
  per_trial = np.array([np.atleast_1d(r[metric]) for r in evals], np.float64)  # (evals, trials)
  best_of = np.nanmax if mode == "max" else np.nanmin
  return [
    {
      "trial": i,
      **hparams,
      "steps": steps,
      f"validation_{metric}": float(per_trial[-1, i]),
      f"best_validation_{metric}": float(best_of(per_trial[:, i])),
    }
    for i, hparams in enumerate(drawn)
  ]


def _write(workdir: str, trials, best: int, history, metric: str, title: str) -> None:
  rows = [{**t, "chosen": i == best} for i, t in enumerate(trials)]
  with open(os.path.join(workdir, "trials.jsonl"), "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(os.path.join(workdir, "trials.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  _plot(history, metric, trials, best, title, os.path.join(workdir, "trials.png"))


def _plot(history, metric: str, trials, best: int, title: str, path: str) -> None:
  """Validation `metric` against training steps, one line per trial, the chosen one bold."""
  records = [r for r in history["eval"] if metric in r]
  steps = [r["step"] for r in records]
  values = np.array([np.atleast_1d(r[metric]) for r in records], np.float64)
  fig = Figure(figsize=(7, 4.5))  # a bare Figure: headless, the user's backend left alone
  ax = fig.subplots()
  names = [k for k in trials[0] if k in SEARCHABLE]
  for i, trial in enumerate(trials):
    label = ", ".join(f"{k}={trial[k]:.3g}" for k in names)
    chosen = i == best
    ax.plot(
      steps,
      values[:, i],
      "o-" if chosen else "-",
      linewidth=2.5 if chosen else 1.0,
      alpha=1.0 if chosen else 0.6,
      label=f"{label} (chosen)" if chosen else label,
    )
  ax.set_xlabel("training steps (each trial)")
  ax.set_ylabel(f"validation {metric}")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
