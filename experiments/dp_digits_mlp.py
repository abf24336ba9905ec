r"""DP-SGD: an MLP on `digits` (1,293 train / 144 validation / 360 test) with differential
privacy. The accountant's sampling rate is batch / 1,293 (the training rows alone); the
checkpoint that is best on validation is scored once on test; epsilon is the whole run's.

One run (epsilon logged in metrics.jsonl):
python -m dl.cli.train --config experiments/dp_digits_mlp.py --workdir workdirs/dp_digits_mlp

Batches are Poisson-sampled (each training row joins a step's batch with probability
64 / 1,293), padded to a fixed size and masked. The accuracy / epsilon / audit table of
experiments/results_privacy.md:
python experiments/dp_study.py --dataset digits --seeds 3
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 128
  config.model.depth = 1
  config.fit.batch_size = 64
  config.fit.num_epochs = 30
  config.optimizer = "momentum"
  config.learning_rate = 0.1
  config.weight_decay = 0.0
  config.schedule = "constant"
  config.fit.log_every = 22
  config.dp_noise_multiplier = 1.0
  config.dp_l2_clip = 1.0
  config.dp_delta = 1e-5
  return config
