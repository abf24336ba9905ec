r"""Language-model throughput: training tokens/s with dl's jitted train step, and sampling
tokens/s with and without the KV cache; the modern decoder (`decoder_lm`) trained through
`dl.fit` beside a hand-written jitted loop, with model TFLOP/s per device and MFU.

Model: the causal Transformer of experiments/pydoc_char_lm.py on `pydoc_text` windows
(128 characters). Training: `dl.train_step` with the next-token objective, jitted once with
the state donated, batches gathered from host arrays each step. Sampling: `dl.apps.decoding.sample`
(one position per scan step, keys and values cached) against `dl.apps.decoding.sample_uncached`
(the whole sequence recomputed for every new token), both jitted. Compilation is excluded
(one call first); each number is the median over repeats.

`decoder_lm` (RoPE, grouped-query attention, RMSNorm, SwiGLU) of the same width: `dl.fit`'s
own train records (one run; the first record, which holds the compilation, dropped; the
median of the next `repeats`) against a hand-written `jax.jit` loop of `dl.train_step` on the
same task (median of `repeats` timings). Model FLOPs are the model's analytic count
(`DecoderLM.train_flops`, what `dl.fit` records as model_flops_per_step); MFU is over the
peak `dl.fit` uses (`dl.training.flops`; on CPU a jitted f32 matmul measured in this process).

  python benchmarks/lm_throughput.py            # full size
  python benchmarks/lm_throughput.py --quick    # seconds, for a smoke test

Prints one JSON line per measurement, then a markdown table.
"""

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

import dl
from dl.apps import decoding
from dl.training import flops


def lm_config(width: int, depth: int, batch_size: int, model: str = "transformer_lm"):
  config = dl.default_config()
  config.dataset = "pydoc_text"
  config.test_split = ""  # pydoc_text has train and validation only
  config.objective = "next_token"
  config.model.name = model
  config.model.width = width
  config.model.depth = depth
  config.model.num_heads = 4
  if model == "decoder_lm":
    config.model.num_kv_heads = 2
    config.model.mlp_dim = 8 * width // 3 // 8 * 8  # SwiGLU: the parameters of a 4x GELU MLP
  else:
    config.model.mlp_dim = 4 * width
  config.model.max_len = 128
  config.fit.batch_size = batch_size
  config.fit.num_steps = 1000
  config.fit.progress = False
  config.fit.tensorboard = False
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


def train_seconds(task, batch_size: int, num_steps: int, repeats: int) -> float:
  """Median seconds of `num_steps` jitted train steps on random batches of the windows."""
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

  return median_seconds(run, repeats)


def train_tokens_per_sec(task, batch_size: int, num_steps: int, repeats: int) -> float:
  """Tokens/s of `num_steps` jitted train steps on random batches of the training windows."""
  seconds = train_seconds(task, batch_size, num_steps, repeats)
  return num_steps * batch_size * task.train.arrays["label"].shape[1] / seconds


def decoder_rows(width, depth, batch_size, num_steps, repeats, workdir) -> list[dict]:
  """`decoder_lm` trained by `dl.fit` and by a hand-written jitted loop: tokens/s, model
  TFLOP/s per device and MFU of each (one device)."""
  task = dl.build(lm_config(width, depth, batch_size, model="decoder_lm"))
  task = dataclasses.replace(task, eval=None)  # a throughput run: nothing to score
  length = task.train.arrays["label"].shape[1]
  _, history = dl.fit(
    task,
    workdir,
    num_steps=num_steps * (1 + repeats),
    batch_size=batch_size,
    log_every=num_steps,
    eval_every=num_steps * (1 + repeats),
    progress=False,
    tensorboard=False,
  )
  timed = history["train"][1:]  # the first record's interval holds the compilation
  model_flops = history["train"][0]["model_flops_per_step"]  # DecoderLM.train_flops
  peak, _ = flops.peak_flops_per_device()  # what dl.fit used (measured once per process)
  fit_row = {
    "tokens_per_sec": statistics.median(r["examples_per_sec"] * length for r in timed),
    "tflops_per_sec_per_device": statistics.median(r["tflops_per_sec_per_device"] for r in timed),
    "mfu": statistics.median(r["mfu"] for r in timed),
  }
  seconds = train_seconds(task, batch_size, num_steps, repeats) / num_steps
  tflops = model_flops / seconds / 1e12
  hand_row = {
    "tokens_per_sec": batch_size * length / seconds,
    "tflops_per_sec_per_device": tflops,
    "mfu": tflops * 1e12 / peak,
  }
  shape = f"b{batch_size} x {length} chars, {num_steps} steps/timing"
  return [
    {"measure": f"decoder_lm train, dl.fit ({shape})", **fit_row},
    {"measure": f"decoder_lm train, hand-written jit ({shape})", **hand_row},
  ]


def sample_tokens_per_sec(task, params, batch_size, num_tokens, repeats, cached: bool) -> float:
  """New tokens/s of jitted sampling of `num_tokens` tokens after a 1-character prompt."""
  sampler = decoding.sample if cached else decoding.sample_uncached
  generate = jax.jit(functools.partial(sampler, model=task.model, num_tokens=num_tokens))
  prompt_BxP = np.asarray(task.train.arrays["input"][:batch_size, :1])
  seconds = median_seconds(lambda: generate(params, prompt_BxP, jax.random.PRNGKey(0)), repeats)
  return batch_size * num_tokens / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke tests")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--decoder-repeats", type=int, default=3)
  args = parser.parse_args()
  if args.quick:
    width, depth, batch, train_steps, num_tokens, repeats = 32, 1, 4, 2, 16, 1
    decoder_repeats = 1
  else:
    width, depth, batch, train_steps, num_tokens, repeats = 128, 2, 32, 20, 127, args.repeats
    decoder_repeats = args.decoder_repeats
  peak, peak_source = flops.peak_flops_per_device()
  print(
    json.dumps(
      {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpus": jax.local_device_count(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
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
  with tempfile.TemporaryDirectory() as workdir:
    decoder = decoder_rows(width, depth, batch, train_steps, decoder_repeats, workdir)
  for row in rows + decoder:
    row["tokens_per_sec"] = round(row["tokens_per_sec"], 1)
    print(json.dumps(row), flush=True)
  print(f"\nwidth {width}, depth {depth}, median of {repeats}\n")
  print("| measure | tokens/s |\n|---|---|")
  for row in rows:
    print(f"| {row['measure']} | {row['tokens_per_sec']:,.0f} |")
  speedup = rows[1]["tokens_per_sec"] / rows[2]["tokens_per_sec"]
  print(f"\nKV cache speed-up for sampling: {speedup:.1f}x")
  print(f"\ndecoder_lm, width {width}, depth {depth}, median of {decoder_repeats}\n")
  print("| decoder_lm train | tokens/s | model TFLOP/s per device | MFU |\n|---|---|---|---|")
  for row in decoder:
    loop = row["measure"].split(", ")[1].split(" (")[0]
    tflops, mfu = row["tflops_per_sec_per_device"], row["mfu"]
    print(f"| {loop} | {row['tokens_per_sec']:,.0f} | {tflops:.4f} | {100 * mfu:.2f}% |")
  ratio = decoder[0]["tokens_per_sec"] / decoder[1]["tokens_per_sec"]
  print(f"\ndl.fit / hand-written: {ratio:.2f}x")
  print(f"peak {peak / 1e9:.1f} GFLOP/s per device: {peak_source}")


if __name__ == "__main__":
  main()
