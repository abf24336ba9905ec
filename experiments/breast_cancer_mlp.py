r"""MLP on `breast_cancer` (Wisconsin diagnostic, scikit-learn; 455 train / 114 test, 30 features).

python -m dl.cli.train --config experiments/breast_cancer_mlp.py \
    --workdir workdirs/breast_cancer_mlp
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "breast_cancer"
  config.model.name = "mlp"
  config.model.width = 64
  config.model.depth = 2
  config.model.dropout = 0.2
  config.fit.batch_size = 32
  config.fit.num_epochs = 40
  config.learning_rate = 1e-3
  config.weight_decay = 1e-2
  config.fit.log_every = 14
  return config
