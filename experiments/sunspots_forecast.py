r"""One-step-ahead forecasts of yearly sunspot numbers: LSTM and GRU against classical baselines.

One LSTM run (regression on 12-year windows; eval records hold mse/mae/rmse in scaled units):
python -m dl.cli.train --config experiments/sunspots_forecast.py --workdir workdirs/sunspots_lstm

The comparison of experiments/results_forecast.md (+ results_forecast.png), in one run:
python experiments/sunspots_forecast.py --workdir workdirs/sunspots_forecast --seeds 3

Every forecaster sees the same thing: the 12 previous years, all inside the held-out segment
(test: 1969-2008, so targets 1981-2008). The networks train on the train windows (1700-1928);
The checkpoint with the lowest validation loss (windows of 1929-1968) forecasts.
AutoReg (lags chosen by AIC up to 12) and ARIMA(2,0,1) are fitted on the same train years and
then filtered over the test segment with their parameters fixed (`results.apply`), giving
one-step-ahead forecasts; persistence predicts last year's value. MAE and RMSE are in
sunspot numbers, on the test targets.
"""

import argparse
import os
import time

import numpy as np
import sklearn.metrics
from matplotlib.figure import Figure
from statsmodels.tsa.ar_model import ar_select_order
from statsmodels.tsa.arima.model import ARIMA

import dl

ARIMA_ORDER = (2, 0, 1)


def get_config():
  config = dl.default_config()
  config.dataset = "sunspots"
  config.objective = "regression"
  config.model.name = "series_rnn"
  config.model.cell = "lstm"
  config.model.hidden = 32
  config.fit.batch_size = 16
  config.fit.num_epochs = 60
  config.learning_rate = 3e-3
  config.weight_decay = 1e-4
  config.fit.best_metric = "loss"
  config.fit.best_mode = "min"
  config.fit.log_every = 13
  config.fit.eval_every = 130
  config.fit.eval_batch_size = 64
  return config


def _split(name: str, split: str, data_dir: str | None) -> dict[str, np.ndarray]:
  """A split's windows in time order."""
  arrays = dl.data.load(name, split, data_dir=data_dir)
  order = np.argsort(arrays["year"])
  return {key: value[order] for key, value in arrays.items()}


def _series(windows: dict[str, np.ndarray]) -> np.ndarray:
  """The contiguous segment the (time-ordered) windows were cut from."""
  return np.concatenate([windows["features"][0], windows["label"]]).astype(np.float64)


def _classical_forecasts(train: np.ndarray, test: np.ndarray, window: int) -> dict[str, np.ndarray]:
  """One-step-ahead forecasts of test[window:] by models fitted on `train` only."""
  autoreg = ar_select_order(train, maxlag=window, ic="aic", trend="c").model.fit()
  arima = ARIMA(train, order=ARIMA_ORDER, trend="c").fit()
  lags = len(autoreg.ar_lags)
  return {
    "persistence": test[window - 1 : -1],
    f"AutoReg({lags}), AIC-selected": autoreg.apply(test).predict()[window:],
    f"ARIMA{ARIMA_ORDER}": arima.apply(test).predict()[window:],
  }


def _network_forecasts(args, test_inputs: np.ndarray) -> dict[str, list[np.ndarray]]:
  """Scaled test forecasts of each cell, one per seed, trained on the train windows."""
  forecasts = {}
  for cell in args.cells:
    config = get_config()
    config.model.cell = cell
    config.fit.progress = False
    if args.steps:
      config.fit.num_steps = args.steps
      config.fit.eval_every = args.steps
    name = f"{cell.upper()} (hidden {config.model.hidden})"
    forecasts[name] = []
    for seed in range(args.seeds):
      config.fit.seed = seed
      start = time.perf_counter()
      workdir = os.path.join(args.workdir, f"{cell}_seed{seed}")
      dl.train(config, workdir)
      state = dl.restore(config, workdir, step="best")  # chosen on the validation windows
      forecasts[name].append(dl.predict(dl.build(config), state, test_inputs)[:, 0])
      print(f"{cell} seed {seed}: trained in {time.perf_counter() - start:.0f} s", flush=True)
  return forecasts


def _table(truth: np.ndarray, forecasts: dict[str, list[np.ndarray]]) -> list[str]:
  """Markdown rows; a forecaster with several seeds shows the mean and (min-max)."""
  rows = ["| forecaster | MAE | RMSE |", "|---|---|---|"]
  for name, runs in forecasts.items():
    mae = [sklearn.metrics.mean_absolute_error(truth, f) for f in runs]
    rmse = [sklearn.metrics.root_mean_squared_error(truth, f) for f in runs]
    rows.append(f"| {name} | {_summary(mae)} | {_summary(rmse)} |")
  return rows


def _summary(values: list[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _plot(years: np.ndarray, truth: np.ndarray, forecasts: dict[str, np.ndarray], path: str):
  fig = Figure(figsize=(9, 4))
  ax = fig.add_subplot()
  ax.plot(years, truth, "k-o", label="observed", linewidth=2, markersize=3)
  for name, forecast in forecasts.items():
    ax.plot(years, forecast, label=name, alpha=0.8)
  ax.set_xlabel("year")
  ax.set_ylabel("mean sunspot number")
  ax.set_title("One-step-ahead forecasts on the held-out years")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/sunspots_forecast")
  parser.add_argument("--out", default="experiments/results_forecast.md")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--cells", nargs="+", default=["lstm", "gru"])
  parser.add_argument("--seeds", type=int, default=3, help="seeds per network (0, 1, ...)")
  parser.add_argument("--steps", type=int, default=0, help="train steps (0: the config's)")
  args = parser.parse_args()
  train, test = (_split("sunspots", s, args.data_dir) for s in ("train", "test"))
  meta = dl.data.loading.builder_info("sunspots", data_dir=args.data_dir).metadata
  mean, std, window = meta["mean"], meta["std"], meta["window"]
  scaled = {k: [f] for k, f in _classical_forecasts(_series(train), _series(test), window).items()}
  scaled |= _network_forecasts(args, test["features"])
  forecasts = {name: [f * std + mean for f in runs] for name, runs in scaled.items()}
  truth = test["label"] * std + mean
  table = _table(truth, forecasts)
  print("\n".join(table))
  png = os.path.splitext(args.out)[0] + ".png"
  _plot(test["year"], truth, {name: runs[0] for name, runs in forecasts.items()}, png)
  _write(args, table, test["year"], png)


def _write(args, table: list[str], years: np.ndarray, png: str) -> None:
  header = [
    "# Sunspots: one-step-ahead forecasts",
    "",
    f"Command: `python experiments/sunspots_forecast.py --workdir {args.workdir} "
    f"--seeds {args.seeds}"
    + (f" --steps {args.steps}`" if args.steps else "`")
    + f". Networks: seeds 0-{args.seeds - 1}, mean (min-max); the plot shows seed 0. "
    "Machine: 2-core x86_64 CPU, no accelerator.",
    "",
    f"Held-out targets: {int(years[0])}-{int(years[-1])} ({len(years)} years), each forecast "
    "from the 12 years before it, all inside the test segment 1969-2008. Trained or fitted on "
    "1700-1928 only; the networks' checkpoint is the one with the lowest loss on the "
    "validation windows (1929-1968). Errors in sunspot numbers.",
    "",
  ]
  with open(args.out, "w") as f:
    f.write("\n".join([*header, *table, "", f"![forecasts]({os.path.basename(png)})", ""]))


if __name__ == "__main__":
  main()
