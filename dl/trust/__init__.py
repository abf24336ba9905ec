"""Trust tools: explanations, per-example gradients, fairness, calibration, federated, privacy.

Imports core, data, models, inference, training.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
  __name__, submodules=["calibration", "explain", "fairness", "federated", "grads", "privacy"]
)
