r"""Command line: train and evaluate a config.

  python -m dl.train --config experiments/digits_cnn.py --workdir /tmp/digits_cnn \
      --config.learning_rate=0.003 --config.num_epochs=5
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
  _, history = dl.train(_CONFIG.value, _WORKDIR.value)
  final = history["eval"][-1]
  print(
    json.dumps(
      {
        "workdir": _WORKDIR.value,
        "step": final["step"],
        "test_accuracy": round(final["accuracy"], 4),
        "test_loss": round(final["loss"], 4),
      }
    )
  )


if __name__ == "__main__":
  app.run(main)
