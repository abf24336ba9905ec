r"""Credit default: MLPs (dl.train) beside scikit-learn's HistGradientBoostingClassifier and
logistic regression on `credit` (modeldata credit_data; 3,563 train / 891 test, 26 features).

All models train on the same train split and are scored on the same test split, in one run.
The positive class is "bad" (the loan was not repaid: 28% of applicants), so PR-AUC is the
average precision of finding defaulters (a random ranking scores the default rate). Five MLP
seeds train as one vmapped ensemble; their rows give mean ± std. Writes results.md.

python experiments/credit_default.py --workdir workdirs/credit_default

The MLP config is `mlp_config()`; tests/applications_test.py runs the study with --tiny.
"""

import argparse
import os
import time

import jax
import numpy as np
import threadpoolctl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

import dl
from dl.trust import calibration

DEFAULT = 0  # class "bad": the applicant defaulted
COLUMNS = ("roc_auc", "pr_auc", "accuracy", "brier", "ece")


def mlp_config():
  config = dl.default_config()
  config.dataset = "credit"
  config.model.name = "mlp"
  config.model.width = 64
  config.model.depth = 2
  config.model.dropout = 0.2
  config.fit.batch_size = 64
  config.fit.num_epochs = 30
  config.learning_rate = 1e-3
  config.weight_decay = 1e-2
  config.fit.log_every = 55
  # The study scores probabilities (ROC-AUC, Brier, ECE): the checkpoint is chosen by the
  # validation loss (NLL, a proper scoring rule), not by accuracy at a 0.5 threshold.
  config.fit.best_metric = "loss"
  return config


def member_probs(task, state, inputs_NxD) -> np.ndarray:
  """(S, N, C) class probabilities of each ensemble member (S = 1 for a single model)."""
  logits = dl.inference.outputs(state, task.model, {"input": inputs_NxD})
  probs = np.asarray(jax.nn.softmax(logits))
  return probs if dl.inference.is_ensemble(state) else probs[None]


def _cell(values) -> str:
  values = np.atleast_1d(values)
  return f"{values.mean():.4f}" + (f" ± {values.std():.4f}" if len(values) > 1 else "")


def table(rows: dict[str, tuple[list[dict[str, float]], float]]) -> str:
  """Markdown: one row per model (mean ± std over its runs) with its wall time."""
  lines = [
    "| model | ROC-AUC | PR-AUC (default) | accuracy | Brier | ECE | wall s |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, (runs, seconds) in rows.items():
    cells = [_cell([r[k] for r in runs]) for k in COLUMNS]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.1f} |")
  return "\n".join(lines)


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def run(config, workdir: str, *, tiny: bool = False) -> str:
  """Trains the MLPs and the scikit-learn peers on one split; writes results.md."""
  _, mlp_seconds = _timed(lambda: dl.train(config, os.path.join(workdir, "mlp")))
  state = dl.restore(config, os.path.join(workdir, "mlp"), step="best")  # chosen on validation
  task = dl.build(config)
  # The MLP's training rows (the validation rows held out), standardised by their statistics.
  x_train, y_train = task.train.arrays["input"], task.train.arrays["label"]
  x_test, y_test = task.test["input"], task.test["label"]
  probs_SxNx2 = member_probs(task, state, x_test)

  def score(probs_Nx2):
    return calibration.binary_scores(probs_Nx2, y_test, positive=DEFAULT)

  rows = {
    f"MLP 64x2, dl.train ({len(probs_SxNx2)} seeds)": (
      [score(p) for p in probs_SxNx2],
      mlp_seconds,
    )
  }
  peers = {
    "HistGradientBoostingClassifier (scikit-learn)": HistGradientBoostingClassifier(
      max_iter=10 if tiny else 100, random_state=0
    ),
    "LogisticRegression (scikit-learn)": LogisticRegression(max_iter=1000),
  }
  for name, model in peers.items():
    # One OpenMP thread: on a shared 2-core machine its spin-waiting made the boosting 25x slower.
    with threadpoolctl.threadpool_limits(limits=1):
      fitted, seconds = _timed(lambda m=model: m.fit(x_train, y_train))
    rows[name] = ([score(fitted.predict_proba(x_test))], seconds)
  default_rate = float(np.mean(y_test == DEFAULT))
  text = table(rows) + (
    f"\n\ntrain {len(y_train)} / validation {len(task.eval['label'])} (chooses the MLP's "
    f"checkpoint) / test {len(y_test)} applicants; default rate on test "
    f"{default_rate:.4f} (the PR-AUC of a random ranking); {int(np.max(state.step))} MLP steps; "
    "wall s: training (the MLP's with start-up and compilation; scikit-learn's on one thread)."
  )
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/credit_default")
  parser.add_argument("--seeds", type=int, default=5, help="MLPs trained as one vmapped ensemble")
  parser.add_argument("--tiny", action="store_true", help="a few steps, for tests")
  args = parser.parse_args(argv)
  config = mlp_config()
  config.fit.ensemble_size = args.seeds
  config.fit.progress = False
  if args.tiny:
    config.fit.num_steps = 4
    config.fit.eval_every = 4
    config.fit.log_every = 2
    config.fit.tensorboard = False
  print(run(config, args.workdir, tiny=args.tiny), flush=True)


if __name__ == "__main__":
  main()
