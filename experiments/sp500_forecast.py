r"""Market forecasting on `sp500` (river's ten S&P 500 stocks, 2013-2018): next-day return of
their equal-weighted portfolio from the last 5 days of the ten returns, walk-forward.

Expanding window: 6 folds, each testing on the next 125 trading days (about half a year)
after training on every day before them (503 days in the first fold); every fold refits its
models from scratch and standardises inputs by its own training days only. Forecasts: MLPs
(dl.train, regression; 5 seeds as one vmapped ensemble, their mean forecast), scikit-learn's
RidgeCV (its alpha chosen on the training days), and three naive baselines: zero return
(tomorrow's price = today's), the historical mean return of the training days, and
persistence (tomorrow's portfolio return = today's). Writes results.md to --workdir.

python experiments/sp500_forecast.py --workdir workdirs/sp500_forecast

get_config() alone (one MLP: first 80% of days, evaluated on the last 20%):
python -m dl.cli.train --config experiments/sp500_forecast.py --workdir workdirs/sp500_mlp
"""

import argparse
import os
import time

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import dl
from dl.apps import forecasting


def get_config():
  config = dl.default_config()
  config.dataset = "sp500"
  config.objective = "regression"
  config.train_split = "train[:80%]"  # time order: the last 20% of days come after
  config.validation_split = "train[80%:]"
  config.test_split = ""  # sp500 has one split; the study's folds test out of sample
  config.model.name = "mlp"
  config.model.width = 32
  config.model.depth = 1
  config.model.dropout = 0.2
  config.fit.batch_size = 32
  config.fit.num_epochs = 20
  config.learning_rate = 1e-3
  config.weight_decay = 1e-2
  config.fit.best_metric = "loss"
  config.fit.best_mode = "min"
  config.fit.log_every = 25
  return config


def baselines(folds, dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Each peer's and naive baseline's forecasts over all test blocks, with the targets."""
  forecasts = {"RidgeCV (scikit-learn)": [], "persistence": [], "targets": []}
  for fold in folds:
    train, test = dl.data.load(dataset, fold.train), dl.data.load(dataset, fold.test)
    x_train, x_test = (a["features"].reshape(len(a["features"]), -1) for a in (train, test))
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))
    ridge.fit(x_train, train["label"])
    forecasts["RidgeCV (scikit-learn)"].append(ridge.predict(x_test))
    forecasts["persistence"].append(test["features"][:, -1, :].mean(axis=1))  # today's return
    forecasts["targets"].append(test["label"])
  return {k: np.concatenate(v).astype(np.float64) for k, v in forecasts.items()}


def table(targets_N, forecasts: dict[str, np.ndarray]) -> str:
  lines = [
    "| forecast | MAE | RMSE | directional accuracy |",
    "|---|---|---|---|",
  ]
  for name, predictions_N in forecasts.items():
    s = forecasting.scores(targets_N, predictions_N)
    direction = (
      "n/a (no direction)"
      if np.isnan(s["direction_accuracy"])
      else (f"{s['direction_accuracy']:.2%}")
    )
    lines.append(f"| {name} | {s['mae']:.4f} | {s['rmse']:.4f} | {direction} |")
  return "\n".join(lines)


def _fold_rmse(result, predictions_N, fold: int) -> float:
  at = result.fold_N == fold
  return forecasting.scores(result.targets_N[at], predictions_N[at])["rmse"]


def run(config, workdir: str, num_folds: int, test_size: int) -> str:
  """Walk-forward MLPs, the ridge peer and the naive baselines; writes results.md."""
  num_examples = forecasting.num_examples(config.dataset)
  folds = forecasting.walk_forward_folds(num_examples, num_folds=num_folds, test_size=test_size)
  start = time.perf_counter()
  result = forecasting.walk_forward(config, folds, workdir)
  seconds = time.perf_counter() - start
  peers = baselines(folds, config.dataset)
  np.testing.assert_allclose(peers.pop("targets"), result.targets_N, rtol=1e-6)
  forecasts = {
    f"MLP 32, dl.train (mean of {result.member_predictions_SxN.shape[0]} seeds)": (
      result.predictions_N
    ),
    "MLP 32, seed 0 alone": result.member_predictions_SxN[0],
    "RidgeCV (scikit-learn)": peers["RidgeCV (scikit-learn)"],
    "zero return (random walk)": np.zeros_like(result.targets_N),
    "historical mean of the training days": result.train_means_N,
    "persistence (today's return)": peers["persistence"],
  }
  mlp, mean = result.predictions_N, result.train_means_N
  wins = sum(_fold_rmse(result, mlp, k) < _fold_rmse(result, mean, k) for k in range(len(folds)))
  up_days = np.mean(result.targets_N > 0)
  text = table(result.targets_N, forecasts) + (
    f"\n\n{len(folds)} folds x {test_size} test days = {len(result.targets_N)} out-of-sample "
    f"days ({folds[0].test} .. {folds[-1].test}), expanding window from "
    f"{len(folds[0].train_range)} training days; returns in percent; {up_days:.2%} of test days "
    f"were up. The MLP ensemble's RMSE is below the historical mean's in {wins} of "
    f"{len(folds)} folds. MLP walk-forward wall time {seconds:.0f} s (all folds, with "
    "compilation)."
  )
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/sp500_forecast")
  parser.add_argument("--seeds", type=int, default=5, help="MLPs per fold, one vmapped ensemble")
  parser.add_argument("--folds", type=int, default=6)
  parser.add_argument("--test_size", type=int, default=125, help="trading days per test block")
  parser.add_argument("--tiny", action="store_true", help="2 folds, a few steps, for tests")
  args = parser.parse_args(argv)
  config = get_config()
  config.fit.ensemble_size = args.seeds
  config.fit.progress = False
  if args.tiny:
    args.folds, args.test_size = 2, 20
    config.fit.num_steps = 4
    config.fit.eval_every = 4
    config.fit.log_every = 2
    config.fit.tensorboard = False
  os.makedirs(args.workdir, exist_ok=True)
  print(run(config, args.workdir, args.folds, args.test_size), flush=True)


if __name__ == "__main__":
  main()
