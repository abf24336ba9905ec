"""Training: the state, the pure steps, the one loop (`fit`), and how steps are compiled.

Imports core, data, models and inference; no feature (hooks come in from above).
"""

import pkgutil

import lazy_loader

# Every module of the package, each imported on first use.
__getattr__, __dir__, __all__ = lazy_loader.attach(
  __name__, submodules=[m.name for m in pkgutil.iter_modules(__path__)]
)
