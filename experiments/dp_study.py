r"""DP-SGD on Poisson-sampled batches: test accuracy, epsilon (PLD and RDP) and an audited
lower bound on epsilon, for several noise levels, on `digits` and on `credit`.

For every noise multiplier and seed, two runs:
- an accuracy run: the config of `dp_digits_mlp.py` / `credit_fairness_mlp.py` (the checkpoint
  best on validation, scored once on test); epsilon at delta = 1e-5 from `dp_accounting`:
  PLD for the truncated Poisson sampling that ran, RDP for untruncated Poisson sampling;
- an audit run (Steinke, Nasr, Jagielski 2023): the same training with 256 canaries (training
  examples given a wrong label), each in or out of the data by a coin flip; minus each canary's
  loss scores membership; the top and bottom 32 are guessed in and out; the bound holds with
  95% confidence.

python experiments/dp_study.py --dataset digits --seeds 3
python experiments/dp_study.py --dataset credit --seeds 3
(--sampling shuffle: the old fixed-size shuffled batches, which the epsilon does not cover.)
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

import dl
from dl.recipes import from_config
from dl.trust import privacy
from dl.trust.privacy import audit

sys.path.insert(0, os.path.dirname(__file__))
import credit_fairness_mlp
import dp_digits_mlp

NOISE_MULTIPLIERS = (0.0, 0.7, 1.0, 1.5, 2.5, 4.0)
NUM_CANARIES = 256


def config_for(dataset: str, num_steps: int = 0):
  """The study's config on `dataset` (`num_steps` > 0: shortened, for a smoke test)."""
  if dataset == "digits":
    config = dp_digits_mlp.get_config()
  else:
    config = credit_fairness_mlp.get_config()
    config.group_feature = ""
    config.dp_l2_clip = 1.0
    config.dp_delta = 1e-5
    config.fit.log_every = 100
  if num_steps:
    config.fit.num_steps = config.fit.log_every = num_steps
  return config


def audited_run(config, workdir: str) -> audit.AuditResult:
  """Trains `config` with canaries inserted; audits the final parameters."""
  task = from_config.build(config)
  arrays = dict(task.train.arrays)
  num_classes = int(arrays["label"].max()) + 1
  train, canaries, included = audit.insert_canaries(
    arrays, NUM_CANARIES, num_classes=num_classes, seed=config.fit.seed
  )
  if isinstance(task.train, privacy.PoissonData):
    data = privacy.PoissonData(train, max_batch_size=task.train.max_batch_size)
  else:
    data = dl.data.sources.InMemory(train)
  task = dataclasses.replace(task, train=data, eval=None, test=None)
  fit = dataclasses.replace(from_config.fit_config(config, task), progress=False)
  state, _ = dl.fit(task, workdir, fit)
  scores = audit.membership_scores(state, task.model, task.objective, canaries)
  return audit.lower_bound(scores, included, delta=config.dp_delta, k_in=32, k_out=32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", choices=("digits", "credit"), default="digits")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--seeds", type=int, default=1)
  parser.add_argument("--sampling", choices=("poisson", "shuffle"), default="poisson")
  parser.add_argument("--noise", type=float, nargs="*", default=NOISE_MULTIPLIERS)
  parser.add_argument("--num_steps", type=int, default=0, help="> 0: a short smoke run")
  args = parser.parse_args()
  workdir = args.workdir or f"workdirs/dp_study_{args.dataset}_{args.sampling}"
  print(
    "| noise multiplier | epsilon PLD | epsilon RDP | test accuracy | audited epsilon >= "
    "(mean, max) | max batch | wall s per run |"
  )
  print("|---|---|---|---|---|---|---|")
  for sigma in args.noise:
    accuracies, bounds, start = [], [], time.perf_counter()
    for seed in range(args.seeds):
      config = config_for(args.dataset, args.num_steps)
      config.dp_noise_multiplier, config.dp_sampling = sigma, args.sampling
      config.fit.seed, config.fit.progress, config.fit.tensorboard = seed, False, False
      run = os.path.join(workdir, f"sigma{sigma}_seed{seed}")
      _, history = dl.train(config, run)
      accuracies.append(history["test"][-1]["accuracy"])
      bounds.append(audited_run(config, run + "_audit").epsilon_lower_bound)
    task = from_config.build(config)
    pld, rdp, size = _epsilons(config, task)
    wall = (time.perf_counter() - start) / args.seeds / 2
    spread = f" ({min(accuracies):.2%}-{max(accuracies):.2%})" if args.seeds > 1 else ""
    print(
      f"| {sigma} | {pld} | {rdp} | {np.mean(accuracies):.2%}{spread} | "
      f"{np.mean(bounds):.2f}, {max(bounds):.2f} | {size} | {wall:.0f} |",
      flush=True,
    )


def _epsilons(config, task) -> tuple[str, str, str]:
  """The whole run's epsilon, PLD (truncated as run) and RDP, and the padded batch size."""
  if not config.dp_noise_multiplier:
    return "inf", "inf", "-"
  n = len(task.train)
  q = config.fit.batch_size * config.grad_accum_steps / n
  updates = from_config.fit_config(config, task).num_steps // config.grad_accum_steps
  size = getattr(task.train, "max_batch_size", None)
  sigma, delta = config.dp_noise_multiplier, config.dp_delta
  pld = privacy.epsilon(q, sigma, updates, delta, num_examples=n, max_batch_size=size)
  rdp = privacy.epsilon(q, sigma, updates, delta, accountant_name="rdp")
  if size is None:  # shuffled batches: the Poisson figures, which do not cover them
    return f"({pld:.2f}, not covered)", f"({rdp:.2f}, not covered)", "-"
  return f"{pld:.2f}", f"{rdp:.2f}", str(size)


if __name__ == "__main__":
  main()
