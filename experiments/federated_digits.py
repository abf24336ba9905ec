r"""FedAvg over 20 simulated clients on `digits`, IID and non-IID, beside centralised training.

get_config() is the model and data, trained centrally by dl.train:
python -m dl.cli.train --config experiments/federated_digits.py --workdir workdirs/central_digits

The table of experiments/results_federated.md (centralised, then FedAvg/FedProx per split):
python experiments/federated_digits.py --workdir workdirs/federated_digits
"""

import argparse
import os
import time

import ml_collections
import optax

import dl
from dl import federated


def get_config():
  config = dl.default_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.width = 128
  config.model.depth = 2
  config.batch_size = 32
  config.num_epochs = 30
  config.learning_rate = 3e-3
  config.log_every_steps = 20
  return config


def federated_config():
  """FedAvg's settings; the model, data and local batch size come from `get_config()`."""
  return ml_collections.ConfigDict(
    {
      "num_clients": 20,
      "clients_per_round": 10,
      "rounds": 100,
      "local_steps": 10,
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


def _fedavg(task, split, fed, mu=0.0):
  clients = _clients(task.train["label"], split, fed)
  start = time.perf_counter()
  _, history = federated.train_federated(
    task,
    clients,
    rounds=fed.rounds,
    clients_per_round=fed.clients_per_round,
    local_steps=fed.local_steps,
    local_tx=optax.sgd(fed.local_learning_rate, momentum=fed.local_momentum),
    mu=mu,
    seed=fed.seed,
    eval_every=10,
  )
  sizes = sorted(len(c) for c in clients)
  return history, sizes, time.perf_counter() - start


def _summary(accuracies):
  mean = sum(accuracies) / len(accuracies)
  return f"{mean:.2%}" + (
    f" ({min(accuracies):.2%}-{max(accuracies):.2%})" if len(accuracies) > 1 else ""
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/federated_digits")
  parser.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1: init, split, sampling")
  args = parser.parse_args()
  config, fed = get_config(), federated_config()
  config.progress = False
  start, central = time.perf_counter(), []
  for seed in range(args.seeds):
    config.seed = seed
    _, history = dl.train(config, os.path.join(args.workdir, f"central_seed{seed}"))
    central.append(history["eval"][-1]["accuracy"])
  wall = (time.perf_counter() - start) / args.seeds
  print("| training | client data (sizes, seed 0) | test accuracy | at rounds 20 / 50 | wall s |")
  print("|---|---|---|---|---|")
  print(f"| centralised, dl.train, 30 epochs | all 1,437 | {_summary(central)} | | {wall:.0f} |")
  task = dl.build(config)
  runs = [(split, 0.0) for split in fed.splits] + [(fed.splits[-1], fed.fedprox_mu)]
  for split, mu in runs:
    finals, at20, at50, walls, sizes = [], [], [], [], None
    for seed in range(args.seeds):
      fed.seed = seed
      history, seed_sizes, wall = _fedavg(task, split, fed, mu)
      sizes = sizes or seed_sizes
      finals.append(history[-1]["accuracy"])
      at20.append(history[1]["accuracy"])
      at50.append(history[4]["accuracy"])
      walls.append(wall)
    name = f"FedProx mu={mu}" if mu else "FedAvg"
    data = "IID" if split == "iid" else f"Dirichlet alpha={split}"
    print(
      f"| {name}, {fed.rounds} rounds | {data} ({sizes[0]}-{sizes[-1]}) | {_summary(finals)} | "
      f"{_summary(at20)} / {_summary(at50)} | {sum(walls) / len(walls):.0f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
