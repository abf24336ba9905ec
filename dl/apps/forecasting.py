"""Walk-forward evaluation of forecasts: fit on the past, test on the block that follows.

A time-ordered data set (e.g. `sp500`, whose split is stored in time order) is cut into
folds by scikit-learn's `TimeSeriesSplit`: fold k trains on examples before its test block
(all of them, an expanding window, or the last `max_train_size`, a rolling one) and tests
on the next `test_size`. `walk_forward` refits a fresh model per fold with `dl.train`, each
fold's inputs standardised by the statistics of that fold's training part alone (dl's
`normalize`), so no model or scaler ever sees a day after the one it forecasts from. Each
fold trains its configured number of steps with no validation hold-out (nothing is chosen:
the final model forecasts the block, scored once as the fold's test split).

  folds = dl.apps.forecasting.walk_forward_folds(1253, num_folds=6, test_size=125)
  result = dl.apps.forecasting.walk_forward(config, folds, "workdirs/wf")
  dl.apps.forecasting.scores(result.targets, result.predictions)  # {"mae", "rmse", ...}
"""

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dl import data as data_lib
from dl import inference
from dl.core import distributed
from dl.recipes import config as config_lib
from dl.recipes import from_config
from dl.training import loop, options
from dl.training.task import Task


@dataclasses.dataclass(frozen=True)
class Fold:
  """One walk-forward fold: TFDS split expressions and the example indices they hold.

  Attributes:
    train: e.g. "train[0:503]": the examples the model is fitted (and scaled) on.
    test: e.g. "train[503:628]": the block right after them, forecast out of sample.
    train_range: indices of `train` in the split's time order.
    test_range: indices of `test`.
  """

  train: str
  test: str
  train_range: range
  test_range: range


def walk_forward_folds(
  num_examples: int,
  *,
  num_folds: int,
  test_size: int,
  max_train_size: int | None = None,
  gap: int = 0,
  split: str = "train",
) -> list[Fold]:
  """Folds of a time-ordered split (scikit-learn's `TimeSeriesSplit`) as TFDS slices.

  Args:
    num_examples: examples in `split`, in time order.
    num_folds: number of test blocks; they tile the end of the split.
    test_size: examples per test block.
    max_train_size: None for an expanding window (all the past); else a rolling window of
      at most this many examples.
    gap: examples left out between a fold's training part and its test block (for labels
      that span several steps ahead).
    split: the split's name.

  Returns:
    The folds, oldest test block first.
  """
  from sklearn.model_selection import TimeSeriesSplit  # pylint: disable=import-outside-toplevel

  splitter = TimeSeriesSplit(
    n_splits=num_folds, test_size=test_size, max_train_size=max_train_size, gap=gap
  )
  folds = []
  for train_idx, test_idx in splitter.split(np.arange(num_examples)):
    train_range = range(int(train_idx[0]), int(train_idx[-1]) + 1)
    test_range = range(int(test_idx[0]), int(test_idx[-1]) + 1)
    folds.append(
      Fold(
        train=f"{split}[{train_range.start}:{train_range.stop}]",
        test=f"{split}[{test_range.start}:{test_range.stop}]",
        train_range=train_range,
        test_range=test_range,
      )
    )
  return folds


@dataclasses.dataclass(frozen=True)
class WalkForward:
  """Out-of-sample forecasts of every fold, concatenated in time order.

  Attributes:
    targets_N: the true values of all test blocks.
    predictions_N: the model's forecasts (mean over ensemble members).
    train_means_N: for each test example, the mean target of its fold's training part
      (the historical-mean forecast).
    fold_N: the fold each test example belongs to.
    member_predictions_SxN: each ensemble member's forecasts (S = 1 for one model).
  """

  targets_N: np.ndarray
  predictions_N: np.ndarray
  train_means_N: np.ndarray
  fold_N: np.ndarray
  member_predictions_SxN: np.ndarray


