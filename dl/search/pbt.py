"""Population-based training (PBT; Jaderberg et al., 2017) inside one stacked state.

At each evaluation but the last, the members in the worst `fraction` by validation copy
the whole state of a member drawn from the best `fraction` (exploit: parameters, optimizer
state, its place in the schedule) and then perturb the hyperparameters they copied
(explore): each is multiplied by 0.8 or 1.25 (kept inside the space; a `Choice` moves to a
neighbouring value) or, with `resample_probability`, drawn afresh. A member's stretch of
training with one set of hyperparameters is one row of the trial table, with its parent.
"""

from typing import Any

import numpy as np

from dl.search import space as space_lib
from dl.search.population import Search, Slots
from dl.training import protocols

FACTORS = (0.8, 1.25)


class PopulationBasedTraining(Search):
  """PBT as a hook of the one loop (see the module's docstring).

  Args:
    space: the first hyperparameters are drawn from it (seed `seed`), and explored in it.
    slots: writes the members' hyperparameters into the population's state.
    num_slots: members of the population.
    metric: the validation metric that decides.
    mode: whether "max" or "min" of `metric` is better.
    num_steps: the population's steps in all.
    fraction: the share of members replaced at each evaluation (at least one).
    resample_probability: the chance that explore draws a hyperparameter afresh.
    seed: seeds the first draws and every exploit and explore decision (with the step).
  """

  name = "pbt"

  def __init__(
    self,
    space: space_lib.Space,
    slots: Slots,
    *,
    num_slots: int,
    metric: str,
    mode: str,
    num_steps: int,
    fraction: float = 0.25,
    resample_probability: float = 0.25,
    seed: int = 0,
  ):
    if num_slots < 2 or not 0 < fraction <= 0.5:
      raise ValueError(
        f"PBT needs 2 or more members and 0 < fraction <= 0.5; got {num_slots}, {fraction}."
      )
    self.space, self.seed = space, seed
    self.fraction, self.resample_probability = fraction, resample_probability
    trials = space_lib.sample(space, num_slots, seed=seed)
    super().__init__(slots, trials, metric, mode, num_steps)
    for trial in self.trials:
      trial |= {"generation": 0, "parent": None, "from_step": 0}

  def after_eval(self, state: Any, step: int, metrics: protocols.Metrics) -> Any:
    values = self.record(step, metrics)
    if step >= self.num_steps:
      return state
    ranked = sorted(range(len(values)), key=lambda s: self.score(values[s]), reverse=True)
    n = max(1, int(self.fraction * len(ranked)))
    rng = np.random.default_rng((self.seed, step))
    for target in ranked[-n:]:
      source = int(rng.choice(ranked[:n]))
      parent = self.trials[self.slot_trial[source]]
      hparams = self.explore(parent["hparams"], rng)
      state = Slots.copy(state, source, target)
      self.slot_trial[target] = self.add_trial(
        hparams,
        target,
        step,
        generation=parent["generation"] + 1,
        parent=parent["trial"],
        from_step=step,
      )
      # The copy goes on from the parent's curve: its steps count from the parent's start.
      self.trials[-1]["start_step"] = parent["start_step"]
      self.trials[-1]["steps"] = parent["steps"]
    return self.on_start(state, step)

  def explore(self, hparams: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """Perturbed (or, now and then, redrawn) hyperparameters."""
    explored = {}
    for name in sorted(hparams):
      dist = self.space[name]
      if rng.random() < self.resample_probability:
        explored[name] = float(dist.sample(rng, 1)[0])
      else:
        explored[name] = dist.perturb(hparams[name], float(rng.choice(FACTORS)))
    return explored

  def schedules(self) -> dict[int, list[tuple[int, dict[str, float]]]]:
    """Each member's hyperparameters over time: {slot: [(from step, hyperparameters)]}."""
    out: dict[int, list[tuple[int, dict[str, float]]]] = {}
    for trial in self.trials:
      out.setdefault(trial["slot"], []).append((trial["from_step"], trial["hparams"]))
    return {slot: sorted(points, key=lambda p: p[0]) for slot, points in sorted(out.items())}
