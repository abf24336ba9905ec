"""Hyperparameter search: trials drawn from a space train as one population."""

import csv
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import kill
import numpy as np
import optax
import pytest
from tiny_config import tiny_config

import dl
from dl import search
from dl.search import population

SPACE = {
  "learning_rate": search.LogUniform(3e-3, 0.1),
  "weight_decay": search.Choice((0.0, 1e-4, 1e-3)),
}


def test_draws_follow_the_space_and_the_seed():
  draws = search.sample(SPACE, 2000, seed=1)
  assert draws == search.sample(SPACE, 2000, seed=1)
  assert draws != search.sample(SPACE, 2000, seed=2)
  lrs = np.array([d["learning_rate"] for d in draws])
  assert lrs.min() >= 3e-3 and lrs.max() <= 0.1
  # log-uniform: the log is uniform, so half the draws fall below the geometric mean
  assert abs(np.mean(lrs < np.sqrt(3e-3 * 0.1)) - 0.5) < 0.05
  assert {d["weight_decay"] for d in draws} == {0.0, 1e-4, 1e-3}
  rng = np.random.default_rng(0)
  wide = search.Uniform(-1.0, 3.0).sample(rng, 2000)
  assert wide.min() >= -1.0 and wide.max() <= 3.0 and abs(wide.mean() - 1.0) < 0.1


def test_population_of_8_equals_8_separate_runs(tmp_path):
  config = tiny_config(optimizer="adamw")
  result = search.random_search(config, SPACE, str(tmp_path / "search"), num_trials=8, seed=0)
  drawn = search.sample(SPACE, 8, seed=0)
  assert [{k: t[k] for k in SPACE} for t in result.trials] == drawn
  for i, hparams in enumerate(drawn):
    alone, history = dl.train(tiny_config(optimizer="adamw", **hparams), str(tmp_path / f"t{i}"))
    member = jax.tree.map(lambda x, i=i: x[i], result.state.params)
    chex.assert_trees_all_close(member, alone.params, rtol=1e-5, atol=1e-5)
    assert result.trials[i]["validation_accuracy"] == pytest.approx(
      history["eval"][-1]["accuracy"], abs=1e-6
    )
  # Chosen on validation; the test split scored for the chosen trial alone.
  scores = [t["validation_accuracy"] for t in result.trials]
  assert result.best == int(np.argmax(scores))
  assert [i for i, t in enumerate(result.trials) if "test_accuracy" in t] == [result.best]
  history = dl.read_history(str(tmp_path / "search" / "metrics.jsonl"))
  assert not history.get("test")  # the population itself was never scored on test
  with open(tmp_path / "search" / "trials.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["chosen"] for row in rows] == [str(i == result.best) for i in range(8)]
  assert (tmp_path / "search" / "trials.png").stat().st_size > 0


def test_grid_is_every_combination():
  trials = search.grid({"weight_decay": (0.0, 1e-3), "learning_rate": (0.01, 0.1, 1.0)})
  assert len(trials) == 6 and len({tuple(t.items()) for t in trials}) == 6
  assert {t["learning_rate"] for t in trials} == {0.01, 0.1, 1.0}


def test_bad_space_says_what_is_searchable(tmp_path):
  with pytest.raises(ValueError, match="searchable hyperparameters are learning_rate"):
    search.sample({"dropout": search.Uniform(0.0, 0.5)}, 4)
  with pytest.raises(ValueError, match="0 < low < high"):
    search.LogUniform(0.0, 1.0)
  with pytest.raises(ValueError, match="expected dl.search.LogUniform"):
    search.sample({"learning_rate": (1e-3, 1e-1)}, 4)
  with pytest.raises(ValueError, match="the same hyperparameters"):
    search.train_trials(tiny_config(), [{"learning_rate": 0.1}, {"weight_decay": 0.1}], "x")
  with pytest.raises(ValueError, match="leave config.fit.sweep"):
    search.random_search(tiny_config(sweep={"learning_rate": (0.1, 0.2)}), SPACE, str(tmp_path))


def test_command_line_reads_the_space_from_the_experiment_file(tmp_path):
  experiment = tmp_path / "experiment.py"
  experiment.write_text(
    "import sys\n"
    f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
    "import dl\n"
    "from tiny_config import tiny_config\n"
    "def get_config():\n"
    "  return tiny_config(num_steps=20)\n"
    "def get_search_space():\n"
    "  return {'learning_rate': dl.search.LogUniform(1e-2, 1e-1)}\n"
  )
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "dl.cli.search",
      f"--config={experiment}",
      f"--workdir={tmp_path / 'w'}",
      "--num_trials=3",
    ],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.splitlines()
  rows = [json.loads(line) for line in out if line.startswith("{")]
  assert len(rows) == 3 and rows[-1]["chosen"] and "test_accuracy" in rows[-1]


