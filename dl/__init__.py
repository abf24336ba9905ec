"""dl: functional deep learning in JAX.

import dl
config = dl.default_config()        # or an experiment's get_config()
state, history = dl.train(config, "/tmp/run")
"""

from dl import (
  calibration,
  data,
  detection,
  distributed,
  explain,
  export,
  fairness,
  federated,
  forecasting,
  generative,
  grads,
  learning_curve,
  models,
  monitor,
  objectives,
  optim,
  privacy,
  recommend,
  sampling,
  steps,
)
from dl.checkpoint import Checkpointer, CheckpointError
from dl.compile import jit_step, scan_steps
from dl.config import TrainConfig, default_config
from dl.config import parse as parse_config
from dl.state import TrainState, create_train_state
from dl.steps import eval_step, train_step
from dl.trainer import Task, build, evaluate, predict, restore, train
from dl.writers import plot_history, read_history

__version__ = "0.1.0"

__all__ = [
  "CheckpointError",
  "Checkpointer",
  "Task",
  "TrainConfig",
  "TrainState",
  "build",
  "calibration",
  "create_train_state",
  "data",
  "default_config",
  "detection",
  "distributed",
  "eval_step",
  "evaluate",
  "explain",
  "export",
  "fairness",
  "federated",
  "forecasting",
  "generative",
  "grads",
  "jit_step",
  "learning_curve",
  "models",
  "monitor",
  "objectives",
  "optim",
  "parse_config",
  "plot_history",
  "predict",
  "privacy",
  "read_history",
  "recommend",
  "restore",
  "sampling",
  "scan_steps",
  "steps",
  "train",
  "train_step",
]
