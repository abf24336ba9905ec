"""Optuna's samplers (TPE, CMA-ES) asking for a batch of trials that train as one population.

Optuna does the sampling through its ask-and-tell interface; dl trains the asked trials
together. Every `trial_steps` the population's trials end: each is told its validation
metric, Optuna is asked for as many new ones, and every slot restarts from the initial
state with a new trial. To resume exactly, the study is rebuilt before each ask from the
trials told so far (with their system attributes, where CMA-ES keeps its state), with a
sampler seeded from (seed, round): the same history gives the same asks.

The best trial so far may have left the population when the search ends, so each trial
that improves on the best is saved (`best_trials/<trial>` in the workdir) for the test
score at the end.
"""

import logging
import os
from typing import Any

import jax
import numpy as np

from dl.core.checkpoint import Checkpointer
from dl.search import space as space_lib
from dl.search.population import Search, Slots
from dl.training import protocols

SAMPLERS = ("tpe", "cmaes")


def _optuna():
  try:
    import optuna  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "the 'tpe' and 'cmaes' searches use Optuna's samplers; install them with: "
      "pip install optuna cmaes"
    ) from e
  optuna.logging.set_verbosity(logging.WARNING)
  return optuna


def distributions(space: space_lib.Space) -> dict[str, Any]:
  """The space as Optuna distributions."""
  optuna = _optuna()
  out = {}
  for name, dist in space.items():
    if isinstance(dist, space_lib.LogUniform):
      out[name] = optuna.distributions.FloatDistribution(dist.low, dist.high, log=True)
    elif isinstance(dist, space_lib.Uniform):
      out[name] = optuna.distributions.FloatDistribution(dist.low, dist.high)
    else:
      out[name] = optuna.distributions.CategoricalDistribution(tuple(map(float, dist.values)))
  return out


class OptunaTrials(Search):
  """Batches of Optuna trials as a hook of the one loop (see the module's docstring).

  Args:
    space: the search space, given to Optuna as its distributions.
    slots: writes trials into the population's state.
    num_slots: trials asked for at once (the population).
    metric: the validation metric Optuna is told.
    mode: whether "max" or "min" of `metric` is better.
    num_steps: the population's steps in all: a multiple of `trial_steps`.
    trial_steps: the steps of every trial.
    sampler: "tpe" or "cmaes".
    seed: seeds the sampler of each round (with the round).
    workdir: where the best trials' states are kept.
  """

  name = "optuna"

  def __init__(
    self,
    space: space_lib.Space,
    slots: Slots,
    *,
    num_slots: int,
    metric: str,
    mode: str,
    num_steps: int,
    trial_steps: int,
    sampler: str = "tpe",
    seed: int = 0,
    workdir: str,
  ):
    if sampler not in SAMPLERS:
      raise ValueError(f"unknown Optuna sampler {sampler!r}; expected one of {SAMPLERS}.")
    if trial_steps <= 0 or num_steps % trial_steps:
      raise ValueError(
        f"num_steps ({num_steps}) must be a multiple of trial_steps ({trial_steps}) > 0."
      )
    self.space, self.sampler, self.seed, self.trial_steps = space, sampler, seed, trial_steps
    self.distributions = distributions(space)
    self.best_dir = os.path.join(workdir, "best_trials")
    self.best: int | None = None
    self.mode = mode  # `ask` needs it before `Search.__init__` sets it.
    self.trials = []
    asked = self.ask(num_slots)
    super().__init__(slots, [params for params, _ in asked], metric, mode, num_steps)
    for trial, (_, attrs) in zip(self.trials, asked):
      trial["system_attrs"] = attrs

  def ask(self, n: int) -> list[tuple[dict[str, float], dict[str, Any]]]:
    """`n` new trials' (hyperparameters, Optuna system attributes), from the trials told."""
    optuna = _optuna()
    round_ = sum(1 for t in self.trials if t.get("value") is not None) // max(n, 1)
    seed = int(np.random.default_rng((self.seed, round_)).integers(2**31))
    if self.sampler == "tpe":
      # The first batch is drawn at random; from the second on, TPE models what was told.
      sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n, constant_liar=True)
    else:
      # One CMA-ES generation per batch. A `Choice` is drawn at random beside CMA-ES, which
      # handles continuous hyperparameters only.
      sampler = optuna.samplers.CmaEsSampler(
        seed=seed, popsize=n, n_startup_trials=0, warn_independent_sampling=False
      )
    direction = "maximize" if self.mode == "max" else "minimize"
    study = optuna.create_study(direction=direction, sampler=sampler)
    for told in (t for t in self.trials if t.get("value") is not None):
      study.add_trial(
        optuna.trial.create_trial(
          params=told["hparams"],
          distributions=self.distributions,
          value=told["value"],
          system_attrs=told["system_attrs"],
        )
      )
    asked = [study.ask(self.distributions) for _ in range(n)]
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    return [
      ({k: float(v) for k, v in t.params.items()}, dict(frozen[t.number].system_attrs))
      for t in asked
    ]

  def after_eval(self, state: Any, step: int, metrics: protocols.Metrics) -> Any:
    self.record(step, metrics)
    if step % self.trial_steps:
      return state
    for slot, t in enumerate(self.slot_trial):
      trial = self.trials[t]
      value = trial["validation"]
      trial["value"] = value if np.isfinite(value) else (-1e30 if self.mode == "max" else 1e30)
      if self.best is None or self.score(value) > self.score(self.trials[self.best]["validation"]):
        self.best = t
        self.save_best(t, Slots.member(state, slot))
    if step >= self.num_steps:
      return state
    for slot, (params, attrs) in enumerate(self.ask(len(self.slot_trial))):
      self.slot_trial[slot] = self.add_trial(params, slot, step, system_attrs=attrs)
      state = self.slots.refill(state, slot)
    return self.on_start(state, step)

  def save_best(self, trial: int, member: Any) -> None:
    """Keeps the state of a trial that improved on the best (once; a resumed run may redo it)."""
    ckpt = Checkpointer(self.best_dir, keep=1_000_000, async_saves=False)
    try:
      if trial not in ckpt.all_steps():
        ckpt.save(trial, jax.device_get(member), {})
    finally:
      ckpt.close()

  def chosen(self, state: Any) -> tuple[int, Any]:
    del state
    ckpt = Checkpointer(self.best_dir, keep=1_000_000, async_saves=False)
    try:
      member = self.slots.abstract_member()
      _, restored, _ = ckpt.restore(member, self.best)
    finally:
      ckpt.close()
    return self.best, restored

  def get_state(self) -> dict[str, Any]:
    return super().get_state() | {"best": self.best}

  def set_state(self, state: dict[str, Any]) -> None:
    super().set_state(state)
    self.best = state["best"]
