# The names `import dl` gives, each loaded on first use: lazy_loader reads this stub at import
# (dl/__init__.py), type checkers and the API reference read it as the package's interface.
from . import (
  apps,
  cli,
  core,
  data,
  deploy,
  generative,
  inference,
  models,
  recipes,
  search,
  training,
  trust,
)
from .core.checkpoint import Checkpointer, CheckpointError, CheckpointWriteError
from .core.writers import plot_history, read_history
from .inference import eval_step, evaluate, predict
from .models.adapters import NNX, Linen
from .recipes.config import TrainConfig, default_config, parse_config
from .recipes.from_config import build, restore, train
from .recipes.plan import plan
from .training.compile import jit_step, scan_steps
from .training.loop import fit
from .training.options import FitConfig
from .training.profile import ProfileHook
from .training.protocols import Hook
from .training.state import TrainState, create_train_state
from .training.steps import train_step
from .training.task import Task, task

__version__: str

# What the API reference lists (lazy_loader derives the same list from the imports above;
# tests/imports_test.py checks that the two agree).
__all__ = [
  "CheckpointError",
  "CheckpointWriteError",
  "Checkpointer",
  "FitConfig",
  "Hook",
  "Linen",
  "NNX",
  "ProfileHook",
  "Task",
  "TrainConfig",
  "TrainState",
  "apps",
  "build",
  "cli",
  "core",
  "create_train_state",
  "data",
  "default_config",
  "deploy",
  "eval_step",
  "evaluate",
  "fit",
  "generative",
  "inference",
  "jit_step",
  "models",
  "parse_config",
  "plan",
  "plot_history",
  "predict",
  "read_history",
  "recipes",
  "restore",
  "scan_steps",
  "search",
  "task",
  "train",
  "train_step",
  "training",
  "trust",
]
