"""Hyperparameter search: trials drawn from a space train as one population."""

import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from tiny_config import tiny_config

import dl
from dl import search

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
  with pytest.raises(ValueError, match="leave sweep_learning_rate"):
    search.random_search(tiny_config(sweep_learning_rate=(0.1, 0.2)), SPACE, str(tmp_path))


def test_command_line_reads_the_space_from_the_experiment_file(tmp_path):
  experiment = tmp_path / "experiment.py"
  experiment.write_text(
    "import sys\n"
    f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
    "import dl\n"
    "from tiny_config import tiny_config\n"
    "def get_config():\n"
    "  return tiny_config(num_train_steps=20)\n"
    "def get_search_space():\n"
    "  return {'learning_rate': dl.search.LogUniform(1e-2, 1e-1)}\n"
  )
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "dl.search",
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
  ], out
  assert "8 trials as one population" in out
