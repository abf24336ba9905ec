"""Asynchronous successive halving (ASHA; Li et al., 2020) over a population's slots.

A trial is measured at rungs: after `min_steps`, `min_steps * reduction_factor`, ... steps
of its own training. Reaching a rung, it is stopped when its validation metric falls below
the best `1 / reduction_factor` of every value recorded at that rung so far (Ray Tune's
stopping rule), and its slot starts a new trial drawn from the space, from the initial
state. A trial that is never stopped trains to the end of the run, so the first trials can
use the whole budget and the later ones as much as is left.
"""

from typing import Any

import numpy as np

from dl.search import space as space_lib
from dl.search.population import Search, Slots
from dl.training import protocols


class SuccessiveHalving(Search):
  """ASHA as a hook of the one loop (see the module's docstring).

  Args:
    space: where new trials are drawn from; trial i from the seed (`seed`, i).
    slots: writes trials into the population's state.
    num_slots: members of the population.
    metric: the validation metric that decides.
    mode: whether "max" or "min" of `metric` is better.
    num_steps: the population's steps in all.
    min_steps: a trial's steps at the first rung: a multiple of the evaluation interval.
    reduction_factor: each rung keeps the best 1 / reduction_factor.
    seed: seeds the draws.
  """

  name = "asha"

  def __init__(
    self,
    space: space_lib.Space,
    slots: Slots,
    *,
    num_slots: int,
    metric: str,
    mode: str,
    num_steps: int,
    min_steps: int,
    reduction_factor: int = 3,
    seed: int = 0,
  ):
    if reduction_factor < 2 or min_steps <= 0:
      raise ValueError(
        f"ASHA needs reduction_factor >= 2 and min_steps > 0; got {reduction_factor}, {min_steps}."
      )
    self.space, self.seed, self.reduction_factor = space, seed, reduction_factor
    self.rung_steps = [min_steps * reduction_factor**k for k in range(64)]
    self.rung_steps = [s for s in self.rung_steps if s < num_steps]
    super().__init__(slots, [self.draw(i) for i in range(num_slots)], metric, mode, num_steps)
    for trial in self.trials:
      trial |= {"rung": -1, "status": "running"}
    self.rungs: list[list[float]] = [[] for _ in self.rung_steps]

  def draw(self, trial: int) -> dict[str, float]:
    """Trial `trial`'s hyperparameters, the same in every run of the same seed."""
    return space_lib.sample(self.space, 1, seed=(self.seed, trial))[0]

  def after_eval(self, state: Any, step: int, metrics: protocols.Metrics) -> Any:
    values = self.record(step, metrics)
    reached = []
    for slot, t in enumerate(self.slot_trial):
      trial = self.trials[t]
      if trial["steps"] in self.rung_steps:
        rung = self.rung_steps.index(trial["steps"])
        trial["rung"] = rung
        self.rungs[rung].append(values[slot])
        reached.append((slot, rung))
    stopped = [slot for slot, rung in reached if self.below_cutoff(values[slot], rung)]
    if step >= self.num_steps:
      for t in self.slot_trial:
        self.trials[t]["status"] = "finished"
      return state
    for slot in stopped:
      old = self.trials[self.slot_trial[slot]]
      old["status"] = f"stopped at rung {old['rung']}"
      new = len(self.trials)
      self.slot_trial[slot] = self.add_trial(self.draw(new), slot, step, rung=-1, status="running")
      state = self.slots.refill(state, slot)
    return self.on_start(state, step) if stopped else state

  def below_cutoff(self, value: float, rung: int) -> bool:
    """Whether `value` is outside the best 1 / reduction_factor recorded at `rung`."""
    scores = np.array([self.score(v) for v in self.rungs[rung]])
    finite = scores[np.isfinite(scores)]
    if not np.isfinite(self.score(value)):
      return True
    cutoff = np.percentile(finite, 100 * (1 - 1 / self.reduction_factor))
    return self.score(value) < cutoff

  def get_state(self) -> dict[str, Any]:
    return super().get_state() | {"rungs": self.rungs}

  def set_state(self, state: dict[str, Any]) -> None:
    super().set_state(state)
    self.rungs = state["rungs"]