def test_the_study_runs_short(monkeypatch, capsys):
  path = pathlib.Path(__file__).parent.parent / "experiments" / "search_study.py"
  spec = importlib.util.spec_from_file_location("search_study", path)
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  monkeypatch.setattr(sys, "argv", ["search_study", "--seeds=1", "--num_steps=10"])
  study.main()
  out = capsys.readouterr().out
  assert [line.split(" |")[0] for line in out.splitlines() if line.startswith("| ")][1:] == [
    "| grid",
    "| random",
    "| asha",
    "| pbt",
    "| tpe",
  ], out
  assert "8 trials as one population" in out


def _population(num_slots: int):
  """A task whose step counts its traces, and its population state (slots stacked)."""
  traces = []

  def counted(*args, **kwargs):
    traces.append(1)
    return dl.train_step(*args, **kwargs)

  task = dataclasses.replace(dl.build(tiny_config(optimizer="adamw")), train_step=counted)
  slots = population.Slots(sorted(SPACE), lambda: task.init(0))
  state = jax.tree.map(lambda x: jnp.stack([x] * num_slots), task.init(0))
  batch = task.batches(32, seed=0).next()
  batches = jax.tree.map(lambda x: np.stack([x] * num_slots), batch)
  step = jax.jit(jax.vmap(task.step))
  return task, slots, step, state, batches, traces


def _lr(state):
  return np.asarray(dl.training.optim.get_hyperparam(state.opt_state, "learning_rate"))


def test_asha_refill_compiles_nothing_new_and_leaves_other_slots_untouched():
  task, slots, step, state, batches, traces = _population(4)
  asha = search.SuccessiveHalving(
    SPACE, slots, num_slots=4, metric="accuracy", mode="max", num_steps=10, min_steps=1
  )
  state, _ = step(asha.on_start(state, 0), batches)
  before = jax.device_get(state)
  # At the first rung (1 step), slots 1 and 3 fall outside the best third: stopped, refilled.
  refilled = asha.after_eval(state, 1, {"accuracy": [0.9, 0.1, 0.8, 0.7]})
  assert [t["status"] for t in asha.trials[:4]] == [
    "running",
    "stopped at rung 0",
    "running",
    "stopped at rung 0",
  ]
  assert asha.slot_trial == [0, 4, 2, 5]
  after = jax.device_get(refilled)
  fresh = jax.device_get(task.init(0))
  for slot in (0, 2):
    chex.assert_trees_all_equal(population.Slots.member(after, slot), slots.member(before, slot))
  for slot, trial in ((1, 4), (3, 5)):
    member = population.Slots.member(after, slot)
    chex.assert_trees_all_equal(member.params, fresh.params)
    assert int(member.step) == 1  # the slot's step count goes on; its optimizer starts again
    assert _lr(after)[slot] == np.float32(asha.trials[trial]["hparams"]["learning_rate"])
  step(refilled, batches)
  assert len(traces) == 1 and step._cache_size() == 1


def test_pbt_exploit_compiles_nothing_new_and_leaves_other_members_untouched():
  _, slots, step, state, batches, traces = _population(4)
  pbt = search.PopulationBasedTraining(
    SPACE, slots, num_slots=4, metric="accuracy", mode="max", num_steps=10, seed=1
  )
  state, _ = step(pbt.on_start(state, 0), batches)
  before = jax.device_get(state)
  exploited = pbt.after_eval(state, 1, {"accuracy": [0.5, 0.9, 0.7, 0.2]})
  after = jax.device_get(exploited)
  # The worst quarter (member 3) copies the best (member 1) and perturbs what it copied.
  assert pbt.slot_trial == [0, 1, 2, 4] and pbt.trials[4]["parent"] == 1
  chex.assert_trees_all_equal(
    population.Slots.member(after, 3).params, population.Slots.member(before, 1).params
  )
  copied = pbt.trials[1]["hparams"]["learning_rate"]
  explored = pbt.trials[4]["hparams"]["learning_rate"]
  assert explored != copied and _lr(after)[3] == np.float32(explored)
  for slot in (0, 1, 2):
    chex.assert_trees_all_equal(
      population.Slots.member(after, slot), population.Slots.member(before, slot)
    )
  step(exploited, batches)
  assert len(traces) == 1 and step._cache_size() == 1


