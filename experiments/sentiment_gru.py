r"""Bidirectional GRU on `rotten_tomatoes` (10,200 train / 1,276 test review snippets).

python -m dl.cli.train --config experiments/sentiment_gru.py --workdir workdirs/sentiment_gru

From scratch: sentencepiece ids (8,000 pieces trained on the train snippets only, 64 ids with
pad 0) -> 64-d embeddings -> one bidirectional GRU layer of 64 units per direction -> mean
and max over the valid steps -> logits. Dropout 0.5 on embeddings and the pooled vector.
"""

import dl


def get_config():
  config = dl.default_config()
  config.dataset = "rotten_tomatoes"
  config.model.name = "text_rnn"
  config.model.cell = "gru"
  config.model.vocab_size = 8000
  config.model.embed_dim = 64
  config.model.hidden = 64
  config.model.bidirectional = True
  config.model.pooling = "mean_max"
  config.model.dropout = 0.5
  config.fit.batch_size = 64
  config.fit.num_epochs = 4
  config.learning_rate = 3e-3
  config.weight_decay = 1e-2
  config.fit.log_every = 53
  config.fit.eval_batch_size = 1276
  return config
