"""dl: functional deep learning in JAX.

Your own parts through the one loop:

  import dl, optax
  task = dl.task(model=MyModule(), objective=my_loss, optimizer=optax.adamw(1e-3),
                 train={"input": x, "label": y})
  state, history = dl.fit(task, "/tmp/run", num_steps=1000, batch_size=64)

Or parts built from a config:

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
  inference,
  learning_curve,
  lock,
  models,
  monitor,
  objectives,
  privacy,
  recommend,
  sampling,
  search,
  segmentation,
  speech,
  training,
)
from dl.checkpoint import Checkpointer, CheckpointError, CheckpointWriteError
from dl.config import TrainConfig, default_config
from dl.config import parse as parse_config
from dl.from_config import build, restore, train
from dl.inference import eval_step, evaluate, predict
from dl.models.adapters import NNX, Linen
from dl.training.compile import jit_step, scan_steps
from dl.training.loop import FitConfig, Hook, fit
from dl.training.plan import plan
from dl.training.profile import ProfileHook
from dl.training.state import TrainState, create_train_state
from dl.training.steps import train_step
from dl.training.task import Task, task
from dl.writers import plot_history, read_history

# The one place the version is set; pyproject reads this line as text, so keep it a literal.
__version__ = "0.1.0"

__all__ = [
  "NNX",
  "CheckpointError",
  "CheckpointWriteError",
  "Checkpointer",
  "FitConfig",
  "Hook",
  "Linen",
  "ProfileHook",
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
  "fit",
  "forecasting",
  "generative",
  "grads",
  "inference",
  "jit_step",
  "learning_curve",
  "lock",
  "models",
  "monitor",
  "objectives",
  "parse_config",
  "plan",
  "plot_history",
  "predict",
  "privacy",
  "read_history",
  "recommend",
  "restore",
  "sampling",
  "scan_steps",
  "search",
  "segmentation",
  "speech",
  "task",
  "train",
  "train_step",
  "training",
]
