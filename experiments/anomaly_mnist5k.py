r"""Anomaly detection on `mnist5k`: an autoencoder trained on normal digits vs IsolationForest.

python experiments/anomaly_mnist5k.py --workdir workdirs/anomaly_mnist5k

For each held-out digit d: the normal records are the other nine digits. A dense
autoencoder (784-256-32-256-784) and a scikit-learn IsolationForest are fitted on the normal
train images only (~3,600). The test set is every normal test image (~900) plus a random
2% of anomalies (18 test images of digit d). Scores: the autoencoder's reconstruction error
and the forest's negative `score_samples`; metrics: ROC-AUC and PR-AUC (average precision;
chance = the 2% positive rate). Writes `results.md` in the workdir. `--tiny`: a few steps.
"""

import argparse
import functools
import os
import time

import jax
import numpy as np
import optax
import sklearn.ensemble

from dl.data.batches import ShuffledBatches
from dl.generative import anomaly, autoencoder, datasets, loop, networks

POSITIVE_RATE = 0.02


def split(arrays, held_out: int, rng: np.random.Generator, positive_rate: float = POSITIVE_RATE):
  """(normal images, test images, test is_anomaly) for digit `held_out` as the anomaly."""
  normal = arrays["label"] != held_out
  num_anomalies = max(round(positive_rate * normal.sum() / (1 - positive_rate)), 1)
  anomalies = rng.choice(np.flatnonzero(~normal), num_anomalies, replace=False)
  x = np.concatenate([arrays["input"][normal], arrays["input"][anomalies]])
  y = np.concatenate([np.zeros(normal.sum(), np.int32), np.ones(num_anomalies, np.int32)])
  return x, y


def one_digit(train, test, held_out: int, *, num_steps: int, hidden: int, seed: int = 0) -> dict:
  """Fits both detectors with `held_out` as the anomaly; returns both detectors' metrics."""
  start = time.perf_counter()
  normal_train = train["input"][train["label"] != held_out]
  test_x, test_y = split(test, held_out, np.random.default_rng([seed, held_out]))
  image_shape = normal_train.shape[1:]
  model = autoencoder.Autoencoder(*networks.encoder_decoder("dense", image_shape, 32, hidden))
  tx = optax.adam(1e-3)
  state = autoencoder.create_state(model, tx, jax.random.PRNGKey(seed), image_shape)
  step = functools.partial(autoencoder.train_step, model=model, tx=tx)
  state, _ = loop.fit(
    step, state, ShuffledBatches({"input": normal_train}, 64, seed=seed), num_steps=num_steps
  )
  ae = anomaly.detection_metrics(
    autoencoder.reconstruction_error(model, state.params, test_x), test_y
  )
  forest = sklearn.ensemble.IsolationForest(n_estimators=200, random_state=seed)
  forest.fit(normal_train.reshape((len(normal_train), -1)))
  iso = anomaly.detection_metrics(-forest.score_samples(test_x.reshape((len(test_x), -1))), test_y)
  return {
    "digit": held_out,
    "num_test": len(test_y),
    "num_anomalies": int(test_y.sum()),
    "ae": ae,
    "iforest": iso,
    "seconds": time.perf_counter() - start,
  }


def table(rows: list[dict]) -> str:
  lines = [
    "| anomaly digit | test (anomalies) | AE ROC-AUC | IF ROC-AUC | AE PR-AUC | IF PR-AUC |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['digit']} | {r['num_test']} ({r['num_anomalies']}) | {r['ae']['roc_auc']:.3f} | "
      f"{r['iforest']['roc_auc']:.3f} | {r['ae']['pr_auc']:.3f} | {r['iforest']['pr_auc']:.3f} |"
    )
  mean = {
    (d, m): np.mean([r[d][m] for r in rows])
    for d in ("ae", "iforest")
    for m in ("roc_auc", "pr_auc")
  }
  lines.append(
    f"| **mean** | | **{mean['ae', 'roc_auc']:.3f}** | **{mean['iforest', 'roc_auc']:.3f}** | "
    f"**{mean['ae', 'pr_auc']:.3f}** | **{mean['iforest', 'pr_auc']:.3f}** |"
  )
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--tiny", action="store_true", help="a few steps, two digits")
  parser.add_argument("--num_steps", type=int, default=1500)
  args = parser.parse_args()
  train, test = (datasets.load_images("mnist5k", s) for s in ("train", "test"))
  digits = (0, 1) if args.tiny else range(10)
  num_steps, hidden = (4, 8) if args.tiny else (args.num_steps, 256)
  start = time.perf_counter()
  rows = [one_digit(train, test, d, num_steps=num_steps, hidden=hidden) for d in digits]
  header = (
    f"Autoencoder (dense, {num_steps} steps) vs IsolationForest (200 trees) on mnist5k, "
    f"positive rate {POSITIVE_RATE:.0%}; {time.perf_counter() - start:.0f} s in all.\n\n"
  )
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(header + table(rows))
  print(header + table(rows))


if __name__ == "__main__":
  main()
