"""What a search writes: one row per trial (`trials.csv`, `trials.jsonl`) and its plots.

`trials.png` draws each trial's validation metric against its own training steps, the chosen
trial bold; for PBT, `schedules.png` draws each member's hyperparameters over the run.
"""

import csv
import json
import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dl.search.pbt import PopulationBasedTraining
from dl.search.population import Search
from dl.search.space import LogUniform

_HIDDEN = ("hparams", "curve", "system_attrs", "value", "validation", "best_validation")


def rows(hook: Search, metric: str) -> list[dict[str, Any]]:
  """One row per trial: hyperparameters, steps, validation metric, the algorithm's fields."""
  return [
    {"trial": t["trial"], **t["hparams"], "steps": t["steps"]}
    | {f"validation_{metric}": t["validation"], f"best_validation_{metric}": t["best_validation"]}
    | {k: v for k, v in t.items() if k not in _HIDDEN and k not in ("trial", "steps")}
    for t in hook.trials
  ]


def write(
  workdir: str, table: list[dict[str, Any]], best: int, hook: Search, metric: str, title: str
) -> None:
  """The trial table (`best` marked chosen), `trials.png` and, for PBT, `schedules.png`."""
  write_table(workdir, [{**row, "chosen": i == best} for i, row in enumerate(table)])
  plot_trials(hook, best, metric, title, os.path.join(workdir, "trials.png"))
  if isinstance(hook, PopulationBasedTraining):
    plot_schedules(hook, os.path.join(workdir, "schedules.png"))


def write_table(workdir: str, table: list[dict[str, Any]]) -> None:
  """`trials.jsonl` and `trials.csv`: one row per trial."""
  with open(os.path.join(workdir, "trials.jsonl"), "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in table)
  fields = list(dict.fromkeys(k for row in table for k in row))
  with open(os.path.join(workdir, "trials.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(table)


def plot_trials(hook: Search, best: int, metric: str, title: str, path: str) -> None:
  """Validation `metric` against each trial's own training steps; the chosen one bold."""
  fig = Figure(figsize=(7, 4.5))  # a bare Figure: headless, the user's backend left alone
  ax = fig.subplots()
  many = len(hook.trials) > 12
  for trial in hook.trials:
    if not trial["curve"]:
      continue
    steps, values = np.array([c[1] for c in trial["curve"]]), [c[2] for c in trial["curve"]]
    chosen = trial["trial"] == best
    label = ", ".join(f"{k}={v:.3g}" for k, v in trial["hparams"].items())
    ax.plot(
      steps,
      values,
      "o-" if chosen else "-",
      color="black" if chosen else None,
      linewidth=2.5 if chosen else 1.0,
      alpha=1.0 if chosen else 0.5,
      label=f"{label} (chosen)" if chosen else (None if many else label),
    )
  ax.set_xlabel("training steps of the trial")
  ax.set_ylabel(f"validation {metric}")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_schedules(hook: PopulationBasedTraining, path: str) -> None:
  """Each PBT member's hyperparameters over the run's steps, one panel per hyperparameter."""
  names = list(hook.slots.names)
  fig = Figure(figsize=(7, 2.6 * len(names)))
  axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
  for slot, points in hook.schedules().items():
    steps = [p[0] for p in points] + [hook.num_steps]
    for ax, name in zip(axes, names):
      values = [p[1][name] for p in points]
      ax.step(steps, values + values[-1:], where="post", label=f"member {slot}")
  for ax, name in zip(axes, names):
    ax.set_ylabel(name)
    if isinstance(hook.space[name], LogUniform):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0].set_title("PBT: each member's hyperparameters over time")
  axes[0].legend(fontsize=7, ncol=4)
  axes[-1].set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
