r"""Input pipeline throughput: the streaming path alone, and the CNN trained through each path.

1. The pipeline alone: examples/s of training batches (128) of SYNTHETIC `mnist64` canvases
   (real MNIST digits placed on 64x64, `dl/data/builders/mnist64.py`), from host arrays
   (`InMemory`) and streamed from array_record (`Streaming`) with 0, 1 and 2 grain worker
   processes, with and without augmentation (crop, translate, mixup).
2. The MNIST-example CNN on mnist5k at batch 128 trained by `dl.train` on each data path
   (batches prepared one dispatch ahead by the loop), one step per dispatch and 10 unrolled
   steps per dispatch, beside the hand-written Flax+Optax loop of
   `benchmarks/train_throughput.py`, as ratios from one run (median of repeats).

  python benchmarks/input_pipeline.py            # full (mnist64/16k; 300 CNN steps, 3 repeats)
  python benchmarks/input_pipeline.py --quick    # seconds, for a smoke test

Worker processes start by spawn (~2.5 s each here), excluded from the pipeline figures.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

import dl
from dl.data import augment, loading, sources, streaming
from dl.data.transforms import Preprocess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # the hand-written loop, beside this file

BATCH = 128
AUGMENT = ("crop:4", "translate:4", "mixup:0.2")


def pipeline_examples_per_sec(batches, num_batches: int) -> float:
  """Examples/s of `batches.next()` after two warm-up batches (worker start-up excluded)."""
  batches.next()
  batches.next()
  start = time.perf_counter()
  for _ in range(num_batches):
    batches.next()
  seconds = time.perf_counter() - start
  getattr(batches, "close", lambda: None)()
  return num_batches * BATCH / seconds


def pipeline_rows(dataset: str, num_batches: int, workers: tuple[int, ...]) -> None:
  source = loading.data_source(dataset, "train")
  scale = {"input": Preprocess("scale", {"divisor": np.array(255.0)})}
  for augmented in (False, True):
    augmentation = augment.Augment.create(augment.from_names(AUGMENT if augmented else ()))
    data = streaming.Streaming(source, input_key="image", preprocess=scale, augment=augmentation)
    arrays = data.with_options(augment=None).read(np.arange(min(len(data), 4096)))
    held = sources.InMemory(arrays, augmentation)  # 4,096 examples held in memory
    rows = [("memory", 0, pipeline_examples_per_sec(held.batches(BATCH, seed=0), num_batches))]
    for n in workers:
      stream = data.with_options(num_workers=n).batches(BATCH, seed=0)
      rows.append(("stream", n, pipeline_examples_per_sec(stream, num_batches)))
    for path, n, rate in rows:
      row = {"pipeline": f"{path} {dataset}", "workers": n, "augment": augmented}
      print(json.dumps(row | {"examples_per_sec": round(rate, 1)}), flush=True)


def cnn_rows(num_steps: int, repeats: int, fused: int) -> None:
  """The CNN through `dl.train` on each data path, one step per dispatch and `fused` steps
  per dispatch (unrolled: `dl.training.compile.scan_steps`), beside the hand-written loop."""
  log_every = max(num_steps // 6, fused)
  configs = {}
  for path in ("memory", "stream"):
    for k in (1, fused):
      config = train_throughput.dl_config(
        "mnist5k", {"name": "cnn"}, BATCH, num_steps, k, log_every, unroll=k > 1
      )
      config.data_path = path
      configs[path, k] = config
  task = dl.build(configs["memory", 1])
  results = {key: [] for key in configs} | {"handwritten": []}
  for _ in range(repeats):  # interleaved, so that machine noise hits every side
    for key, config in configs.items():
      results[key].append(train_throughput.dl_examples_per_sec(config))
    results["handwritten"].append(
      train_throughput.handwritten_examples_per_sec(
        task.model.module, task.train.arrays, BATCH, num_steps, configs["memory", 1].learning_rate
      )
    )
  medians = {key: statistics.median(v) for key, v in results.items()}
  for path, k in configs:
    dispatch = "1 step/dispatch" if k == 1 else f"{k} steps/dispatch, unrolled"
    row = {
      "benchmark": f"cnn_mnist5k_b{BATCH} dl.train data_path={path} ({dispatch})",
      "dl_examples_per_sec": round(medians[path, k], 1),
      "handwritten_examples_per_sec": round(medians["handwritten"], 1),
      "ratio": round(medians[path, k] / medians["handwritten"], 3),
      "repeats": [round(x, 1) for x in results[path, k]],
      "handwritten_repeats": [round(x, 1) for x in results["handwritten"]],
    }
    print(json.dumps(row), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke tests")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(
    json.dumps(
      {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "data": "mnist64 is SYNTHETIC (real MNIST digits placed at seeded positions)",
      }
    ),
    flush=True,
  )
  if args.quick:
    pipeline_rows("mnist64/4k", 4, workers=(0,))
    cnn_rows(12, 1, fused=3)
  else:
    pipeline_rows("mnist64/16k", 100, workers=(0, 1, 2))
    cnn_rows(300, args.repeats, fused=10)


if __name__ == "__main__":
  main()
