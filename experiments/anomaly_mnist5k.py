r"""Anomaly detection on `mnist5k`: an autoencoder trained on normal digits vs IsolationForest.

python experiments/anomaly_mnist5k.py --workdir workdirs/anomaly_mnist5k

For each held-out digit d: the normal records are the other nine digits. A dense
autoencoder (784-256-32-256-784) and a scikit-learn IsolationForest are fitted on the normal
train images only (~3,600); the autoencoder is a `dl.task` (objective: the mean squared
reconstruction error, `autoencoder.objective`) trained with `dl.fit` in `digit_<d>/`. The
test set is every normal test image (~900) plus a random 2% of anomalies (18 test images of
digit d). Scores: the autoencoder's reconstruction error and the forest's negative
`score_samples`; metrics: ROC-AUC and PR-AUC (average precision; chance = the 2% positive
rate). Writes `results.md` in the workdir. `--tiny`: a few steps.
"""

import argparse
import os
import time

import numpy as np
import optax
import sklearn.ensemble

import dl
from dl.generative import anomaly, autoencoder, datasets, networks

POSITIVE_RATE = 0.02


def split(arrays, held_out: int, rng: np.random.Generator, positive_rate: float = POSITIVE_RATE):
  """(normal images, test images, test is_anomaly) for digit `held_out` as the anomaly."""
  normal = arrays["label"] != held_out
  num_anomalies = max(round(positive_rate * normal.sum() / (1 - positive_rate)), 1)
  anomalies = rng.choice(np.flatnonzero(~normal), num_anomalies, replace=False)
  x = np.concatenate([arrays["input"][normal], arrays["input"][anomalies]])
  y = np.concatenate([np.zeros(normal.sum(), np.int32), np.ones(num_anomalies, np.int32)])
  return x, y


def autoencoder_task(normal_train: np.ndarray, *, hidden: int, name: str) -> dl.Task:
  """A dense autoencoder (784-hidden-32-hidden-784) trained on normal images only."""
  module = autoencoder.Autoencoder(
    *networks.encoder_decoder("dense", normal_train.shape[1:], 32, hidden)
  )
  return dl.task(
    model=dl.Linen(module, train_arg=None),
    objective=autoencoder.objective,
    optimizer=optax.adam(1e-3),
    train={"input": normal_train},
    validation_fraction=0.0,  # every normal train image trains it
    name=name,
  )


def one_digit(
  train, test, held_out: int, workdir: str, *, num_steps: int, hidden: int, seed: int = 0
) -> dict:
  """Fits both detectors with `held_out` as the anomaly; returns both detectors' metrics."""
  start = time.perf_counter()
  normal_train = train["input"][train["label"] != held_out]
  test_x, test_y = split(test, held_out, np.random.default_rng([seed, held_out]))
  task = autoencoder_task(normal_train, hidden=hidden, name=f"autoencoder, anomaly {held_out}")
  state, _ = dl.fit(
    task,
    os.path.join(workdir, f"digit_{held_out}"),
    num_steps=num_steps,
    batch_size=64,
    seed=seed,
    progress=False,
    tensorboard=False,
  )
  ae = anomaly.detection_metrics(autoencoder.reconstruction_error(task, state, test_x), test_y)
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
  rows = [
    one_digit(train, test, d, args.workdir, num_steps=num_steps, hidden=hidden) for d in digits
  ]
  header = (
    f"Autoencoder (dense, {num_steps} steps) vs IsolationForest (200 trees) on mnist5k, "
    f"positive rate {POSITIVE_RATE:.0%}; {time.perf_counter() - start:.0f} s in all.\n\n"
  )
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(header + table(rows))
  print(header + table(rows))


if __name__ == "__main__":
  main()
