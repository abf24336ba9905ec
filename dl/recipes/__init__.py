"""Configs into parts: TrainConfig, dl.build/dl.train/dl.restore, learning curves, memory plans.

Imports every floor below apps.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
  __name__, submodules=["config", "from_config", "learning_curve", "plan"]
)
