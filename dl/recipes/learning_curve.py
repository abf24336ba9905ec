"""Learning curves: test accuracy against the number of training examples, over seeds.

For each fraction f of the training split, `learning_curve` trains on its first
round(f * N) examples (a TFDS split slice such as "train[:143]": TFDS stores a split in a
hashed, fixed order, so the subsets are nested and not sorted by class) with several seeds
at once, one `jax.vmap`ped ensemble (`config.fit.ensemble_size`, member i with seed
`config.fit.seed + i`: its own initialisation, dropout and data order), and evaluates each
member on the whole eval split. Every size trains for the same number of optimizer steps,
the full training set's budget, so small sets are not also under-trained.

  curve = dl.recipes.learning_curve.learning_curve(config, (0.1, 0.3, 1.0), seeds=5, workdir="lc")
  curve.mean, curve.std  # (F,): over seeds, per training-set size; lc/learning_curve.png
"""

import dataclasses
import json
import os
import re
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from dl import data as data_lib
from dl.recipes import config as config_lib
from dl.recipes import from_config


@dataclasses.dataclass(frozen=True)
class LearningCurve:
  """Eval metric per training-set size and seed.

  Attributes:
    dataset: the data set's name.
    metric: the eval metric recorded, e.g. "accuracy".
    train_sizes_F: (F,) training examples per point.
    values_FxS: (F, S) the metric of each seed's model on the eval split.
    num_steps: optimizer steps each model trained for.
  """

  dataset: str
  metric: str
  train_sizes_F: np.ndarray
  values_FxS: np.ndarray
  num_steps: int

  @property
  def mean(self) -> np.ndarray:
    """(F,) mean over seeds."""
    return self.values_FxS.mean(axis=1)

  @property
  def std(self) -> np.ndarray:
    """(F,) standard deviation over seeds (0 for one seed)."""
    return self.values_FxS.std(axis=1)

  def to_dict(self) -> dict:
    """The curve as plain JSON-ready values."""
    return {
      "dataset": self.dataset,
      "metric": self.metric,
      "train_sizes": self.train_sizes_F.tolist(),
      "values": self.values_FxS.tolist(),
      "num_steps": self.num_steps,
    }


def learning_curve(
  config,
  fractions: Sequence[float],
  seeds: int,
  workdir: str,
  *,
  metric: str = "accuracy",
) -> LearningCurve:
  """Trains on growing fractions of the training split; writes `learning_curve.png` and `.json`.

  Args:
    config: a `dl` config (ConfigDict, dict or `dl.TrainConfig`) whose `train_split` is a plain
      split name ("train"); `test_split` is the split every model is scored on (once, with
      the final model: nothing is chosen, so nothing is held out for validation).
    fractions: increasing fractions of the training split in (0, 1].
    seeds: models per size, trained together as one vmapped ensemble (seeds
      `config.fit.seed` .. `config.fit.seed + seeds - 1`).
    workdir: each size trains in `workdir/n<size>` (resumed if it holds checkpoints); the
      plot and the numbers go to `workdir/learning_curve.png` and `learning_curve.json`.
    metric: the test metric to record.

  Returns:
    The `LearningCurve`.

  Raises:
    ValueError: for a sliced `train_split`, fractions outside (0, 1] or seeds < 1.
  """
  c = config_lib.parse_config(config)
  _check_args(c, fractions, seeds)
  spec = data_lib.info(c.dataset, data_dir=c.data_dir or None)
  num_train = spec.splits[c.train_split]
  num_steps = c.fit.total_steps(num_train // c.fit.batch_size)
  sizes_F = np.array([max(1, round(f * num_train)) for f in fractions])
  values = []
  for size in sizes_F:
    member_config = _sized_config(c, int(size), num_steps, seeds)
    _, history = from_config.train(member_config, os.path.join(workdir, f"n{size}"))
    values.append(np.atleast_1d(history["test"][-1][metric]))
  curve = LearningCurve(c.dataset, metric, sizes_F, np.array(values, np.float64), num_steps)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "learning_curve.json"), "w") as f:
    json.dump(curve.to_dict(), f, indent=1)
  plot(curve, os.path.join(workdir, "learning_curve.png"))
  return curve


def _check_args(c: config_lib.TrainConfig, fractions: Sequence[float], seeds: int) -> None:
  if not re.fullmatch(r"[\w-]+", c.train_split):
    raise ValueError(
      f"learning_curve slices config.train_split itself, so it must be a plain split name "
      f"such as 'train'; got {c.train_split!r}."
    )
  if not fractions or any(not 0 < f <= 1 for f in fractions):
    raise ValueError(f"fractions must be non-empty and each in (0, 1]; got {tuple(fractions)}.")
  if seeds < 1:
    raise ValueError(f"seeds must be >= 1; got {seeds}.")


def _sized_config(
  c: config_lib.TrainConfig, size: int, num_steps: int, seeds: int
) -> config_lib.TrainConfig:
  """`c` training on the first `size` examples, `seeds` members, evaluated once at the end."""
  fit = dataclasses.replace(
    c.fit,
    batch_size=min(c.fit.batch_size, size),
    num_steps=num_steps,
    eval_every=num_steps,
    checkpoint_every=num_steps,
    log_every=min(c.fit.log_every, num_steps),
    ensemble_size=seeds,
  )
  # Nothing is chosen (fixed steps, the final model): no validation hold-out.
  return dataclasses.replace(
    c,
    train_split=f"{c.train_split}[:{size}]",
    validation_split="",
    validation_fraction=0.0,
    fit=fit,
  )


def plot(curve: LearningCurve, path: str, *, title: str = "") -> str:
  """Saves the curve (mean ± std over seeds against training-set size) as a PNG at `path`."""
  fig = Figure(figsize=(6, 4))  # A bare Figure: headless, leaves pyplot's backend alone.
  ax = fig.subplots()
  num_seeds = curve.values_FxS.shape[1]
  ax.errorbar(
    curve.train_sizes_F,
    curve.mean,
    yerr=curve.std,
    fmt="o-",
    capsize=4,
    label=f"mean ± std over {num_seeds} seed{'s' if num_seeds > 1 else ''}",
  )
  ax.set_xscale("log")
  ax.set_xlabel("training examples")
  ax.set_ylabel(f"test {curve.metric}")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  ax.set_title(title or f"{curve.dataset}: {curve.num_steps} steps per model")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
