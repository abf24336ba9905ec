"""Deployment: StableHLO export with its run card, drift monitoring.

Imports core, data, models, inference, training, trust.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=["export", "monitor"])
