r"""Learning curves: test accuracy against training-set size on `digits` and `breast_cancer`.

For each fraction of the train split (its first n examples in TFDS's stored order), 5 seeds
train as one vmapped ensemble (`dl.recipes.learning_curve`), every size for the same number of steps
as the full set; each model is scored on the whole test split. Writes
<workdir>/<dataset>/learning_curve.png (mean ± std over seeds) and learning_curve.json.

python experiments/learning_curves.py --workdir workdirs/learning_curves
"""

import argparse
import os
import time

import dl
from dl.recipes import learning_curve

FRACTIONS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def digits_config():
  """An MLP on digits (1,437 train / 360 test), 900 steps."""
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 128
  config.model.depth = 2
  config.fit.batch_size = 32
  config.fit.num_steps = 900
  config.learning_rate = 3e-3
  config.fit.log_every = 100
  config.fit.steps_per_dispatch = 50
  return config


def breast_cancer_config():
  """The MLP of breast_cancer_mlp.py (455 train / 114 test), 560 steps."""
  config = digits_config()
  config.dataset = "breast_cancer"
  config.model.width = 64
  config.model.dropout = 0.2
  config.fit.num_steps = 560
  config.learning_rate = 1e-3
  config.weight_decay = 1e-2
  return config


def _row(curve: learning_curve.LearningCurve, i: int) -> str:
  return f"{curve.train_sizes_F[i]} | {curve.mean[i]:.2%} ± {curve.std[i]:.2%}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/learning_curves")
  parser.add_argument("--seeds", type=int, default=5, help="models per size, one vmapped ensemble")
  parser.add_argument("--tiny", action="store_true", help="1 size, 2 seeds, a few steps")
  args = parser.parse_args(argv)
  fractions, lines = (0.1,) if args.tiny else FRACTIONS, []
  for config in (digits_config(), breast_cancer_config()):
    config.fit.progress = False
    if args.tiny:
      config.fit.num_steps, args.seeds = 4, 2
      config.fit.tensorboard = False
    start = time.perf_counter()
    curve = learning_curve.learning_curve(
      config, fractions, args.seeds, os.path.join(args.workdir, config.dataset)
    )
    lines += [f"| {config.dataset} | {_row(curve, i)} |" for i in range(len(fractions))]
    lines.append(f"| {config.dataset}: wall s (all sizes) | {time.perf_counter() - start:.0f} | |")
  header = f"| data set | training examples | test accuracy, mean ± std over {args.seeds} seeds |"
  print("\n".join([header, "|---|---|---|", *lines]), flush=True)


if __name__ == "__main__":
  main()
