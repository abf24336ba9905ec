"""Search spaces: the distributions a trial's hyperparameters are drawn from."""

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

# Hyperparameters that live in the optimizer state as arrays: every optimizer dl builds injects
# the learning rate and weight decay; a search injects the others it names where the optimizer
# has them (`dl.training.optim.hyperparams_of`: momentum for momentum and rmsprop, the Adam
# betas b1 and b2 for adam, adamw, lamb and lion).
SEARCHABLE = ("learning_rate", "weight_decay", "momentum", "b1", "b2")


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """Values whose logarithm is uniform on [log(low), log(high)] (rates, decays)."""

  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low < self.high:
      raise ValueError(f"LogUniform needs 0 < low < high; got low={self.low}, high={self.high}.")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` values, uniform in log between `low` and `high`."""
    return np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))

  def perturb(self, value: float, factor: float) -> float:
    """`value * factor`, kept inside [low, high]."""
    return float(np.clip(value * factor, self.low, self.high))


@dataclasses.dataclass(frozen=True)
class Uniform:
  """Values uniform on [low, high]."""

  low: float
  high: float

  def __post_init__(self):
    if not self.low < self.high:
      raise ValueError(f"Uniform needs low < high; got low={self.low}, high={self.high}.")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` values, uniform between `low` and `high`."""
    return rng.uniform(self.low, self.high, n)

  def perturb(self, value: float, factor: float) -> float:
    """`value * factor`, kept inside [low, high]."""
    return float(np.clip(value * factor, self.low, self.high))


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `values`, each equally likely."""

  values: Sequence[float]

  def __post_init__(self):
    if not self.values:
      raise ValueError("Choice needs at least one value.")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` values, each one of `values` with equal probability."""
    return np.asarray(self.values, np.float64)[rng.integers(0, len(self.values), n)]

  def perturb(self, value: float, factor: float) -> float:
    """The neighbouring value up (factor > 1) or down, in the order given."""
    values = list(map(float, self.values))
    i = values.index(value) if value in values else 0
    return values[min(max(i + (1 if factor > 1 else -1), 0), len(values) - 1)]


Space = Mapping[str, LogUniform | Uniform | Choice]


def sample(space: Space, num_trials: int, seed: int | Sequence[int] = 0) -> list[dict[str, float]]:
  """`num_trials` draws from `space`, the same for the same seed: [{name: value}, ...]."""
  check_space(space)
  rng = np.random.default_rng(seed)
  columns = {name: space[name].sample(rng, num_trials) for name in sorted(space)}
  return [{name: float(v[i]) for name, v in columns.items()} for i in range(num_trials)]


def grid(values: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
  """Every combination of `values` ({hyperparameter: values}), as trials for `train_trials`."""
  check_names(values)
  names = sorted(values)
  return [
    dict(zip(names, map(float, combo))) for combo in itertools.product(*map(values.get, names))
  ]


def check_names(names) -> None:
  """Raises ValueError unless every name is a hyperparameter that lives in the state."""
  if not names:
    raise ValueError(f"the search space is empty; give one or more of {', '.join(SEARCHABLE)}.")
  for name in names:
    if name not in SEARCHABLE:
      raise ValueError(
        f"cannot search over {name!r}: the searchable hyperparameters are "
        f"{', '.join(SEARCHABLE)} (they live in the optimizer state as arrays)."
      )


def check_space(space: Space) -> None:
  """Raises ValueError for an unknown name or a distribution dl does not know."""
  check_names(space)
  for name, dist in space.items():
    if not isinstance(dist, LogUniform | Uniform | Choice):
      raise ValueError(
        f"the space's {name!r} is {dist!r}; expected dl.search.LogUniform, Uniform or Choice."
      )
