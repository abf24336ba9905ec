"""The `diabetes` data set: disease progression one year after baseline, offline (regression).

442 patients x 10 baseline variables (age, sex, body mass index, average blood pressure and
six blood serum measurements), read from `sklearn.datasets.load_diabetes(scaled=False)`.
The label is a float: a quantitative measure of disease progression one year later
(25 to 346). Features are stored raw (float32, not standardised).

Splits: a permutation of the rows with seed 0, then the first 20% (rounded up) is `test`:
353 train / 89 test. Example keys are the original row indices.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders

_DESCRIPTION = """
Diabetes (Efron et al., 2004): ten baseline variables of 442 diabetes patients and a
quantitative measure of disease progression one year after baseline, as shipped by
scikit-learn. Split with a fixed seed: 353 train / 89 test examples.
"""

_CITATION = """
@article{efron2004least,
  author = {Efron, Bradley and Hastie, Trevor and Johnstone, Iain and Tibshirani, Robert},
  title = {Least angle regression},
  journal = {The Annals of Statistics},
  volume = {32},
  number = {2},
  pages = {407--499},
  year = {2004},
  doi = {10.1214/009053604000000067}
}
"""

_HOMEPAGE = "https://www4.stat.ncsu.edu/~boos/var.select/diabetes.html"
_NUM_FEATURES = 10


class Diabetes(tfds.core.GeneratorBasedBuilder):
  """Diabetes progression regression, with a fixed train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "features": tfds.features.Tensor(shape=(_NUM_FEATURES,), dtype=np.float32),
          "label": tfds.features.Tensor(shape=(), dtype=np.float32),
        }
      ),
      supervised_keys=("features", "label"),
      homepage=_HOMEPAGE,
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside scikit-learn.
    datasets = builders.import_sklearn_datasets(self.name)
    data = datasets.load_diabetes(scaled=False)
    features = data.data.astype(np.float32)
    targets = data.target.astype(np.float32)
    return {
      split: self._generate_examples(features, targets, indices)
      for split, indices in builders.train_test_indices(len(targets)).items()
    }

  def _generate_examples(
    self, features: np.ndarray, targets: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (row index, example) for the given rows."""
    for i in indices:
      yield int(i), {"features": features[i], "label": targets[i]}
