r"""MLP regression on `diabetes` (scikit-learn; 353 train / 89 test, 10 features, float target).

python -m dl.cli.train --config experiments/diabetes_mlp.py --workdir workdirs/diabetes_mlp

The target (disease progression, 25 to 346) is predicted in its own units; the eval records
hold mse, mae and rmse. The best checkpoint is the lowest eval loss.
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "diabetes"
  config.objective = "regression"
  config.model.name = "mlp"
  config.model.width = 16
  config.model.depth = 1
  config.batch_size = 32
  config.num_epochs = 100
  config.learning_rate = 1e-2
  config.weight_decay = 1e-3
  config.log_every_steps = 11
  config.eval_every_steps = 110
  return config
