r"""Hyperparameter search on real MNIST digits (`mnist5k`: 3,600 train / 400 validation /
1,000 test): an MLP (784-256-256-10) trained with AdamW and a cosine schedule for 8 epochs,
learning rate and weight decay drawn log-uniformly. A larger validation split than digits'
(400 against 144), so that the searches' choices are told apart by more than one example.

python -m dl.cli.search --config experiments/search_mnist5k_mlp.py \
    --workdir workdirs/search_mnist5k --algorithm asha --num_trials 8
python experiments/search_study.py --experiment search_mnist5k_mlp --seeds 3
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "mnist5k"
  config.model.name = "mlp"
  config.model.width = 256
  config.model.depth = 2
  config.fit.batch_size = 64
  config.fit.num_epochs = 8
  config.optimizer = "adamw"
  config.schedule = "cosine"
  config.fit.log_every = 28
  config.fit.eval_every = 28
  return config


def get_search_space():
  return {
    "learning_rate": dl.search.LogUniform(1e-5, 1.0),
    "weight_decay": dl.search.LogUniform(1e-6, 1e-1),
  }
