"""The tests' tiny config: a file, so the command line can load it too."""

import dataclasses

import dl

FIT_FIELDS = {f.name for f in dataclasses.fields(dl.FitConfig)}


def tiny_config(**overrides):
  """A config that trains a small MLP on digits in about a second (~90% test accuracy).

  `overrides` set the config's fields; those of `dl.FitConfig` (`num_steps`, `batch_size`,
  ...) go to `config.fit`, and `fit={...}` updates several of them.
  """
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 32
  config.model.depth = 1
  config.fit.batch_size = 32
  config.fit.num_steps = 40
  config.learning_rate = 3e-2
  config.fit.log_every = 10
  config.fit.eval_every = 20
  config.fit.progress = False
  config.fit.tensorboard = False
  for key, value in overrides.pop("fit", {}).items():
    config.fit[key] = value
  for key, value in overrides.items():
    (config.fit if key in FIT_FIELDS else config)[key] = value
  return config


def get_config():
  return tiny_config()
