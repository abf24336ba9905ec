"""A small training loop for pure steps on in-memory batches (autoencoders, VAEs, translators)."""

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import numpy as np

from dl.data.batches import ShuffledBatches


class Batches(Protocol):
  def next(self) -> dict[str, np.ndarray]: ...


class ZippedBatches:
  """Several batch streams as one: {name: stream.next()["input"]} (e.g. two image domains)."""

  def __init__(self, streams: Mapping[str, ShuffledBatches]):
    self._streams = dict(streams)

  def next(self) -> dict[str, np.ndarray]:
    return {name: stream.next()["input"] for name, stream in self._streams.items()}

  def get_state(self) -> dict[str, dict[str, int]]:
    return {name: stream.get_state() for name, stream in self._streams.items()}

  def set_state(self, state: Mapping[str, Mapping[str, int]]) -> None:
    for name, stream in self._streams.items():
      stream.set_state(state[name])


def fit(
  step: Callable[[Any, dict], tuple[Any, dict]],
  state: Any,
  batches: Batches,
  *,
  num_steps: int,
  log_every: int = 100,
) -> tuple[Any, list[dict[str, float]]]:
  """Runs `num_steps` of a pure `step(state, batch) -> (state, metrics)`, jitted here.

  Args:
    step: the pure step; its metrics are scalars.
    state: the initial state (donated: do not reuse it).
    batches: where batches come from, e.g. `dl.data.batches.ShuffledBatches(arrays, 64, seed=0)`.
    num_steps: steps to run.
    log_every: steps between history records (each holds that step's metrics).

  Returns:
    The final state and the history [{"step", **metrics}].
  """
  jitted = jax.jit(step, donate_argnums=0)
  history = []
  for i in range(1, num_steps + 1):
    state, metrics = jitted(state, batches.next())
    if i % log_every == 0 or i == num_steps:
      history.append({"step": i, **{k: float(v) for k, v in jax.device_get(metrics).items()}})
  return state, history
