r"""MLP on `credit` (modeldata credit_data; 3,563 train / 891 test, 26 features), with eval
metrics per age band (accuracy, TPR, FPR, selection rate; demographic parity and equalized
odds differences; positive class = "good").

python -m dl.cli.train --config experiments/credit_fairness_mlp.py \
    --workdir workdirs/credit_fairness
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "credit"
  config.group_feature = "age_band"
  config.model.name = "mlp"
  config.model.width = 64
  config.model.depth = 2
  config.model.dropout = 0.2
  config.fit.batch_size = 64
  config.fit.num_epochs = 30
  config.learning_rate = 1e-3
  config.weight_decay = 1e-2
  config.fit.log_every = 55
  return config
