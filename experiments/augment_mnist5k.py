r"""mnist5k CNN with and without augmentation, 3 seeds each: test accuracy mean and spread.

The config of `experiments/mnist5k_cnn.py` (CNN, dropout 0.3, AdamW), trained twice: as it
is, and with `augment=("crop:2", "translate:2")` (pad 2 pixels and crop back, then shift up
to 2 pixels; no flips: a mirrored digit is another symbol). Each variant trains its seeds as
one ensemble (`ensemble_size`: member i uses seed i for init, dropout, data order and
augmentation); the checkpoint best on validation (mean over members) is scored once on test.

python experiments/augment_mnist5k.py --seeds 3 --epochs 8
"""

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time

import numpy as np

import dl

HERE = os.path.dirname(os.path.abspath(__file__))
AUGMENT = ("crop:2", "translate:2")


def _base_config():
  spec = importlib.util.spec_from_file_location("mnist5k_cnn", f"{HERE}/mnist5k_cnn.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run(augment: tuple[str, ...], seeds: int, epochs: float) -> dict:
  config = _base_config()
  config.augment = augment
  config.fit.ensemble_size = seeds
  config.fit.num_epochs = epochs
  config.fit.progress = False
  config.fit.tensorboard = False
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    _, history = dl.train(config, workdir)
  accuracy = np.atleast_1d(history["test"][-1]["accuracy"])
  return {
    "augment": list(augment) or "none",
    "seeds": seeds,
    "epochs": epochs,
    "test_accuracy_per_seed": [round(float(a), 4) for a in accuracy],
    "mean": round(float(accuracy.mean()), 4),
    "std": round(float(accuracy.std()), 4),
    "test_step": history["test"][-1]["step"],
    "wall_s": round(time.perf_counter() - start, 1),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--epochs", type=float, default=8)
  args = parser.parse_args()
  print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count()}), flush=True)
  for augment in ((), AUGMENT):
    print(json.dumps(run(augment, args.seeds, args.epochs)), flush=True)


if __name__ == "__main__":
  main()