def walk_forward(
  source, folds: Sequence[Fold], workdir: str, *, fit: options.FitConfig | None = None
) -> WalkForward:
  """Refits a fresh model on each fold's training part and forecasts its test block.

  Args:
    source: a regression `dl` config (`objective="regression"`, a scalar float label) on a
      time-ordered data set, its `train_split`/`test_split` set per fold; or a task
      factory, `(fold) -> dl.Task` (e.g. `dl.task` on the user's arrays sliced by
      `fold.train_range` and `fold.test_range`, with `validation_fraction=0`), whose task
      holds its training arrays in memory and a test split with "input" and "label".
    folds: from `walk_forward_folds`.
    workdir: fold k trains in `workdir/fold<k>` (resumed if it holds checkpoints).
    fit: how the loop trains a factory's task (None: `dl.FitConfig()`); a config says it.

  Returns:
    The concatenated out-of-sample `WalkForward` forecasts.
  """
  if callable(source):
    train_fold = functools.partial(_fit_task, source, fit or options.FitConfig())
  elif fit is not None:
    raise ValueError(
      "a config says how the loop runs (its fit.num_steps, fit.batch_size, ...): pass fit only "
      f"with a task factory; got a config and fit={fit!r}."
    )
  else:
    train_fold = functools.partial(_fit_config, config_lib.parse_config(source))
  targets, members, means, fold_ids = [], [], [], []
  for k, fold in enumerate(folds):
    task, state = train_fold(fold, os.path.join(workdir, f"fold{k}"))
    outputs_SxN = member_outputs(task, state, task.test["input"])
    members.append(outputs_SxN.reshape(len(outputs_SxN), -1))
    targets.append(np.asarray(task.test["label"], np.float64).reshape(-1))
    means.append(np.full(len(targets[-1]), np.mean(task.train.arrays["label"], dtype=np.float64)))
    fold_ids.append(np.full(len(targets[-1]), k))
  member_predictions_SxN = np.concatenate(members, axis=1)
  return WalkForward(
    targets_N=np.concatenate(targets),
    predictions_N=member_predictions_SxN.mean(axis=0),
    train_means_N=np.concatenate(means),
    fold_N=np.concatenate(fold_ids),
    member_predictions_SxN=member_predictions_SxN,
  )


def _fit_config(c: config_lib.TrainConfig, fold: Fold, workdir: str) -> tuple[Task, Any]:
  """(task, final state) of the config trained on `fold`, the task built once."""
  fold_config = dataclasses.replace(c, **fold_splits(fold))
  with distributed.primary_first("dl.apps.forecasting: data prepared"):
    task = from_config.build(fold_config)
  fit = from_config.fit_config(fold_config, task)
  state, _ = loop.fit(task, workdir, fit, hooks=from_config.hooks(fold_config, task, workdir))
  return task, state


def _fit_task(factory, fit: options.FitConfig, fold: Fold, workdir: str) -> tuple[Task, Any]:
  """(task, final state) of the factory's task for `fold`."""
  task = factory(fold)
  if not isinstance(task, Task) or not isinstance(task.test, Mapping):
    raise TypeError(
      "a walk-forward task factory returns a dl.Task with test arrays (dl.task(..., test=...)); "
      f"got {type(task).__name__} with test {type(getattr(task, 'test', None)).__name__}."
    )
  state, _ = loop.fit(task, workdir, fit)
  return task, state


def fold_splits(fold: Fold) -> dict[str, object]:
  """The config fields that train on `fold.train` (no hold-out) and test on `fold.test`."""
  return {
    "train_split": fold.train,
    "validation_split": "",
    "validation_fraction": 0.0,
    "test_split": fold.test,
  }


def member_outputs(task, state, inputs) -> np.ndarray:
  """(S, N, ...) outputs of each ensemble member on preprocessed inputs (S = 1 for one model)."""

  def apply(params, model_state):
    return task.model.apply(params, model_state, {"input": inputs}, train=False)[0]

  if not inference.is_ensemble(state):
    return np.asarray(apply(state.params, state.model_state), np.float64)[None]
  return np.asarray(jax.jit(jax.vmap(apply))(state.params, state.model_state), np.float64)


def scores(targets_N: np.ndarray, predictions_N: np.ndarray) -> dict[str, float]:
  """MAE, RMSE and directional accuracy of forecasts.

  Args:
    targets_N: true values (e.g. next-day returns).
    predictions_N: forecasts of them.

  Returns:
    {"mae", "rmse", "direction_accuracy"}: the last is the fraction of examples whose
    forecast has the sign of the target (nan when every forecast is exactly 0, which has
    no direction; a zero forecast among others counts as wrong).
  """
  from sklearn import metrics  # pylint: disable=import-outside-toplevel  # (3 s to import)

  targets_N, predictions_N = np.asarray(targets_N), np.asarray(predictions_N)
  if targets_N.shape != predictions_N.shape or targets_N.ndim != 1:
    raise ValueError(
      f"targets and predictions must both be (N,); got {targets_N.shape} and {predictions_N.shape}."
    )
  direction = np.mean(np.sign(predictions_N) == np.sign(targets_N))
  return {
    "mae": float(metrics.mean_absolute_error(targets_N, predictions_N)),
    "rmse": float(metrics.root_mean_squared_error(targets_N, predictions_N)),
    "direction_accuracy": float(direction) if np.any(predictions_N) else float("nan"),
  }


def num_examples(dataset: str, split: str = "train", *, data_dir: str | None = None) -> int:
  """How many examples a data set's split (a plain split name) holds, e.g. to cut folds."""
  return data_lib.info(dataset, data_dir=data_dir).splits[split]
