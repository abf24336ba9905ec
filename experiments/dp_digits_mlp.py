r"""DP-SGD: an MLP on `digits` (1,293 train / 144 validation / 360 test) with differential
privacy. The accountant's sampling rate is batch / 1,293 (the training rows alone); the
checkpoint that is best on validation is scored once on test; epsilon is the whole run's.

One run (epsilon logged in metrics.jsonl):
python -m dl.cli.train --config experiments/dp_digits_mlp.py --workdir workdirs/dp_digits_mlp

The accuracy-vs-epsilon table of experiments/results_privacy.md (one run per noise level):
python experiments/dp_digits_mlp.py --workdir workdirs/dp_digits_sweep
"""

import argparse
import os
import time

import dl

NOISE_MULTIPLIERS = (0.0, 0.7, 1.0, 1.5, 2.5, 4.0)


def get_config():
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 128
  config.model.depth = 1
  config.batch_size = 64
  config.num_epochs = 30
  config.optimizer = "momentum"
  config.learning_rate = 0.1
  config.weight_decay = 0.0
  config.schedule = "constant"
  config.log_every_steps = 22
  config.dp_noise_multiplier = 1.0
  config.dp_l2_clip = 1.0
  config.dp_delta = 1e-5
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/dp_digits_sweep")
  parser.add_argument("--seeds", type=int, default=1)
  args = parser.parse_args()
  print("| noise multiplier | epsilon (delta = 1e-5) | test accuracy | wall s |")
  print("|---|---|---|---|")
  for sigma in NOISE_MULTIPLIERS:
    config = get_config()
    config.dp_noise_multiplier = sigma
    config.progress = False
    accuracies, start = [], time.perf_counter()
    for seed in range(args.seeds):
      config.seed = seed
      _, history = dl.train(config, os.path.join(args.workdir, f"sigma{sigma}_seed{seed}"))
      accuracies.append(history["test"][-1]["accuracy"])
    epsilon = history["train"][-1].get("epsilon", float("inf")) if sigma else float("inf")
    mean = sum(accuracies) / len(accuracies)
    spread = f" ({min(accuracies):.2%}-{max(accuracies):.2%})" if args.seeds > 1 else ""
    wall = (time.perf_counter() - start) / args.seeds
    print(f"| {sigma} | {epsilon:.2f} | {mean:.2%}{spread} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
  main()
