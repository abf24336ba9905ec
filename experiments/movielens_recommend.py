r"""Recommendation on MovieLens-100k: explicit ratings (RMSE) and implicit top-10 ranking.

python experiments/movielens_recommend.py --workdir workdirs/movielens_recommend

Writes the table of experiments/README.md to `results.md` in the workdir.

Explicit: the builder's random 80/20 split (80,000 / 20,000 ratings); biased matrix
factorisation and NeuMF regress the rating (dl.train, objective "regression"), beside the
global mean rating. Implicit: every rating is an interaction; each user's latest one is held
out (leave-one-out) and ranked among 99 items the user never rated (sampled with seed 0),
as in the NCF paper; NeuMF and MF learn from 4 sampled negatives per positive (binary
cross-entropy through dl.train_step), beside the most-popular baseline.
Needs `pip install --no-deps recbole==1.2.1` (the data ships in its wheel).
"""

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dl
from dl import recommend
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
  config.batch_size = 256
  config.num_epochs = 20
  config.best_metric = "loss"
  config.best_mode = "min"
  config.log_every_steps = 100
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
    "epochs": 1 if tiny else 10,
    "batch_size": 1024,
    "learning_rate": 2e-3,
    "seed": 0,
  }


def explicit_rows(train, test, workdir: str, tiny: bool) -> list[dict]:
  """RMSE on the test split of the global mean, MF and NeuMF (each trained by dl.train)."""
  mean_rmse = float(np.sqrt(np.mean((test["label"] - train["label"].mean()) ** 2)))
  rows = [{"model": "global mean rating", "rmse": mean_rmse, "wall": 0.0}]
  configs = {"matrix factorisation": explicit_config(), "NeuMF": neumf_config()}
  if tiny:  # one dl.train run; NeuMF is exercised by the implicit half
    configs = {"matrix factorisation": configs["matrix factorisation"]}
  for name, config in configs.items():
    config.progress = False
    if tiny:
      config.num_train_steps, config.num_epochs, config.tensorboard = 4, 0, False
    start = time.perf_counter()
    _, history = dl.train(config, os.path.join(workdir, f"explicit_{config.model.name}"))
    rmse = float(np.sqrt(history["eval"][-1]["mse"]))
    rows.append({"model": name, "rmse": rmse, "wall": time.perf_counter() - start})
  return rows


def leave_one_out_data(every, seed: int, num_negatives: int) -> dict[str, np.ndarray]:
  """Train pairs, each user's held-out item, its negatives, and who saw what."""
  ids = every["features"].astype(np.int32)
  split = recommend.leave_one_out(ids[:, 0], every["timestamp"])
  seen = recommend.interactions(ids, NUM_USERS, NUM_ITEMS)
  test = ids[split["test"]]
  negatives = recommend.sample_negatives(test[:, 0], seen, num_negatives, seed=seed)
  return {
    "train": ids[split["train"]],
    "users": test[:, 0],
    "candidates": recommend.candidates(test[:, 1], negatives),
    "seen": seen,
  }


def score_candidates(model, params, users_U, candidates_UxC) -> np.ndarray:
  """(U, C) scores of each user's candidate items."""
  users_UxC = np.broadcast_to(users_U[:, None], candidates_UxC.shape)
  ids = np.stack([users_UxC, candidates_UxC], axis=-1).reshape(-1, 2)
  logits = jax.jit(model.apply)({"params": params}, jnp.asarray(ids))
  return np.asarray(logits).reshape(candidates_UxC.shape)


def train_implicit(model, data, settings, workdir: str):
  """Trains `model` on sampled negatives with dl.train_step; saves the final state."""
  tx = optax.adam(settings["learning_rate"])
  key = jax.random.PRNGKey(settings["seed"])
  state = dl.create_train_state(model, tx, key, (2,), jnp.int32)
  step = jax.jit(
    functools.partial(
      dl.train_step, apply_fn=model.apply, tx=tx, objective=recommend.implicit_objective
    ),
    donate_argnames=("state",),
  )
  rng = np.random.default_rng(settings["seed"])
  size = settings["batch_size"]
  for _ in range(settings["epochs"]):
    ids, labels = recommend.training_pairs(
      data["train"], data["seen"], settings["num_negatives_train"], rng
    )
    for start in range(0, len(labels) - size + 1, size):
      batch = {"input": ids[start : start + size], "label": labels[start : start + size]}
      state, _ = step(state, batch)
  checkpointer = dl.Checkpointer(workdir)
  checkpointer.save(int(state.step), state, {"epochs": settings["epochs"]})
  checkpointer.wait()
  return state


def implicit_rows(every, workdir: str, tiny: bool) -> list[dict]:
  """HR@10 and NDCG@10 (1 held-out item among 100 candidates) of popularity, MF and NeuMF."""
  settings = implicit_settings(tiny)
  data = leave_one_out_data(every, settings["seed"], settings["num_negatives_eval"])
  counts = recommend.popularity(data["train"][:, 1], NUM_ITEMS)
  rows = [{"model": "most popular", **recommend.ranking_metrics(counts[data["candidates"]])}]
  models = {
    "matrix factorisation": dl.models.MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=32),
    "NeuMF": dl.models.NeuMF(NUM_USERS, NUM_ITEMS, dim=16, mlp_dims=(64, 32, 16)),
  }
  if tiny:  # one training loop; MF is exercised by the explicit half
    models = {"NeuMF": models["NeuMF"]}
  for name, model in models.items():
    start = time.perf_counter()
    slug = "implicit_mf" if isinstance(model, dl.models.MatrixFactorization) else "implicit_neumf"
    state = train_implicit(model, data, settings, os.path.join(workdir, slug))
    scores = score_candidates(model, state.params, data["users"], data["candidates"])
    wall = time.perf_counter() - start
    rows.append({"model": name, **recommend.ranking_metrics(scores), "wall": wall})
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
