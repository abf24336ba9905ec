r"""Command line: a hyperparameter search whose trials train as one population.

The search space is in the experiment's file, a `get_search_space()` beside `get_config()`:

  def get_search_space():
    return {"learning_rate": dl.search.LogUniform(1e-3, 0.3),
            "weight_decay": dl.search.LogUniform(1e-6, 1e-2)}

  python -m dl.cli.search --config experiments/search_digits_mlp.py --workdir workdirs/search \
      --algorithm asha --num_trials 8

`--algorithm` is one of random, asha, pbt, tpe, cmaes (`dl.search.ALGORITHMS`).

Prints one JSON line per trial (the chosen one last, with its test metrics, scored once) and
writes trials.csv, trials.jsonl and trials.png in the workdir.
"""

import importlib.util
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dl import cli, search
from dl.core import checkpoint, distributed, lock

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment file with get_config() and get_search_space().", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, trials.")
_ALGORITHM = flags.DEFINE_enum(
  "algorithm",
  "random",
  list(search.ALGORITHMS),
  "random search, ASHA, population-based training, or Optuna's TPE or CMA-ES.",
)
_NUM_TRIALS = flags.DEFINE_integer("num_trials", 8, "Trials trained together (the population).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the draws (config.fit.seed seeds the training).")
flags.mark_flags_as_required(["config", "workdir"])


def search_space(path: str) -> search.Space:
  """`get_search_space()` of the experiment file at `path`."""
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_search_space"):
    raise app.UsageError(
      f"{path} has no get_search_space(); add one returning e.g. "
      '{"learning_rate": dl.search.LogUniform(1e-3, 0.3)}.'
    )
  return module.get_search_space()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_env()  # Before anything touches devices.
  space = search_space(config_flags.get_config_filename(flags.FLAGS["config"]))
  try:
    result = search.run(
      _CONFIG.value,
      space,
      _WORKDIR.value,
      _ALGORITHM.value,
      num_slots=_NUM_TRIALS.value,
      seed=_SEED.value,
    )
  except (checkpoint.CheckpointError, lock.WorkdirLockedError) as e:  # one line says it all
    print(f"dl: {e}", file=sys.stderr)
    sys.exit(1)
  for i, trial in enumerate(result.trials):
    if i != result.best:
      print(json.dumps(_rounded(trial)))
  print(json.dumps({"chosen": True, **_rounded(result.trials[result.best])}))


def _rounded(trial: dict) -> dict:
  """Metrics to 4 decimals; hyperparameters to 4 significant digits."""
  return {
    k: float(f"{v:.4g}") if k in search.SEARCHABLE else round(v, 4) if isinstance(v, float) else v
    for k, v in trial.items()
  }


def run() -> None:
  """The `dl-search` command (pyproject's [project.scripts])."""
  cli.run(__name__, main)


if __name__ == "__main__":
  app.run(main)
