r"""FedAvg over 20 simulated clients on `digits`, IID and non-IID, beside centralised training.

get_config() is the model and data, trained centrally by dl.train:
python -m dl.cli.train --config experiments/federated_digits.py --workdir workdirs/central_digits

The table of experiments/results_federated.md (centralised, then FedAvg/FedProx per split):
python experiments/federated_digits.py --workdir workdirs/federated_digits --seeds 3

Each federated run is `dl.fit` of `dl.trust.federated.federate(...)`: one step of the loop is one
communication round, so every run keeps checkpoints in its workdir and resumes exactly.
`--tiny` runs a few steps and rounds (for tests).
"""

import argparse
import os
import time

import ml_collections
import optax

import dl
from dl.trust import federated


def get_config():
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 128
  config.model.depth = 2
  config.fit.batch_size = 32
  config.fit.num_epochs = 30
  config.learning_rate = 3e-3
  config.fit.log_every = 20
  # dl's default hold-out: 10% of the training digits (144) are validation data, read at
  # every evaluation and choosing the checkpoint; the clients hold the other 1,293. The test
  # split is scored once, on that checkpoint.
  return config


def federated_config(tiny: bool = False):
  """FedAvg's settings; the model, data and local batch size come from `get_config()`."""
  return ml_collections.ConfigDict(
    {
      "num_clients": 20,
      "clients_per_round": 10,
      "rounds": 10 if tiny else 100,
      "eval_every": 1 if tiny else 10,
      "local_steps": 2 if tiny else 10,
      "local_learning_rate": 0.05,
      "local_momentum": 0.9,
      "splits": ("iid", 1.0, 0.1),  # "iid" or a Dirichlet alpha
      "fedprox_mu": 0.1,  # also run FedProx on the most skewed split
      "seed": 0,
    }
  )


def _clients(labels, split, fed):
  if split == "iid":
    return federated.iid_split(len(labels), fed.num_clients, seed=fed.seed)
  return federated.dirichlet_split(labels, fed.num_clients, split, seed=fed.seed)


def _fedavg(task, split, fed, workdir, mu=0.0):
  """One federated run through `dl.fit`: validation accuracy by round, test accuracy (once, on
  the best validation checkpoint), client sizes and wall time."""
  clients = _clients(task.train.arrays["label"], split, fed)
  rounds = federated.federate(
    task,
    clients,
    clients_per_round=fed.clients_per_round,
    local_steps=fed.local_steps,
    local_tx=optax.sgd(fed.local_learning_rate, momentum=fed.local_momentum),
    mu=mu,
  )
  start = time.perf_counter()
  _, history = dl.fit(
    rounds,
    workdir,
    num_steps=fed.rounds,
    batch_size=task.config["fit"]["batch_size"],
    eval_every=fed.eval_every,
    log_every=fed.eval_every,
    seed=fed.seed,
    progress=False,
    tensorboard=False,
  )
  sizes = sorted(len(c) for c in clients)
  validation = {r["step"]: r["accuracy"] for r in history["eval"]}
  return validation, history["test"][-1]["accuracy"], sizes, time.perf_counter() - start


def _summary(accuracies):
  mean = sum(accuracies) / len(accuracies)
  return f"{mean:.2%}" + (
    f" ({min(accuracies):.2%}-{max(accuracies):.2%})" if len(accuracies) > 1 else ""
  )


def _central(config, workdir, seeds):
  """Test accuracy of `dl.train` per seed (best validation checkpoint), and the mean wall time."""
  start, accuracies = time.perf_counter(), []
  for seed in range(seeds):
    config.fit.seed = seed
    _, history = dl.train(config, os.path.join(workdir, f"central_seed{seed}"))
    accuracies.append(history["test"][-1]["accuracy"])
  return accuracies, (time.perf_counter() - start) / seeds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/federated_digits")
  parser.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1: init, split, sampling")
  parser.add_argument("--tiny", action="store_true", help="a few steps and rounds, for tests")
  args = parser.parse_args()
  config, fed = get_config(), federated_config(args.tiny)
  config.fit.progress, config.fit.tensorboard = False, False
  if args.tiny:
    config.fit.num_steps, config.fit.eval_every = 20, 10
  task = dl.build(config)
  central, wall = _central(config, args.workdir, args.seeds)
  marks = (fed.rounds // 5, fed.rounds // 2)
  length = f"{config.fit.num_steps} steps" if args.tiny else f"{config.fit.num_epochs:g} epochs"
  print(
    f"| training | client data (sizes, seed 0) | test accuracy | validation accuracy at rounds "
    f"{marks[0]} / {marks[1]} | wall s |\n|---|---|---|---|---|\n"
    f"| centralised, dl.train, {length} | all {len(task.train):,} | {_summary(central)} | | "
    f"{wall:.0f} |",
    flush=True,
  )
  runs = [(split, 0.0) for split in fed.splits] + [(fed.splits[-1], fed.fedprox_mu)]
  for split, mu in runs:
    finals, at, walls, sizes = [], ([], []), [], None
    name = f"FedProx mu={mu}" if mu else "FedAvg"
    data = "IID" if split == "iid" else f"Dirichlet alpha={split}"
    for seed in range(args.seeds):
      fed.seed = seed
      run = f"{'fedprox' if mu else 'fedavg'}_{'iid' if split == 'iid' else f'alpha{split}'}"
      workdir = os.path.join(args.workdir, f"{run}_seed{seed}")
      validation, test, seed_sizes, wall = _fedavg(task, split, fed, workdir, mu)
      sizes = sizes or seed_sizes
      finals.append(test)
      for column, mark in zip(at, marks):
        column.append(validation[mark])
      walls.append(wall)
    print(
      f"| {name}, {fed.rounds} rounds | {data} ({sizes[0]}-{sizes[-1]}) | {_summary(finals)} | "
      f"{_summary(at[0])} / {_summary(at[1])} | {sum(walls) / len(walls):.0f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
