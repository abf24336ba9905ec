r"""Character language model: a small causal Transformer on Python's documentation.

Data: `pydoc_text` (the text of `help(topic)` shipped with Python; 3,270 train / 363
validation windows of 128 characters, split contiguously). Objective: next character.

Train only:
python -m dl.cli.train --config experiments/pydoc_char_lm.py --workdir workdirs/pydoc_char_lm

The study (train, then validation bits per character against a unigram baseline computed
in the same run, and samples drawn with the KV cache, written to <workdir>/samples.txt):
python experiments/pydoc_char_lm.py --workdir workdirs/pydoc_char_lm
"""

import argparse
import functools
import json
import math
import os
import time

import jax
import numpy as np
from sklearn.metrics import log_loss

import dl
from dl.apps import decoding
from dl.data.builders import pydoc_text

PROMPTS = ('The "while" statement\n', "A list comprehension ", "def ")


def get_config():
  config = dl.default_config()
  config.dataset = "pydoc_text"
  config.test_split = ""  # pydoc_text has train and validation only: the figure is validation's
  config.objective = "next_token"
  config.model.name = "transformer_lm"
  config.model.width = 128
  config.model.depth = 2
  config.model.num_heads = 4
  config.model.mlp_dim = 512
  config.model.max_len = 128
  config.model.dropout = 0.0
  config.fit.batch_size = 32
  config.fit.num_steps = 400
  config.learning_rate = 3e-3
  config.warmup_steps = 50
  config.schedule = "cosine"
  config.weight_decay = 0.01
  config.grad_clip_norm = 1.0
  config.fit.steps_per_dispatch = 10
  config.fit.log_every = 50
  config.fit.eval_every = 200
  config.fit.eval_batch_size = 128
  config.fit.best_metric = "loss"
  config.fit.best_mode = "min"
  return config


def unigram_bits_per_char(train_labels: np.ndarray, eval_labels: np.ndarray, vocab: int) -> float:
  """Cross-entropy (bits) of the eval characters under add-one train character frequencies."""
  counts_V = np.bincount(train_labels.ravel(), minlength=vocab) + 1.0
  probs_V = counts_V / counts_V.sum()
  targets_N = eval_labels.ravel()
  probs_NxV = np.broadcast_to(probs_V, (len(targets_N), vocab))
  return log_loss(targets_N, probs_NxV, labels=np.arange(vocab)) / math.log(2)


def write_samples(state, model, path: str, num_tokens: int, seed: int = 0) -> list[str]:
  """Continues each prompt with the KV-cached sampler (temperature 0.8, top-k 20)."""
  generate = jax.jit(
    functools.partial(
      decoding.sample, model=model, num_tokens=num_tokens, temperature=0.8, top_k=20
    )
  )
  texts = []
  for i, prompt in enumerate(PROMPTS):
    prompt_1xP = pydoc_text.encode(prompt)[np.newaxis]
    tokens_1xT = generate(state.params, prompt_1xP, jax.random.PRNGKey(seed + i))
    texts.append(pydoc_text.decode(tokens_1xT[0]))
  with open(path, "w") as f:
    f.write("\n\n----------\n\n".join(texts) + "\n")
  return texts


def study(config, workdir: str) -> tuple[dict, list[str], dl.Task]:
  """Trains `config` in `workdir`; its validation bits per character beside the unigram
  baseline's, samples drawn with the KV cache (written to <workdir>/samples.txt), the task."""
  config.fit.progress = False
  start = time.perf_counter()
  state, history = dl.train(config, workdir)
  wall = time.perf_counter() - start
  task = dl.build(config)
  vocab = task.model.module.num_classes
  unigram = unigram_bits_per_char(task.train.arrays["label"], task.eval["label"], vocab)
  final = history["eval"][-1]
  texts = write_samples(
    state, task.model.module, os.path.join(workdir, "samples.txt"), num_tokens=100
  )
  result = {
    "steps": final["step"],
    "validation_bits_per_char": round(final["bits_per_token"], 4),
    "unigram_bits_per_char": round(unigram, 4),
    "validation_accuracy": round(final["accuracy"], 4),
    "train_wall_s": round(wall),
  }
  return result, texts, task


def parse_args(default_workdir: str):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=default_workdir)
  parser.add_argument("--steps", type=int, default=0, help="override fit.num_steps")
  return parser.parse_args()


def with_steps(config, steps: int):
  """`config` trained for `steps` steps, evaluated at the end (0: as it is)."""
  if steps:
    config.fit.num_steps = steps
    config.fit.eval_every = steps
  return config


def report(result: dict, texts: list[str]) -> None:
  print(json.dumps(result))
  for text in texts:
    print("-----\n" + text)


def main():
  args = parse_args("workdirs/pydoc_char_lm")
  result, texts, _ = study(with_steps(get_config(), args.steps), args.workdir)
  report(result, texts)


if __name__ == "__main__":
  main()
