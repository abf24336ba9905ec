"""Deployment: StableHLO export (`export`) with its inputs (`input_spec`) and run card
(`run_card`), drift monitoring (`monitor`).

Imports core, data, models, inference, training, trust.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
  __name__, submodules=["export", "input_spec", "monitor", "run_card"]
)
