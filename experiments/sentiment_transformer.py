r"""Transformer encoder on `rotten_tomatoes` (10,200 train / 1,276 test review snippets).

python -m dl.cli.train --config experiments/sentiment_transformer.py \
    --workdir workdirs/sentiment_transformer

From scratch, the same ids as experiments/sentiment_lstm.py (sentencepiece, 8,000 pieces
trained on the train snippets only, 64 ids with pad 0): 2 pre-LN blocks of width 64 with 4
heads, learned positions, pad masked from attention and from the mean pooling.
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "rotten_tomatoes"
  config.model.name = "transformer"
  config.model.vocab_size = 8000
  config.model.width = 64
  config.model.depth = 2
  config.model.num_heads = 4
  config.model.mlp_dim = 128
  config.model.max_len = 64
  config.model.dropout = 0.2
  config.fit.batch_size = 64
  config.fit.num_epochs = 4
  config.learning_rate = 1e-3
  config.warmup_steps = 100
  config.weight_decay = 1e-2
  config.fit.log_every = 53
  config.fit.eval_batch_size = 1276
  return config