def _experiment(tmp_path, num_steps: int) -> pathlib.Path:
  """An experiment file for the command line: the tiny config and SPACE."""
  experiment = tmp_path / "experiment.py"
  experiment.write_text(
    "import sys\n"
    f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
    "import dl\n"
    "from tiny_config import tiny_config\n"
    "def get_config():\n"
    f"  return tiny_config(optimizer='adamw', num_steps={num_steps}, eval_every=10)\n"
    "def get_search_space():\n"
    "  return {'learning_rate': dl.search.LogUniform(3e-3, 0.1),\n"
    "          'weight_decay': dl.search.Choice((0.0, 1e-4, 1e-3))}\n"
  )
  return experiment


@pytest.mark.parametrize("algorithm", ["asha", "pbt"])
def test_search_killed_mid_way_resumes_to_the_same_table_and_state(tmp_path, algorithm):
  experiment, killed = _experiment(tmp_path, 60), tmp_path / "killed"
  command = [
    sys.executable,
    "-m",
    "dl.cli.search",
    f"--config={experiment}",
    f"--workdir={killed}",
    f"--algorithm={algorithm}",
    "--num_trials=4",
  ]
  config = tiny_config(optimizer="adamw", num_steps=60, eval_every=10)  # the experiment's

  def resume():  # the command's call, in this process
    search.run(config, SPACE, str(killed), algorithm, num_slots=4)

  assert kill.kill_then_rerun(command, killed, 30, resume=resume) < 60
  result = search.run(config, SPACE, str(tmp_path / "whole"), algorithm, num_slots=4)
  with open(killed / "trials.jsonl") as f:
    resumed_rows = [json.loads(line) for line in f]
  with open(tmp_path / "whole" / "trials.jsonl") as f:
    assert resumed_rows == [json.loads(line) for line in f]
  # The run decided something before the kill: trials were stopped, or members copied.
  assert len(resumed_rows) > 4
  ckpt = dl.Checkpointer(str(killed / "checkpoints"))
  try:
    _, resumed, _ = ckpt.restore(jax.eval_shape(lambda: result.state), 60)
  finally:
    ckpt.close()
  chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(result.state))


def _tell(hook, asked=()):
  """Adds `asked` ([(params, system attributes)]) as trials, then tells every trial a value."""
  for params, attrs in asked:
    hook.add_trial(params, 0, 0, system_attrs=attrs)
  for trial in hook.trials:  # best near learning rate 0.1
    value = -abs(np.log10(trial["hparams"]["learning_rate"]) + 1)
    trial["value"] = trial["validation"] = value


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_optuna_asks_are_the_same_for_the_same_history(tmp_path, sampler):
  def hook():
    return search.OptunaTrials(
      {"learning_rate": search.LogUniform(1e-3, 1.0), "weight_decay": search.Uniform(0.0, 0.1)},
      None,
      num_slots=4,
      metric="accuracy",
      mode="max",
      num_steps=40,
      trial_steps=10,
      sampler=sampler,
      seed=5,
      workdir=str(tmp_path),
    )

  # Rebuilt from what was told (as after a resume), the study asks for the same trials.
  a, b = hook(), hook()
  _tell(a), _tell(b)
  second = a.ask(4)
  assert second == b.ask(4) and len({tuple(p.items()) for p, _ in second}) == 4
  _tell(a, second), _tell(b, second)
  third = a.ask(4)
  assert third == b.ask(4)
  for params, _ in second + third:
    assert 1e-3 <= params["learning_rate"] <= 1.0 and 0.0 <= params["weight_decay"] <= 0.1
  # The sampler reads the history: other values told, other trials asked.
  b.trials[4]["value"] = b.trials[5]["value"] = 1.0
  assert b.ask(4) != third


def test_adam_betas_are_searched_in_the_state(tmp_path):
  space = {"learning_rate": search.LogUniform(1e-2, 0.1), "b1": search.Uniform(0.5, 0.95)}
  config = tiny_config(optimizer="adamw", num_steps=20)
  result = search.random_search(config, space, str(tmp_path / "s"), num_trials=2, seed=0)
  for i, trial in enumerate(result.trials):
    b1 = dl.training.optim.get_hyperparam(jax.tree.map(lambda x, i=i: x[i], result.state), "b1")
    assert b1 == np.float32(trial["b1"])
    alone, _ = dl.train(
      tiny_config(optimizer="adamw", num_steps=20, learning_rate=trial["learning_rate"]),
      str(tmp_path / f"alone{i}"),
    )
    # b1 differs from adamw's 0.9 default, so a run without it lands elsewhere ...
    assert not np.allclose(
      alone.params["Dense_0"]["kernel"], result.state.params["Dense_0"]["kernel"][i]
    )
  with pytest.raises(ValueError, match="optimizer 'sgd' has no hyperparameter b1"):
    search.random_search(tiny_config(optimizer="sgd"), space, str(tmp_path / "sgd"), num_trials=2)


