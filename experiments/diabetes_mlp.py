r"""MLP regression on `diabetes` (scikit-learn; 353 train (318 + 35 validation) / 89 test,
10 features, float target).

python -m dl.cli.train --config experiments/diabetes_mlp.py --workdir workdirs/diabetes_mlp

The target (disease progression, 25 to 346) is predicted in its own units; the eval records
hold mse, mae and rmse. The best checkpoint is the lowest validation loss. Its peers, fitted on
the same 318 training rows and scored on the same test split:

python experiments/diabetes_mlp.py
"""

import json

import numpy as np
from sklearn.linear_model import LinearRegression

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "diabetes"
  config.objective = "regression"
  config.model.name = "mlp"
  config.model.width = 16
  config.model.depth = 1
  config.fit.batch_size = 32
  config.fit.num_epochs = 100
  config.learning_rate = 1e-2
  config.weight_decay = 1e-3
  config.fit.log_every = 11
  config.fit.eval_every = 110
  return config


def baselines() -> dict[str, dict[str, float]]:
  """Test RMSE and MAE of linear regression and of the train mean, on the MLP's rows."""
  task = dl.build(get_config())
  train, test = task.train.arrays, task.test
  linear = LinearRegression().fit(train["input"], train["label"])
  forecasts = {
    "linear_regression": linear.predict(test["input"]),
    "train_mean": np.full(len(test["label"]), train["label"].mean()),
  }
  errors = {name: f - test["label"] for name, f in forecasts.items()}
  return {
    name: {"rmse": float(np.sqrt(np.mean(e**2))), "mae": float(np.mean(np.abs(e)))}
    for name, e in errors.items()
  }


if __name__ == "__main__":
  print(json.dumps(baselines()))
