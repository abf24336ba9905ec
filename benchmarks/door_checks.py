r"""What the checks at the door cost (`dl.data.checks`), against one epoch of training.

On SYNTHETIC `mnist64` canvases (real MNIST digits placed on 64x64,
`dl/data/builders/mnist64.py`), held in memory as float32 inputs and int labels:

1. `check_values` (numeric dtypes, finite floats) and `check_ranges` (labels below the
   model's outputs) over the whole training split, and the abstract forward pass that reads
   the model's number of outputs (`dl.training.task._limits`, `jax.eval_shape`): what
   `dl.task` adds, per split.
2. One epoch of training the MNIST-example CNN at batch 128 (`dl.fit`, timed over `--steps`
   steps after compilation, scaled to the split's steps per epoch).
3. Per streamed batch: `check_split` of one batch against one training step.

  python benchmarks/door_checks.py            # mnist64/16k (16,384 canvases, 256 MiB)
  python benchmarks/door_checks.py --quick    # mnist64/4k, a few steps, for a smoke test

Each figure is the median of repeats; the ratios are what to read (machines are shared).
"""

import argparse
import json
import platform
import statistics
import tempfile
import time

import jax
import optax

import dl
from dl.data import checks, sources
from dl.training import task as task_lib

BATCH = 128


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="mnist64/4k, a few steps")
  parser.add_argument("--steps", type=int, default=60, help="timed training steps")
  args = parser.parse_args()
  name = "mnist64/4k" if args.quick else "mnist64/16k"
  steps, repeats = (6, 1) if args.quick else (args.steps, 3)

  task = dl.task(
    model=dl.models.create("cnn", num_classes=10),
    objective=dl.core.objectives.classification,
    optimizer=optax.adam(1e-3),
    train=(name, "train"),
    validation_fraction=0.0,
  )
  arrays = task.train.arrays
  limits = task.limits
  values_s = _median_seconds(lambda: checks.check_values(arrays, "training data"), repeats)
  ranges_s = _median_seconds(
    lambda: checks.check_ranges(arrays, "training data", **limits), repeats
  )
  example = {k: v[:2] for k, v in arrays.items()}
  limits_s = _median_seconds(lambda: task_lib._limits(task.model, task.objective, example), repeats)
  door_s = values_s + ranges_s + limits_s

  with tempfile.TemporaryDirectory() as workdir:
    fit = dict(batch_size=BATCH, progress=False, tensorboard=False, log_every=steps)
    dl.fit(task, workdir + "/warm", num_steps=2, **fit)  # compiles once
    start = time.perf_counter()
    dl.fit(task, workdir + "/timed", num_steps=steps, **fit)
    step_s = (time.perf_counter() - start) / steps
  steps_per_epoch = len(task.train) // BATCH
  epoch_s = step_s * steps_per_epoch

  batch = sources.InMemory(arrays).batches(BATCH, seed=0).next()
  batch_check_s = _median_seconds(
    lambda: checks.check_split(batch, "training data", **limits), max(repeats, 20)
  )
  print(
    json.dumps(
      {
        "dataset": f"{name} (SYNTHETIC placement of real MNIST digits)",
        "examples": len(task.train),
        "check_values_s": round(values_s, 4),
        "check_ranges_s": round(ranges_s, 4),
        "model_outputs_s": round(limits_s, 4),
        "door_s": round(door_s, 4),
        "epoch_s": round(epoch_s, 2),
        "door_fraction_of_epoch": round(door_s / epoch_s, 5),
        "batch_check_ms": round(1e3 * batch_check_s, 3),
        "step_ms": round(1e3 * step_s, 2),
        "batch_check_fraction_of_step": round(batch_check_s / step_s, 5),
        "machine": f"{platform.machine()} {jax.default_backend()} x{jax.device_count()}",
      }
    )
  )


if __name__ == "__main__":
  main()