def test_widths_form_groups_and_the_best_is_scored_once(tmp_path):
  space = {"learning_rate": search.LogUniform(1e-2, 0.1), "model.width": search.Choice((8, 16))}
  config = tiny_config(num_steps=10, eval_every=10)
  result = search.run(config, space, str(tmp_path), "random", num_slots=2)
  assert [(r["group"], r["model.width"]) for r in result.trials] == [
    (0, 8),
    (0, 8),
    (1, 16),
    (1, 16),
  ]
  scored = [i for i, r in enumerate(result.trials) if "test_accuracy" in r]
  assert scored == [result.best] and result.trials[result.best]["chosen"]
  best_of = [
    max(r["validation_accuracy"] for r in result.trials if r["group"] == g) for g in (0, 1)
  ]
  assert result.trials[result.best]["validation_accuracy"] == max(best_of)
  width = result.trials[result.best]["model.width"]
  assert result.chosen_state.params["Dense_0"]["kernel"].shape == (64, width)
  with pytest.raises(ValueError, match="give it as dl.search.Choice"):
    search.run(config, {"model.width": search.Uniform(8, 16)}, str(tmp_path / "u"), "random")


class _TinyMLP(nn.Module):
  """A user's own model: the flattened digit through one hidden layer."""

  width: int = 16

  @nn.compact
  def __call__(self, x):
    hidden = nn.relu(nn.Dense(self.width)(x.reshape(len(x), -1)))
    return nn.Dense(10)(hidden)


def _task_factory(calls):
  """A factory of `dl.task`s on digits; `calls` records what each call was given."""

  def make(hparams):
    calls.append(dict(hparams))
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
    return dl.task(
      model=_TinyMLP(width=hparams.get("model.width", 16)),
      objective=dl.core.objectives.create("classification"),
      optimizer=tx,
      train=("digits", "train"),
      test=("digits", "test"),
    )

  return make


FIT = dl.FitConfig(num_steps=12, batch_size=32, eval_every=4, log_every=4, progress=False)


@pytest.mark.parametrize("algorithm", ["random", "asha"])
def test_a_task_factory_is_searched_and_built_once(tmp_path, algorithm):
  calls = []
  space = {"learning_rate": search.LogUniform(1e-3, 0.3)}
  fit = dataclasses.replace(FIT, tensorboard=False)
  result = search.run(_task_factory(calls), space, str(tmp_path), algorithm, num_slots=3, fit=fit)
  assert calls == [{}]  # one task for the whole population
  held = [r for r in result.trials if r.get("status", "finished") == "finished"]  # in the slots
  assert len(held) == 3 and (algorithm == "random") == (len(result.trials) == 3)
  chosen = result.trials[result.best]
  assert chosen["validation_accuracy"] == max(r["validation_accuracy"] for r in held)
  assert [i for i, r in enumerate(result.trials) if "test_accuracy" in r] == [result.best]
  # Each slot trained with its own trial's learning rate, in its own optimizer state.
  lr = dl.training.optim.get_hyperparam(result.chosen_state.opt_state, "learning_rate")
  assert lr == np.float32(chosen["learning_rate"])
  lrs = np.asarray(dl.training.optim.get_hyperparam(result.state.opt_state, "learning_rate"))
  assert sorted(lrs.tolist()) == sorted(np.float32([r["learning_rate"] for r in held]).tolist())
  kernels = np.asarray(result.state.params["Dense_0"]["kernel"])
  assert not np.allclose(kernels[0], kernels[1])


def test_a_task_factory_is_passed_its_groups_shapes(tmp_path):
  calls = []
  space = {"learning_rate": search.LogUniform(1e-2, 0.1), "model.width": search.Choice((4, 8))}
  fit = dataclasses.replace(FIT, tensorboard=False)
  result = search.run(_task_factory(calls), space, str(tmp_path), "random", num_slots=2, fit=fit)
  assert calls == [{"model.width": 4}, {"model.width": 8}]
  width = result.trials[result.best]["model.width"]
  assert result.chosen_state.params["Dense_0"]["kernel"].shape == (64, width)
  with pytest.raises(ValueError, match="pass fit only with a task factory"):
    search.random_search(tiny_config(), SPACE, str(tmp_path / "c"), num_trials=2, fit=fit)
