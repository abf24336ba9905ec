import ml_collections
import pytest

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
  assert dl.parse_config({"learning_rate": 1, "num_epochs": 2}).learning_rate == 1.0


@pytest.mark.parametrize(
  "values,message",
  [
    ({"learning_rate": 0.0}, "config.learning_rate must be a number > 0; got 0.0"),
    ({"batch_size": -1}, "config.batch_size must be an integer > 0; got -1"),
    ({"batch_size": "32"}, "config.batch_size must be int; got '32' \\(str\\)"),
    ({"batch_size": True}, "config.batch_size must be int; got True"),
    ({"steps_per_dispatch": 0}, "config.steps_per_dispatch must be an integer > 0"),
    ({"optimizer": "adamm"}, "config.optimizer must be one of .*adamw.*; got 'adamm'"),
    ({"schedule": "step"}, "config.schedule must be one of"),
    ({"label_smoothing": 1.0}, "config.label_smoothing must be in \\[0, 1\\)"),
    ({"best_mode": "up"}, "config.best_mode must be 'max' or 'min'"),
    ({"model": "cnn"}, "config.model must be a mapping with a 'name' key"),
    ({"num_epochs": 0, "num_train_steps": 0}, "config.num_epochs must be > 0"),
    ({"lr": 0.1}, "unknown config key 'lr'"),
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
    config_lib.TrainConfig(parallel="tpu")


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
