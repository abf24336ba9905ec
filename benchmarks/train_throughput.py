r"""Training throughput: `dl.train`'s loop against a minimal hand-written Flax+Optax loop.

Both sides train the same model with the same optimizer on the same real data, batches
gathered from host arrays each step (data loading included); compile time is excluded.

  python benchmarks/train_throughput.py            # full: CNN/mnist5k b128 (one step per
                                                   # dispatch; 10 fused, unrolled and as a
                                                   # loop), MLP/digits b16 (50 fused)
  python benchmarks/train_throughput.py --quick    # seconds, for a smoke test (the CNN on
                                                   # digits' 8x8 images)

Prints examples/s for both and the ratio dl / hand-written (median over repeats).
"""

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
import optax

import dl


def handwritten_examples_per_sec(
  model: nn.Module, arrays, batch_size: int, num_steps: int, learning_rate: float
) -> float:
  """The loop a user would write: one jitted step per batch, numpy batches, no extras."""
  x, y = arrays["input"], arrays["label"]
  tx = optax.adamw(learning_rate, weight_decay=1e-4)
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  opt_state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits = model.apply({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  steps_per_epoch = len(y) // batch_size
  order = rng.permutation(len(y))

  def batch(i):
    idx = order[(i % steps_per_epoch) * batch_size : (i % steps_per_epoch + 1) * batch_size]
    return x[idx], y[idx]

  params, opt_state, loss = step(params, opt_state, *batch(0))  # compile
  loss.block_until_ready()
  start = time.perf_counter()
  for i in range(1, num_steps + 1):
    params, opt_state, loss = step(params, opt_state, *batch(i))
  loss.block_until_ready()
  return num_steps * batch_size / (time.perf_counter() - start)


def dl_examples_per_sec(config) -> float:
  """Steady-state examples/s of `dl.train`, from its own metric records after the first sync."""
  with tempfile.TemporaryDirectory() as workdir:
    _, history = dl.train(config, workdir)
  records = history["train"][1:]  # the first interval includes compilation
  return statistics.median(r["examples_per_sec"] for r in records)


def dl_config(dataset, model, batch_size, num_steps, steps_per_dispatch, log_every, unroll=False):
  config = dl.default_config()
  config.dataset = dataset
  config.model = model
  config.fit.batch_size = batch_size
  config.fit.num_steps = num_steps
  config.fit.steps_per_dispatch = steps_per_dispatch
  config.fit.unroll_steps = unroll
  config.fit.log_every = log_every
  config.fit.eval_every = num_steps  # evaluate and checkpoint once, at the end
  config.schedule = "constant"
  config.fit.progress = False
  config.fit.tensorboard = False
  return config


def compare(name, config, repeats):
  task = dl.build(config)
  model = task.model.module
  results = []
  for _ in range(repeats):  # alternate the two sides so machine noise hits both
    ours = dl_examples_per_sec(config)
    theirs = handwritten_examples_per_sec(
      model, task.train.arrays, config.fit.batch_size, config.fit.num_steps, config.learning_rate
    )
    results.append((ours, theirs))
  ours = statistics.median(r[0] for r in results)
  theirs = statistics.median(r[1] for r in results)
  row = {
    "benchmark": name,
    "dl_examples_per_sec": round(ours, 1),
    "handwritten_examples_per_sec": round(theirs, 1),
    "ratio": round(ours / theirs, 3),
  }
  print(json.dumps(row), flush=True)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke tests")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  scale, repeats = (0.04, 1) if args.quick else (1.0, args.repeats)
  print(
    json.dumps(
      {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "devices": jax.local_device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
      }
    )
  )
  cnn_steps, mlp_steps = int(300 * scale), int(3000 * scale)
  cnn_data = "digits" if args.quick else "mnist5k"
  fused = 3 if args.quick else 10  # CNN steps per unrolled dispatch (compiles grow with it)
  fused_log_every = max(cnn_steps // 6 // fused, 1) * fused  # every dispatch holds `fused`
  compare(
    f"cnn_{cnn_data}_b128 (1 step/dispatch)",
    dl_config(cnn_data, {"name": "cnn"}, 128, cnn_steps, 1, max(cnn_steps // 6, 1)),
    repeats,
  )
  compare(
    f"cnn_{cnn_data}_b128 (dl: {fused} steps/dispatch, unrolled; hand-written: 1)",
    dl_config(cnn_data, {"name": "cnn"}, 128, cnn_steps, fused, fused_log_every, unroll=True),
    repeats,
  )
  if not args.quick:  # XLA CPU's slow path for convolution gradients in a loop: 30 steps do
    compare(
      "cnn_mnist5k_b128 (dl: 10 steps/dispatch as a lax.scan loop; hand-written: 1)",
      dl_config("mnist5k", {"name": "cnn"}, 128, 30, 10, 10),
      repeats,
    )
  compare(
    "mlp_digits_b16 (dl: 50 steps/dispatch; hand-written: 1)",
    dl_config(
      "digits",
      {"name": "mlp", "width": 128, "depth": 2},
      16,
      mlp_steps,
      50,
      max(mlp_steps // 6, 50),
    ),
    repeats,
  )


if __name__ == "__main__":
  main()
