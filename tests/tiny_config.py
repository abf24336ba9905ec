"""The tests' tiny config: a file, so the command line can load it too."""

import dl


def tiny_config(**overrides):
  """A config that trains a small MLP on digits in about a second (~90% test accuracy)."""
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 32
  config.model.depth = 1
  config.batch_size = 32
  config.num_train_steps = 40
  config.learning_rate = 3e-2
  config.log_every_steps = 10
  config.eval_every_steps = 20
  config.progress = False
  config.tensorboard = False
  for key, value in overrides.items():
    config[key] = value
  return config


def get_config():
  return tiny_config()
