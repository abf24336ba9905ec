r"""Checkpoint overhead: step-time percentiles of a run that checkpoints every 20 steps, with
synchronous saves against orbax's asynchronous (background) saves.

  python benchmarks/checkpoint_overhead.py            # digits MLP 64-1024-1024-10 (13.6 MB
                                                      # checkpoints with Adam), 400 steps
  python benchmarks/checkpoint_overhead.py --quick    # seconds, for a smoke test

How a step is timed: the run logs every step (`log_every=1`), so the loop fetches the metrics
of each step before the next one starts, and each train record's `examples_per_sec` covers
exactly one step, from the end of the previous step's record to the end of its own. The loop
saves a checkpoint after the record of a checkpoint step, so the time `save` blocks falls into
the step that follows it; with asynchronous saves, the background write also slows the steps
that run beside it (on a machine with few cores). Evaluation runs only at the last step, and
the first records (compilation) are dropped. Sync and async runs alternate, `--repeats` times
each, and the step times of a mode's repeats are pooled.

Prints one JSON row per mode (milliseconds), then the same as a table:
  p50/p90/p99/max  step-time percentiles over all steps
  after_save       median time of the steps that follow a checkpoint (the save's blocking cost)
  wall_s           the whole `dl.fit` call, start-up and compilation included
"""

import argparse
import json
import platform
import tempfile
import time

import jax
import numpy as np

import dl

CHECKPOINT_EVERY = 20
WARMUP_STEPS = 5  # compilation and first dispatches


def fit_step_times(task, num_steps: int, batch_size: int, async_saves: bool):
  """(per-step seconds by step, wall seconds) of one `dl.fit` run."""
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    _, history = dl.fit(
      task,
      workdir,
      num_steps=num_steps,
      batch_size=batch_size,
      log_every=1,
      eval_every=num_steps,
      checkpoint_every=CHECKPOINT_EVERY,
      keep_checkpoints=3,
      progress=False,
      tensorboard=False,
      async_checkpoints=async_saves,
    )
  wall = time.perf_counter() - start
  step_times = {r["step"]: batch_size / r["examples_per_sec"] for r in history["train"]}
  return {s: t for s, t in step_times.items() if s > WARMUP_STEPS}, wall


def summarize(mode: str, runs, num_steps: int) -> dict:
  times = np.array([t for step_times, _ in runs for t in step_times.values()]) * 1e3
  after_save = [
    t * 1e3
    for step_times, _ in runs
    for step, t in step_times.items()
    if step % CHECKPOINT_EVERY == 1 and step > 1
  ]
  p50, p90, p99 = np.percentile(times, [50, 90, 99])
  return {
    "saves": mode,
    "steps": num_steps,
    "runs": len(runs),
    "p50_ms": round(float(p50), 2),
    "p90_ms": round(float(p90), 2),
    "p99_ms": round(float(p99), 2),
    "max_ms": round(float(times.max()), 2),
    "after_save_ms": round(float(np.median(after_save)), 2),
    "wall_s": round(float(np.median([wall for _, wall in runs])), 2),
  }


def digits_mlp(width: int) -> dl.Task:
  config = dl.default_config()
  config.dataset = "digits"
  config.model = {"name": "mlp", "width": width, "depth": 2}
  config.schedule = "constant"
  return dl.build(config)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke tests")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  width, num_steps, batch_size, repeats = (
    (64, 3 * CHECKPOINT_EVERY, 16, 1) if args.quick else (1024, 400, 64, args.repeats)
  )
  task = digits_mlp(width)
  print(
    json.dumps(
      {
        "machine": platform.processor() or platform.machine(),
        "cpus": jax.local_device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "model": f"digits mlp 64-{width}-{width}-10, adam, batch {batch_size}",
        "checkpoint_every": CHECKPOINT_EVERY,
      }
    )
  )
  runs = {"sync": [], "async": []}
  for _ in range(repeats):  # alternate, so machine noise hits both
    for mode, mode_runs in runs.items():
      mode_runs.append(fit_step_times(task, num_steps, batch_size, mode == "async"))
  rows = [summarize(mode, mode_runs, num_steps) for mode, mode_runs in runs.items()]
  for row in rows:
    print(json.dumps(row), flush=True)
  columns = ["saves", "p50_ms", "p90_ms", "p99_ms", "max_ms", "after_save_ms", "wall_s"]
  print(" ".join(f"{c:>13}" for c in columns))
  for row in rows:
    print(" ".join(f"{row[c]:>13}" for c in columns))


if __name__ == "__main__":
  main()
