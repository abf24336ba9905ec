r"""Command line: train a config, choose the best checkpoint on validation, score the test once.

Prints one JSON line: the last validation record ("validation_*", at the final step) and the
test record ("test_*", scored on the best validation checkpoint, at "test_step").

  python -m dl.cli.train --config experiments/digits_cnn.py --workdir /tmp/digits_cnn \
      --config.learning_rate=0.003 --config.fit.num_epochs=5

Several processes (see `dl.launch`, `dl.core.distributed`):

  python -m dl.cli.launch --num_processes 2 --devices_per_process 4 -- \
      python -m dl.cli.train --config experiments/digits_cnn.py --workdir /tmp/digits_cnn_2x4 \
      --config.fit.parallel=fsdp
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dl import cli
from dl.core import checkpoint, distributed, lock
from dl.recipes import from_config

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (get_config()).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_env()  # Before anything touches devices.
  try:
    _, history = from_config.train(_CONFIG.value, _WORKDIR.value)
  except (checkpoint.CheckpointError, lock.WorkdirLockedError) as e:  # one line says it all
    print(f"dl: {e}", file=sys.stderr)
    sys.exit(1)
  summary = {"workdir": _WORKDIR.value}
  for split, prefix in (("eval", "validation_"), ("test", "test_")):
    if history.get(split):
      record = history[split][-1]
      summary[f"{prefix}step"] = record["step"]
      summary |= {f"{prefix}{k}": _rounded(v) for k, v in record.items() if k != "step"}
  print(json.dumps(summary))


def _rounded(value: float | list[float]) -> float | list[float]:
  """Rounds a metric, or each ensemble member's."""
  return [round(v, 4) for v in value] if isinstance(value, list) else round(value, 4)


def run() -> None:
  """The `dl-train` command (pyproject's [project.scripts])."""
  cli.run(__name__, main)


if __name__ == "__main__":
  app.run(main)
