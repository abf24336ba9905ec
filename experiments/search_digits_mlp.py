r"""Random search, its 8 trials trained as one population: an MLP on `digits` (1,293 train /
144 validation / 360 test), AdamW with learning rate and weight decay drawn log-uniformly.
The trial best on validation (accuracy at the last step) is scored once on test.

python -m dl.cli.search --config experiments/search_digits_mlp.py --workdir workdirs/search_digits \
    --algorithm random --num_trials 8

Writes trials.csv, trials.jsonl and trials.png (validation accuracy against steps, every
trial) in the workdir.
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 128
  config.model.depth = 1
  config.fit.batch_size = 64
  config.fit.num_epochs = 15
  config.optimizer = "adamw"
  config.schedule = "cosine"
  config.fit.log_every = 20
  return config


def get_search_space():
  return {
    "learning_rate": dl.search.LogUniform(1e-4, 1.0),
    "weight_decay": dl.search.LogUniform(1e-6, 1e-1),
  }
