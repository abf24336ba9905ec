r"""Ensembles: one vmapped run of K models against K sequential runs, all through `dl.train`.

  python benchmarks/ensemble_throughput.py            # digits MLP, K=8, batch 16 and 128
  python benchmarks/ensemble_throughput.py --quick    # seconds, for a smoke test

For each batch size prints the steady-state examples/s (compilation excluded; examples of all
members counted) of: K sequential single-model runs, one vmapped ensemble run with one step
per dispatch, and one with `steps_per_dispatch` fused steps; plus the end-to-end wall time of
each way (start-up and compilation included). Ratios are against the sequential runs.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time

import jax

import dl


def _config(batch_size, num_steps, **overrides):
  config = dl.default_config()
  config.dataset = "digits"
  config.model = {"name": "mlp", "width": 128, "depth": 2}
  config.fit.batch_size = batch_size
  config.fit.num_steps = num_steps
  config.fit.log_every = max(num_steps // 6, 1)
  config.fit.eval_every = num_steps
  config.schedule = "constant"
  config.fit.progress = False
  config.fit.tensorboard = False
  for key, value in overrides.items():
    config.fit[key] = value
  return config


def _run(config) -> tuple[float, float]:
  """(steady-state examples/s, wall seconds) of one `dl.train` call."""
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    _, history = dl.train(config, workdir)
  wall = time.perf_counter() - start
  return statistics.median(r["examples_per_sec"] for r in history["train"][1:]), wall


def compare(batch_size, num_steps, members, fused_steps):
  sequential = [_run(_config(batch_size, num_steps, seed=s)) for s in range(members)]
  seq_rate = statistics.median(r for r, _ in sequential)
  seq_wall = sum(w for _, w in sequential)
  vmap_rate, vmap_wall = _run(_config(batch_size, num_steps, ensemble_size=members))
  fused_rate, fused_wall = _run(
    _config(batch_size, num_steps, ensemble_size=members, steps_per_dispatch=fused_steps)
  )
  row = {
    "batch_size": batch_size,
    "members": members,
    "steps": num_steps,
    "sequential_examples_per_sec": round(seq_rate),
    "vmap_examples_per_sec": round(vmap_rate),
    f"vmap_fused{fused_steps}_examples_per_sec": round(fused_rate),
    "vmap_vs_sequential": round(vmap_rate / seq_rate, 2),
    "vmap_fused_vs_sequential": round(fused_rate / seq_rate, 2),
    "wall_s": {
      "sequential": round(seq_wall, 1),
      "vmap": round(vmap_wall, 1),
      "vmap_fused": round(fused_wall, 1),
    },
  }
  print(json.dumps(row), flush=True)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke tests")
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--fused_steps", type=int, default=50)
  args = parser.parse_args()
  print(
    json.dumps(
      {
        "machine": platform.machine(),
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
      }
    )
  )
  for batch_size, steps in ((16, 1500), (128, 600)):
    compare(
      batch_size, 30 if args.quick else steps, 2 if args.quick else args.members, args.fused_steps
    )


if __name__ == "__main__":
  main()
