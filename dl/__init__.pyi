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
from .training.loop import Hook, fit
from .training.options import FitConfig
from .training.profile import ProfileHook
from .training.state import TrainState, create_train_state
from .training.steps import train_step
from .training.task import Task, task

__version__: str
