r"""Language-model throughput: training tokens/s with dl's jitted train step, and sampling
tokens/s with and without the KV cache.

Model: the causal Transformer of experiments/pydoc_char_lm.py on `pydoc_text` windows
(128 characters). Training: `dl.train_step` with the next-token objective, jitted once with
the state donated, batches gathered from host arrays each step. Sampling: `dl.sampling.sample`
(one position per scan step, keys and values cached) against `dl.sampling.sample_uncached`
(the whole sequence recomputed for every new token), both jitted. Compilation is excluded
(one call first); each number is the median over repeats.

  python benchmarks/lm_throughput.py            # full size
  python benchmarks/lm_throughput.py --quick    # seconds, for a smoke test

Prints one JSON line per measurement, then a markdown table.
"""

import argparse
import functools
import json
import platform
import statistics
import time

import jax
import numpy as np

import dl
from dl import sampling


def lm_config(width: int, depth: int, batch_size: int):
  config = dl.default_config()
  config.dataset = "pydoc_text"
  config.test_split = ""  # pydoc_text has train and validation only
  config.objective = "next_token"
  config.model.name = "transformer_lm"
  config.model.width = width
  config.model.depth = depth
  config.model.num_heads = 4
  config.model.mlp_dim = 4 * width
  config.model.max_len = 128
  config.batch_size = batch_size
  config.num_train_steps = 1000
  config.progress = False
  config.tensorboard = False
  return config


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` calls, after one untimed call (compilation)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def train_tokens_per_sec(task, batch_size: int, num_steps: int, repeats: int) -> float:
  """Tokens/s of `num_steps` jitted train steps on random batches of the training windows."""
  step = jax.jit(
    functools.partial(dl.train_step, model=task.model, tx=task.optimizer, objective=task.objective),
    donate_argnames="state",
  )
  inputs, labels = task.train.arrays["input"], task.train.arrays["label"]
  rng = np.random.default_rng(0)
  holder = {"state": task.init(seed=0)}

  def run():
    for _ in range(num_steps):
      idx = rng.integers(0, len(labels), batch_size)
      holder["state"], metrics = step(holder["state"], {"input": inputs[idx], "label": labels[idx]})
    return metrics["loss"]

  seconds = median_seconds(run, repeats)
  return num_steps * batch_size * labels.shape[1] / seconds


def sample_tokens_per_sec(task, params, batch_size, num_tokens, repeats, cached: bool) -> float:
  """New tokens/s of jitted sampling of `num_tokens` tokens after a 1-character prompt."""
  sampler = sampling.sample if cached else sampling.sample_uncached
  generate = jax.jit(functools.partial(sampler, model=task.model, num_tokens=num_tokens))
  prompt_BxP = np.asarray(task.train.arrays["input"][:batch_size, :1])
  seconds = median_seconds(lambda: generate(params, prompt_BxP, jax.random.PRNGKey(0)), repeats)
  return batch_size * num_tokens / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke tests")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  if args.quick:
    width, depth, batch, train_steps, num_tokens, repeats = 32, 1, 4, 2, 16, 1
  else:
    width, depth, batch, train_steps, num_tokens, repeats = 128, 2, 32, 20, 127, args.repeats
  print(
    json.dumps(
      {
        "machine": platform.processor() or platform.machine(),
        "cpus": jax.local_device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
      }
    )
  )
  task = dl.build(lm_config(width, depth, batch))
  params = task.init(seed=0).params
  rows = [
    {
      "measure": f"train (b{batch} x 128 chars, {train_steps} steps/timing)",
      "tokens_per_sec": train_tokens_per_sec(task, batch, train_steps, repeats),
    }
  ]
  for cached in (True, False):
    name = "with KV cache" if cached else "no cache (recompute prefix)"
    rows.append(
      {
        "measure": f"sample {name} (b{batch}, {num_tokens} new tokens)",
        "tokens_per_sec": sample_tokens_per_sec(task, params, batch, num_tokens, repeats, cached),
      }
    )
  for row in rows:
    row["tokens_per_sec"] = round(row["tokens_per_sec"], 1)
    print(json.dumps(row), flush=True)
  print(f"\nwidth {width}, depth {depth}, median of {repeats}\n")
  print("| measure | tokens/s |\n|---|---|")
  for row in rows:
    print(f"| {row['measure']} | {row['tokens_per_sec']:,.0f} |")
  speedup = rows[1]["tokens_per_sec"] / rows[2]["tokens_per_sec"]
  print(f"\nKV cache speed-up for sampling: {speedup:.1f}x")


if __name__ == "__main__":
  main()
