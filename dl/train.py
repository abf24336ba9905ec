r"""Command line: train and evaluate a config.

  python -m dl.train --config experiments/digits_cnn.py --workdir /tmp/digits_cnn \
      --config.learning_rate=0.003 --config.num_epochs=5

Several processes (see `dl.launch`, `dl.distributed`):

  python -m dl.launch --num_processes 2 --devices_per_process 4 -- \
      python -m dl.train --config experiments/digits_cnn.py --workdir /tmp/digits_cnn_2x4 \
      --config.parallel=fsdp
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

import dl

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (get_config()).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  dl.distributed.initialize_from_env()  # Before anything touches devices.
  _, history = dl.train(_CONFIG.value, _WORKDIR.value)
  final = history["eval"][-1]
  metrics = {f"test_{k}": _rounded(v) for k, v in final.items() if k != "step"}
  print(json.dumps({"workdir": _WORKDIR.value, "step": final["step"], **metrics}))


def _rounded(value: float | list[float]) -> float | list[float]:
  """Rounds a metric, or each ensemble member's."""
  return [round(v, 4) for v in value] if isinstance(value, list) else round(value, 4)


if __name__ == "__main__":
  app.run(main)
