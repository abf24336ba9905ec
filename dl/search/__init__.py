"""Hyperparameter search whose trials train together, as one population.

Imports every floor below it, recipes included (a config is one way to give it parts).

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

A config is one way in; a task factory is the other: a callable that takes the population's
shape hyperparameters (a dict, {} for none) and returns a `dl.Task` (from `dl.task`, the
user's own model, objective, optimizer and data), with a `dl.FitConfig` for the loop. Its
optimizer injects the searched hyperparameters, which each slot gets in its own state:

    def make_task(hparams):
      tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
      return dl.task(model=MyModel(), objective=my_objective, optimizer=tx, train=arrays)

    result = dl.search.random_search(make_task, space, "workdirs/mine", num_trials=4,
                                     fit=dl.FitConfig(num_steps=500, batch_size=64))

or, with the space in the experiment's file (a `get_search_space()` beside `get_config()`):

    python -m dl.cli.search --config experiments/search_digits_mlp.py --workdir workdirs/asha \
        --algorithm asha

Hyperparameters that change shapes (`"model.width": Choice((64, 128))`) make groups: `run`
searches each combination as its own population (one compiled program per group).

Every algorithm trains K slots for the run's number of steps: the same budget of
training steps. Trials start from the same initial state (the run's `fit.seed`) and see the data in
the same order, so they differ only in their hyperparameters. The chosen trial is the best
on validation (its metric at its last evaluation); the test split is scored once, for it
alone. A search resumes from its checkpoints after any interruption, kill -9 included, and
takes the same decisions: its records travel in every checkpoint. The workdir holds the
population's checkpoints and `metrics.jsonl`, `trials.csv` and `trials.jsonl` (one row per
trial), `trials.png` (validation metric against each trial's training steps) and, for PBT,
`schedules.png` (each member's hyperparameters over time).
"""

from dl.search.api import (
  ALGORITHMS,
  SearchResult,
  optuna_search,
  population_based_training,
  random_search,
  run,
  successive_halving,
  train_trials,
)
from dl.search.asha import SuccessiveHalving
from dl.search.optuna_trials import OptunaTrials
from dl.search.parts import TaskFactory
from dl.search.pbt import PopulationBasedTraining
from dl.search.population import Search, Slots
from dl.search.space import SEARCHABLE, Choice, LogUniform, Space, Uniform, grid, sample

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
  "TaskFactory",
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
