import dataclasses
import json
import os
import subprocess
import sys

import ml_collections
import pytest
from tiny_config import tiny_config

import dl
from dl.recipes import config as config_lib
from dl.training import optim


def test_default_config_round_trips():
  config = dl.default_config()
  parsed = dl.parse_config(config)
  assert parsed == dl.TrainConfig()
  assert parsed.model == {"name": "cnn"}


def test_default_config_is_locked_but_model_is_open():
  config = dl.default_config()
  with pytest.raises(AttributeError, match="learning_rat"):
    config.learning_rat = 0.1
  config.model.width = 3  # model hyperparameters depend on the model
  assert dl.parse_config(config).model["width"] == 3


def test_ints_are_accepted_for_floats():
  assert dl.parse_config({"learning_rate": 1, "fit": {"num_epochs": 2}}).fit.num_epochs == 2.0


@pytest.mark.parametrize(
  "values,message",
  [
    ({"learning_rate": 0.0}, "config.learning_rate must be a number > 0; got 0.0"),
    ({"fit": {"batch_size": -1}}, "config.fit.batch_size must be an integer > 0; got -1"),
    ({"fit": {"batch_size": "32"}}, "config.fit.batch_size must be int; got '32' \\(str\\)"),
    ({"fit": {"batch_size": True}}, "config.fit.batch_size must be int; got True"),
    ({"fit": {"steps_per_dispatch": 0}}, "config.fit.steps_per_dispatch must be an integer > 0"),
    ({"optimizer": "adamm"}, "config.optimizer must be one of .*adamw.*; got 'adamm'"),
    ({"schedule": "step"}, "config.schedule must be one of"),
    ({"label_smoothing": 1.0}, "config.label_smoothing must be in \\[0, 1\\)"),
    ({"fit": {"best_mode": "up"}}, "config.fit.best_mode must be 'min', 'max' or ''"),
    ({"model": "cnn"}, "config.model must be a mapping with a 'name' key"),
    ({"fit": {"num_epochs": 0, "num_steps": 0}}, "config.fit.num_epochs must be > 0"),
    ({"lr": 0.1}, "unknown config key 'lr'"),
    ({"batch_size": 64}, "unknown config key 'batch_size'. Did you mean 'fit.batch_size'"),
    ({"num_train_steps": 9}, "unknown config key 'num_train_steps'. Did you mean 'fit.num_steps'"),
    ({"fit": {"log_every_steps": 9}}, "unknown config key 'fit.log_every_steps'. Did you mean"),
  ],
)
def test_bad_values_are_named(values, message):
  with pytest.raises(ValueError, match=message):
    dl.parse_config(values)


def test_schedules_and_optimizers_build():
  for schedule in optim.SCHEDULES:
    for optimizer in optim.OPTIMIZERS:
      config_lib.TrainConfig(schedule=schedule, optimizer=optimizer)  # the config accepts it
      tx = optim.create_optimizer(
        optimizer,
        learning_rate=1e-3,
        num_steps=20,
        schedule=schedule,
        warmup_steps=5,
        grad_clip_norm=1.0,
        grad_accum_steps=2,
      )
      assert hasattr(tx, "update")


def test_names_a_config_accepts_come_from_their_modules():
  with pytest.raises(ValueError, match="optimizer must be one of .*'lion'"):
    config_lib.TrainConfig(optimizer="adamax")
  with pytest.raises(ValueError, match="parallel must be one of .*'fsdp'"):
    dl.parse_config({"fit": {"parallel": "tpu"}})


def test_warmup_then_cosine():
  lr = optim.schedule_shape("cosine", num_steps=110, warmup_steps=10)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-6)


def test_configdict_from_experiment_file_parses():
  import importlib.util
  import pathlib

  for path in sorted(pathlib.Path(__file__).parent.parent.glob("experiments/*.py")):
    if "def get_config(" not in path.read_text():
      continue  # a study script, tested on its own
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    dl.parse_config(config)


def test_loop_options_are_nested_under_fit():
  config = dl.default_config()
  config.fit.batch_size = 64
  config.fit.sweep = {"learning_rate": [1e-3, 3e-3]}  # the sweep's names are open
  parsed = dl.parse_config(config)
  assert isinstance(parsed.fit, dl.FitConfig)
  assert parsed.fit.batch_size == 64 and parsed.fit.sweep == {"learning_rate": (1e-3, 3e-3)}
  assert dl.default_config().fit.to_dict() == dataclasses.asdict(dl.FitConfig())
  with pytest.raises(AttributeError, match="batch_size"):
    config.batch_size = 64  # the old flat name is gone


def test_train_parses_its_config_once(tmp_path, monkeypatch):
  calls = []
  parse = config_lib.parse_config
  monkeypatch.setattr(config_lib, "parse_config", lambda c: calls.append(c) or parse(c))
  dl.train(tiny_config(num_steps=4, eval_every=4), str(tmp_path))
  assert len(calls) == 1


def test_command_line_overrides_name_the_nested_loop_options(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [
    *(
      sys.executable,
      "-m",
      "dl.cli.train",
      "--config",
      os.path.join(repo, "tests", "tiny_config.py"),
    ),
    *("--workdir", str(tmp_path), "--config.fit.batch_size=16", "--config.fit.num_steps=4"),
  ]
  out = subprocess.run(command, capture_output=True, text=True, cwd=repo)
  assert out.returncode == 0, out.stderr
  with open(tmp_path / "fit_config.json") as f:
    record = json.load(f)
  assert (record["batch_size"], record["num_steps"]) == (16, 4)
  old = subprocess.run([*command[:-2], "--config.batch_size=16"], capture_output=True, text=True)
  assert old.returncode != 0 and "batch_size" in old.stderr
  best = dl.restore(tiny_config(batch_size=16, num_steps=4), str(tmp_path))  # step="best"
  assert int(best.step) == 4
