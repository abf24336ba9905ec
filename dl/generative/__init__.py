"""Generative models: GANs, autoencoders and VAEs; Frechet distance; anomaly scores.

Imports core, data, models, inference and training (the trust floor's peer).
"""

import pkgutil

import lazy_loader

# Every module of the package, each imported on first use.
__getattr__, __dir__, __all__ = lazy_loader.attach(
  __name__, submodules=[m.name for m in pkgutil.iter_modules(__path__)]
)
