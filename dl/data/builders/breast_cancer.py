"""The `breast_cancer` data set: Wisconsin diagnostic breast cancer, offline.

569 patients x 30 real-valued features computed from digitised images of fine
needle aspirates of breast masses, read from
`sklearn.datasets.load_breast_cancer`. Labels: 0 = malignant, 1 = benign.
Features are stored raw (float32, not standardised).

Splits: a permutation of the rows with seed 0, then the first 20% (rounded up)
is `test`: 455 train / 114 test. Example keys are the original row indices.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders

_DESCRIPTION = """
Breast Cancer Wisconsin (Diagnostic): 30 features (mean, standard error and
worst value of ten cell-nucleus measurements) per fine needle aspirate, with
the diagnosis malignant (212) or benign (357), as shipped by scikit-learn.
Split with a fixed seed: 455 train / 114 test examples.
"""

_CITATION = """
@article{street1993nuclear,
  author = {Street, W. N. and Wolberg, W. H. and Mangasarian, O. L.},
  title = {Nuclear feature extraction for breast tumor diagnosis},
  journal = {Biomedical Image Processing and Biomedical Visualization},
  series = {Proc. SPIE},
  volume = {1905},
  pages = {861--870},
  year = {1993},
  doi = {10.1117/12.148698}
}
"""

_HOMEPAGE = "https://archive.ics.uci.edu/dataset/17/breast+cancer+wisconsin+diagnostic"
_NUM_FEATURES = 30


class BreastCancer(tfds.core.GeneratorBasedBuilder):
  """Wisconsin diagnostic breast cancer features, with a fixed train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "features": tfds.features.Tensor(shape=(_NUM_FEATURES,), dtype=np.float32),
          "label": tfds.features.ClassLabel(names=["malignant", "benign"]),
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
    data = datasets.load_breast_cancer()
    features = data.data.astype(np.float32)
    labels = data.target
    return {
      split: self._generate_examples(features, labels, indices)
      for split, indices in builders.train_test_indices(len(labels)).items()
    }

  def _generate_examples(
    self, features: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    """Yields (row index, example) for the given rows."""
    for i in indices:
      yield int(i), {"features": features[i], "label": int(labels[i])}
