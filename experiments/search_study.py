r"""Grid, random search, ASHA, PBT and Optuna's TPE at an equal budget, each trained as one
population of 8 slots; and the population's wall time against the same trials trained one
after another.

The task and space of `experiments/search_digits_mlp.py` (MLP on digits, AdamW with a cosine
schedule, learning rate in [1e-4, 1] and weight decay in [1e-6, 0.1], both log-uniform).
Budget: 8 slots x 300 steps for every algorithm. The grid is 4 learning rates x 2 weight
decays, geometric over the same box; random search draws 8 trials; ASHA refills stopped
slots (first rung after one epoch, reduction factor 3); PBT exploits and explores once per
epoch; TPE asks 8 trials in each of 4 rounds of 75 steps. For each seed s, training uses
config.fit.seed = s (init and data order) and the search draws with seed s. The trial best on
validation is scored once on test.

python experiments/search_study.py --seeds 3
python experiments/search_study.py --experiment search_mnist5k_mlp --seeds 3

The second runs the same comparison on `experiments/search_mnist5k_mlp.py` (real MNIST digits,
learning rate in [1e-5, 1]); `--experiment` names any file in experiments/ with
get_config() and get_search_space() over learning_rate and weight_decay.
"""

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

import dl
from dl import search

HERE = os.path.dirname(os.path.abspath(__file__))
ALGORITHMS = ("grid", "random", "asha", "pbt", "tpe")


def _experiment(name: str):
  spec = importlib.util.spec_from_file_location(name, f"{HERE}/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--experiment", default="search_digits_mlp", help="a file in experiments/")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--num_steps", type=int, default=0, help="0: the experiment's epochs")
  args = parser.parse_args()
  experiment = _experiment(args.experiment)
  space = experiment.get_search_space()
  grid = search.grid(
    {
      "learning_rate": np.geomspace(space["learning_rate"].low, space["learning_rate"].high, 4),
      "weight_decay": np.geomspace(space["weight_decay"].low, space["weight_decay"].high, 2),
    }
  )
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for seed in range(args.seeds):
      config = experiment.get_config()
      config.fit.seed, config.fit.progress = seed, False
      if args.num_steps:
        config.fit.num_steps = args.num_steps
      for name in ALGORITHMS:
        start = time.perf_counter()
        workdir = f"{root}/{name}{seed}"
        if name == "grid":
          result = search.train_trials(config, grid, workdir, title=name)
        else:
          result = search.run(config, space, workdir, name, num_slots=len(grid), seed=seed)
        wall = time.perf_counter() - start
        chosen = result.trials[result.best]
        rows.append(
          {
            "search": name,
            "seed": seed,
            "trials": len(result.trials),
            "learning_rate": chosen["learning_rate"],
            "weight_decay": chosen["weight_decay"],
            "validation_accuracy": chosen["validation_accuracy"],
            "test_accuracy": chosen["test_accuracy"],
            "wall_s": wall,
          }
        )
        print(json.dumps(rows[-1]), flush=True)
    # The same 8 random trials of seed 0, one dl.train after another.
    start = time.perf_counter()
    for i, trial in enumerate(search.sample(space, len(grid), 0)):
      config = experiment.get_config()
      config.fit.progress = False
      config.learning_rate, config.weight_decay = trial["learning_rate"], trial["weight_decay"]
      if args.num_steps:
        config.fit.num_steps = args.num_steps
      dl.train(config, f"{root}/alone{i}")
    sequential = time.perf_counter() - start
  population = next(r["wall_s"] for r in rows if r["search"] == "random" and r["seed"] == 0)
  print(
    f"\n{platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()[0]}"
  )
  print("| search | trials | chosen validation accuracy | its test accuracy (once) | wall s |")
  print("|---|---|---|---|---|")
  for name in ALGORITHMS:
    mine = [r for r in rows if r["search"] == name]
    print(
      f"| {name} | {np.mean([r['trials'] for r in mine]):.0f} | "
      f"{_spread([r['validation_accuracy'] for r in mine])} | "
      f"{_spread([r['test_accuracy'] for r in mine])} | "
      f"{np.mean([r['wall_s'] for r in mine]):.1f} |"
    )
  print(
    f"\n8 trials as one population: {population:.1f} s; one after another: {sequential:.1f} s "
    f"({sequential / population:.2f}x)"
  )


def _spread(values) -> str:
  values = 100 * np.asarray(values)
  return f"{values.mean():.2f}% ({values.min():.2f}%-{values.max():.2f}%)"


if __name__ == "__main__":
  main()
