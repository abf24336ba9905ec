"""Every experiment config trains end to end at a tiny size."""

import importlib.util
import pathlib

import numpy as np
import pytest

import dl

# Configs for `python -m dl.cli.train`; study scripts without `get_config` have their own tests,
# and `plan_*.py` configs are memory plans of runs larger than this machine
# (`python -m dl.cli.plan`, tested in plan_test.py), not trained here.
EXPERIMENTS = sorted(
  path
  for path in (pathlib.Path(__file__).parent.parent / "experiments").glob("*.py")
  if "def get_config(" in path.read_text() and not path.name.startswith("plan_")
)


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# A whole split is read and scored by its first examples: the text data sets decode 10^4
# records one by one, and a full-size model scoring all of them took most of a tiny run.
FIRST = {"train_split": 512, "validation_split": 128, "test_split": 128}


def _first_examples(config) -> None:
  sizes = dl.data.info(config.dataset).splits
  if not config.validation_split and "validation" in sizes:
    config.validation_split = "validation"  # what dl.build would choose, whole
  for key, count in FIRST.items():
    split = config[key]
    # A slice such as "train[:80%]" is kept as it is.
    if split in sizes and sizes[split] > count:
      config[key] = f"{split}[:{count}]"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_runs_tiny(path, tmp_path):
  config = _load(path)
  _first_examples(config)
  config.fit.num_steps = 4
  config.fit.eval_every = 4
  config.fit.log_every = 2
  config.fit.progress = False
  state, history = dl.train(config, str(tmp_path))
  assert int(state.step) == 4
  assert np.isfinite(history["eval"][-1]["loss"])
  if config.objective == "classification":
    assert 0.0 <= history["eval"][-1]["accuracy"] <= 1.0
