"""A search's population: which trial each member (slot) trains, inside one stacked state.

Every search algorithm here is a `dl.Hook` over this bookkeeping. The loop trains K slots as
one vmapped program; at evaluations the hook records each slot's validation metric and may
stop a trial and start another in its slot (`refill`), or copy one member over another
(`copy`). Both only write arrays into the stacked state, so the compiled step is reused
as it is. The hook's records travel in every checkpoint (`get_state`/`set_state`), so a
search resumed after kill -9 takes the same decisions.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from dl.training import optim, protocols


class Slots:
  """Writes trials into the stacked state of a population.

  Args:
    names: the hyperparameters the search sets (injected into the optimizer state).
    init: () -> one member's initial state, the same for every trial (a state with `step`).
  """

  def __init__(self, names: Sequence[str], init: Callable[[], Any]):
    self.names = tuple(names)
    self._init = init
    self._fresh = None

  def with_hyperparams(self, state: Any, hparams: Sequence[dict[str, float]]) -> Any:
    """`state` with slot i's hyperparameters set to `hparams[i]`."""
    columns = {name: np.array([h[name] for h in hparams]) for name in self.names}
    return optim.set_hyperparams(state, **columns)

  def refill(self, state: Any, slot: int) -> Any:
    """`state` with `slot` restarted from the initial state (its step count kept)."""
    if self._fresh is None:  # Computed once: every trial starts from the same initial state.
      self._fresh = jax.device_get(jax.jit(self._init)())
    fresh = self._fresh.replace(step=state.step[slot])
    return jax.tree.map(lambda members, x: members.at[slot].set(x), state, fresh)

  def abstract_member(self) -> Any:
    """One member's shapes and dtypes, on the first local device (what to restore into)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), jax.eval_shape(self._init)
    )

  @staticmethod
  def copy(state: Any, source: int, target: int) -> Any:
    """`state` with member `target` replaced by a copy of member `source`."""
    return jax.tree.map(lambda members: members.at[target].set(members[source]), state)

  @staticmethod
  def member(state: Any, slot: int) -> Any:
    """One member's state, out of the stacked state."""
    return jax.tree.map(lambda members: members[slot], state)


class Search(protocols.Hook):
  """Records of a search's trials; with no decisions of its own, it is random search.

  Args:
    slots: writes trials into the population's state.
    trials: hyperparameters of the first trials, one per slot.
    metric: the validation metric that decides; `mode` "max" or "min" says which is better.
    num_steps: the steps the population trains in all.
  """

  name = "random"

  def __init__(
    self, slots: Slots, trials: Sequence[dict[str, float]], metric: str, mode: str, num_steps: int
  ):
    self.slots, self.metric, self.mode, self.num_steps = slots, metric, mode, num_steps
    self.trials: list[dict[str, Any]] = []
    self.slot_trial: list[int] = []
    for slot, hparams in enumerate(trials):
      self.slot_trial.append(self.add_trial(hparams, slot, 0))

  def add_trial(self, hparams: dict[str, float], slot: int, step: int, **extra) -> int:
    """Records a new trial that `slot` trains from `step`; returns its number."""
    self.trials.append(
      {"trial": len(self.trials), "hparams": dict(hparams), "slot": slot, "start_step": step}
      | {"steps": 0, "validation": None, "best_validation": None, "curve": [], **extra}
    )
    return len(self.trials) - 1

  def on_start(self, state: Any, step: int) -> Any:
    del step
    return self.slots.with_hyperparams(state, [self.trials[t]["hparams"] for t in self.slot_trial])

  def after_eval(self, state: Any, step: int, metrics: protocols.Metrics) -> Any:
    self.record(step, metrics)
    return state

  def record(self, step: int, metrics: protocols.Metrics) -> list[float]:
    """Notes each slot's validation value at `step` in its trial's record; returns them."""
    values = [float(v) for v in np.atleast_1d(metrics[self.metric])]
    for slot, t in enumerate(self.slot_trial):
      trial = self.trials[t]
      trial["steps"] = step - trial["start_step"]
      trial["validation"] = values[slot]
      trial["best_validation"] = self.better(values[slot], trial["best_validation"])
      trial["curve"].append([step, trial["steps"], values[slot]])
    return values

  def better(self, a: float, b: float | None) -> float:
    """The better of two values (NaN and None lose)."""
    if b is None or np.isnan(b):
      return a
    if np.isnan(a):
      return b
    return max(a, b) if self.mode == "max" else min(a, b)

  def score(self, value: float | None) -> float:
    """Higher is better, whatever the mode; NaN and None score -inf."""
    if value is None or np.isnan(value):
      return -np.inf
    return value if self.mode == "max" else -value

  def chosen(self, state: Any) -> tuple[int, Any]:
    """(trial, its final state): the best on validation of the trials the slots hold."""
    slot = max(
      range(len(self.slot_trial)),
      key=lambda s: self.score(self.trials[self.slot_trial[s]]["validation"]),
    )
    return self.slot_trial[slot], Slots.member(state, slot)

  def get_state(self) -> dict[str, Any]:
    return {"trials": self.trials, "slot_trial": self.slot_trial}

  def set_state(self, state: dict[str, Any]) -> None:
    self.trials, self.slot_trial = state["trials"], state["slot_trial"]
