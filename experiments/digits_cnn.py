r"""CNN on `digits` (scikit-learn's 1,797 8x8 handwritten digits; 1,437 train / 360 test).

python -m dl.cli.train --config experiments/digits_cnn.py --workdir workdirs/digits_cnn
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "cnn"
  config.fit.batch_size = 32
  config.fit.num_epochs = 30
  config.learning_rate = 3e-3
  config.fit.log_every = 20
  return config
