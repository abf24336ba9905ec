"""The floor the others stand on: objectives, meshes, checkpoints, writers, the run lock.

Also `jax.distributed` from the environment. Imports nothing of dl.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
  __name__, submodules=["checkpoint", "distributed", "lock", "objectives", "parallel", "writers"]
)
